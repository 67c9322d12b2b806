"""A procedural code benchmark: short HumanEval-format tasks composed from typed primitives.

Small models need a benchmark they can learn and that still measures generalisation. Each task is a
pipeline of 1–4 *stages* applied to the argument ``x``; each stage is a primitive of a small typed DSL.

Grammar (types: L = list[int], I = int, S = str, W = list[str], B = bool)::

    task    := stage+                      (1 <= len <= 4, types chain: out(stage i) = in(stage i+1))
    stage   := filter   L -> L   keep elements satisfying a predicate (even, > c, multiple of c, ...)
             | map      L -> L   transform each element (+ c, * c, square, abs, % c, ...)
             | listop   L -> L   sort, reverse, take/drop c, dedupe, every other, running total
             | fold     L -> I|B sum, product, max, min, count, first, last, count of c, any/all, contains c
             | arith    I -> I   + c, - c, * c, % c, // c, abs, square, negate
             | digits   I -> L   the decimal digits of |x|
             | test     I -> B   even?, positive?, > c?
             | strop    S -> S   lower, upper, swapcase, strip, reverse, take/drop c, no vowels, letters
             | strfold  S -> I|B length, count of a char, vowel count, palindrome?
             | split    S -> W   words;  codes S -> L  character codes
             | wordop   W -> W   filter by length / first letter, upper/capitalize/reverse each, sort, reverse
             | wordfold W -> S|I|L  join with a separator, count, lengths of the words

B is terminal (only the last stage may produce it); the same primitive never follows itself.

A task's *structure* (`composition_key`) is the sequence of primitive names, constants excluded. The
``heldout`` split holds the multi-stage structures whose hash falls in a fixed 20% bucket; ``train``
holds all other structures and every single-stage one, so held-out tasks are new combinations of
primitives that train teaches individually. Each task's prompt is the signature and a docstring with two
examples; the canonical solution (the SFT target) is one line per stage::

    def f(x: list[int]) -> int:
        \"\"\"Given a list of integers, keep the even numbers, then square each number, then take the sum.
        Return the result.
        ...\"\"\"
        x = [v for v in x if v % 2 == 0]
        x = [v * v for v in x]
        return sum(x)

Tests are 3–5 asserts whose expected values come from evaluating the primitives' Python callables on
random inputs (the docstring examples are the first two). Everything derives from ``random.Random`` seeded
by (split, seed, difficulty), so the same arguments give identical tasks.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unmask.data.benchmarks import Task

TYPE_NAMES = {"L": "list[int]", "I": "int", "S": "str", "W": "list[str]", "B": "bool"}
INPUT_DESCRIPTIONS = {"L": "a list of integers", "I": "an integer", "S": "a string", "W": "a list of words"}
HELDOUT_PERCENT = 20
MAX_DIFFICULTY = 4
ENTRY_POINT = "f"
_WORDS = ("apple", "Banana", "cat", "dog", "echo", "Fig", "grape", "kiwi", "level", "mango", "noon", "oak",
          "pear", "Queen", "radar", "sun", "tree", "umbra", "vine", "wolf")


@dataclass(frozen=True)
class Primitive:
    """One DSL operation: ``code``/``phrase`` are format strings over ``{c}`` (the constant's repr)."""

    name: str
    kind: str
    in_type: str
    out_type: str
    code: str  # a Python expression over `x`
    fn: Callable[[Any, Any], Any]  # (x, c) -> value; computes expected outputs
    phrase: str
    consts: tuple[Any, ...] = ()
    imports: str = ""

    def __post_init__(self) -> None:
        if self.in_type not in TYPE_NAMES or self.out_type not in TYPE_NAMES:
            raise ValueError(f"primitive {self.name}: unknown type {self.in_type}->{self.out_type}")
        if ("{c}" in self.code) != bool(self.consts):
            raise ValueError(f"primitive {self.name}: code uses {{c}} iff it has constants")


def _p(name: str, kind: str, sig: str, code: str, fn: Callable[[Any, Any], Any], phrase: str,
       consts: tuple[Any, ...] = (), imports: str = "") -> Primitive:
    return Primitive(name, kind, sig[0], sig[-1], code, fn, phrase, consts, imports)


_VOWELS = "aeiouAEIOU"
PRIMITIVES: tuple[Primitive, ...] = (
    # filter L -> L
    _p("keep_even", "filter", "L>L", "[v for v in x if v % 2 == 0]",
       lambda x, c: [v for v in x if v % 2 == 0],
       "keep the even numbers"),
    _p("keep_odd", "filter", "L>L", "[v for v in x if v % 2 == 1]",
       lambda x, c: [v for v in x if v % 2 == 1],
       "keep the odd numbers"),
    _p("keep_pos", "filter", "L>L", "[v for v in x if v > 0]", lambda x, c: [v for v in x if v > 0],
       "keep the positive numbers"),
    _p("keep_neg", "filter", "L>L", "[v for v in x if v < 0]", lambda x, c: [v for v in x if v < 0],
       "keep the negative numbers"),
    _p("keep_gt", "filter", "L>L", "[v for v in x if v > {c}]", lambda x, c: [v for v in x if v > c],
       "keep the numbers greater than {c}", (-2, 0, 1, 2, 3, 5)),
    _p("keep_lt", "filter", "L>L", "[v for v in x if v < {c}]", lambda x, c: [v for v in x if v < c],
       "keep the numbers less than {c}", (-1, 0, 2, 3, 4, 6)),
    _p("keep_mult", "filter", "L>L", "[v for v in x if v % {c} == 0]",
       lambda x, c: [v for v in x if v % c == 0],
       "keep the multiples of {c}", (2, 3, 4, 5)),
    _p("drop_value", "filter", "L>L", "[v for v in x if v != {c}]", lambda x, c: [v for v in x if v != c],
       "remove every {c}", (0, 1, 2, 3)),
    # map L -> L
    _p("add", "map", "L>L", "[v + {c} for v in x]", lambda x, c: [v + c for v in x], "add {c} to each number",
       (1, 2, 3, 5, 10)),
    _p("sub", "map", "L>L", "[v - {c} for v in x]", lambda x, c: [v - c for v in x],
       "subtract {c} from each number", (1, 2, 3, 4)),
    _p("mul", "map", "L>L", "[v * {c} for v in x]", lambda x, c: [v * c for v in x],
       "multiply each number by {c}", (2, 3, 4, 5)),
    _p("square", "map", "L>L", "[v * v for v in x]", lambda x, c: [v * v for v in x], "square each number"),
    _p("negate", "map", "L>L", "[-v for v in x]", lambda x, c: [-v for v in x], "negate each number"),
    _p("absolute", "map", "L>L", "[abs(v) for v in x]", lambda x, c: [abs(v) for v in x],
       "take the absolute value of each number"),
    _p("mod", "map", "L>L", "[v % {c} for v in x]", lambda x, c: [v % c for v in x],
       "replace each number by its remainder modulo {c}", (2, 3, 5, 7)),
    _p("floordiv", "map", "L>L", "[v // {c} for v in x]", lambda x, c: [v // c for v in x],
       "floor-divide each number by {c}", (2, 3, 4)),
    # listop L -> L
    _p("sort", "listop", "L>L", "sorted(x)", lambda x, c: sorted(x), "sort the numbers in ascending order"),
    _p("sort_desc", "listop", "L>L", "sorted(x, reverse=True)", lambda x, c: sorted(x, reverse=True),
       "sort the numbers in descending order"),
    _p("reverse", "listop", "L>L", "x[::-1]", lambda x, c: x[::-1], "reverse the order"),
    _p("take", "listop", "L>L", "x[:{c}]", lambda x, c: x[:c], "keep the first {c} numbers", (1, 2, 3, 4)),
    _p("drop", "listop", "L>L", "x[{c}:]", lambda x, c: x[c:], "drop the first {c} numbers", (1, 2, 3)),
    _p("dedupe", "listop", "L>L", "list(dict.fromkeys(x))", lambda x, c: list(dict.fromkeys(x)),
       "remove repeated numbers, keeping first occurrences"),
    _p("every_other", "listop", "L>L", "x[::2]", lambda x, c: x[::2],
       "keep every other number, starting with the first"),
    _p("running_sum", "listop", "L>L", "[sum(x[:i + 1]) for i in range(len(x))]",
       lambda x, c: [sum(x[: i + 1]) for i in range(len(x))], "replace each number by the running total"),
    # fold L -> I / B
    _p("sum", "fold", "L>I", "sum(x)", lambda x, c: sum(x), "take the sum"),
    _p("product", "fold", "L>I", "math.prod(x)", lambda x, c: math.prod(x),
       "take the product (1 for no numbers)", imports="import math\n"),
    _p("max", "fold", "L>I", "max(x, default=0)", lambda x, c: max(x, default=0),
       "take the largest number (0 if there are none)"),
    _p("min", "fold", "L>I", "min(x, default=0)", lambda x, c: min(x, default=0),
       "take the smallest number (0 if there are none)"),
    _p("count", "fold", "L>I", "len(x)", lambda x, c: len(x), "count the numbers"),
    _p("first", "fold", "L>I", "x[0] if x else 0", lambda x, c: x[0] if x else 0,
       "take the first number (0 if there is none)"),
    _p("last", "fold", "L>I", "x[-1] if x else 0", lambda x, c: x[-1] if x else 0,
       "take the last number (0 if there is none)"),
    _p("count_of", "fold", "L>I", "x.count({c})", lambda x, c: x.count(c), "count how many times {c} occurs",
       (0, 1, 2, 4)),
    _p("any_pos", "fold", "L>B", "any(v > 0 for v in x)", lambda x, c: any(v > 0 for v in x),
       "check whether any number is positive"),
    _p("all_even", "fold", "L>B", "all(v % 2 == 0 for v in x)", lambda x, c: all(v % 2 == 0 for v in x),
       "check whether all numbers are even"),
    _p("contains", "fold", "L>B", "{c} in x", lambda x, c: c in x, "check whether {c} occurs", (0, 1, 3, 6)),
    # arith I -> I
    _p("i_add", "arith", "I>I", "x + {c}", lambda x, c: x + c, "add {c}", (1, 2, 5, 10)),
    _p("i_sub", "arith", "I>I", "x - {c}", lambda x, c: x - c, "subtract {c}", (1, 3, 7)),
    _p("i_mul", "arith", "I>I", "x * {c}", lambda x, c: x * c, "multiply by {c}", (2, 3, 4)),
    _p("i_mod", "arith", "I>I", "x % {c}", lambda x, c: x % c, "take the remainder modulo {c}",
       (2, 3, 5, 10)),
    _p("i_div", "arith", "I>I", "x // {c}", lambda x, c: x // c, "floor-divide by {c}", (2, 3, 4)),
    _p("i_abs", "arith", "I>I", "abs(x)", lambda x, c: abs(x), "take the absolute value"),
    _p("i_square", "arith", "I>I", "x * x", lambda x, c: x * x, "square it"),
    _p("i_neg", "arith", "I>I", "-x", lambda x, c: -x, "negate it"),
    # I -> L, I -> B
    _p("digits", "digits", "I>L", "[int(d) for d in str(abs(x))]", lambda x, c: [int(d) for d in str(abs(x))],
       "take the list of its decimal digits (ignoring the sign)"),
    _p("is_even", "test", "I>B", "x % 2 == 0", lambda x, c: x % 2 == 0, "check whether it is even"),
    _p("is_pos", "test", "I>B", "x > 0", lambda x, c: x > 0, "check whether it is positive"),
    _p("i_gt", "test", "I>B", "x > {c}", lambda x, c: x > c, "check whether it is greater than {c}",
       (0, 5, 10, 20)),
    # strop S -> S
    _p("lower", "strop", "S>S", "x.lower()", lambda x, c: x.lower(), "convert it to lowercase"),
    _p("upper", "strop", "S>S", "x.upper()", lambda x, c: x.upper(), "convert it to uppercase"),
    _p("swapcase", "strop", "S>S", "x.swapcase()", lambda x, c: x.swapcase(), "swap the case of each letter"),
    _p("strip", "strop", "S>S", "x.strip()", lambda x, c: x.strip(), "remove leading and trailing spaces"),
    _p("s_reverse", "strop", "S>S", "x[::-1]", lambda x, c: x[::-1], "reverse it"),
    _p("s_take", "strop", "S>S", "x[:{c}]", lambda x, c: x[:c], "keep the first {c} characters",
       (2, 3, 5, 8)),
    _p("s_drop", "strop", "S>S", "x[{c}:]", lambda x, c: x[c:], "drop the first {c} characters", (1, 2, 4)),
    _p("no_vowels", "strop", "S>S", "''.join(ch for ch in x if ch not in 'aeiouAEIOU')",
       lambda x, c: "".join(ch for ch in x if ch not in _VOWELS), "remove the vowels"),
    _p("letters", "strop", "S>S", "''.join(ch for ch in x if ch.isalpha())",
       lambda x, c: "".join(ch for ch in x if ch.isalpha()), "keep only the letters"),
    # strfold S -> I / B
    _p("s_len", "strfold", "S>I", "len(x)", lambda x, c: len(x), "take its length"),
    _p("s_count", "strfold", "S>I", "x.count({c})", lambda x, c: x.count(c),
       "count how many times {c} occurs", ("a", "e", "o", "n")),
    _p("vowel_count", "strfold", "S>I", "sum(ch in 'aeiouAEIOU' for ch in x)",
       lambda x, c: sum(ch in _VOWELS for ch in x), "count the vowels"),
    _p("palindrome", "strfold", "S>B", "x == x[::-1]", lambda x, c: x == x[::-1],
       "check whether it reads the same backwards"),
    # S -> W, S -> L
    _p("split", "split", "S>W", "x.split()", lambda x, c: x.split(), "split it into words"),
    _p("codes", "split", "S>L", "[ord(ch) for ch in x]", lambda x, c: [ord(ch) for ch in x],
       "take the list of character codes"),
    # wordop W -> W
    _p("w_longer", "wordop", "W>W", "[w for w in x if len(w) > {c}]",
       lambda x, c: [w for w in x if len(w) > c],
       "keep the words longer than {c} characters", (2, 3, 4)),
    _p("w_starts", "wordop", "W>W", "[w for w in x if w.startswith({c})]",
       lambda x, c: [w for w in x if w.startswith(c)], "keep the words starting with {c}", ("a", "b", "s")),
    _p("w_upper", "wordop", "W>W", "[w.upper() for w in x]", lambda x, c: [w.upper() for w in x],
       "uppercase each word"),
    _p("w_cap", "wordop", "W>W", "[w.capitalize() for w in x]", lambda x, c: [w.capitalize() for w in x],
       "capitalize each word"),
    _p("w_rev", "wordop", "W>W", "[w[::-1] for w in x]", lambda x, c: [w[::-1] for w in x],
       "reverse each word"),
    _p("w_sort", "wordop", "W>W", "sorted(x)", lambda x, c: sorted(x), "sort the words"),
    _p("w_reverse", "wordop", "W>W", "x[::-1]", lambda x, c: x[::-1], "reverse the order of the words"),
    # wordfold W -> S / I / L
    _p("join", "wordfold", "W>S", "{c}.join(x)", lambda x, c: c.join(x), "join the words with {c}",
       (" ", "-", ",", "")),
    _p("w_count", "wordfold", "W>I", "len(x)", lambda x, c: len(x), "count the words"),
    _p("w_lens", "wordfold", "W>L", "[len(w) for w in x]", lambda x, c: [len(w) for w in x],
       "take the length of each word"),
)
PRIMITIVES_BY_NAME = {p.name: p for p in PRIMITIVES}
if len(PRIMITIVES_BY_NAME) != len(PRIMITIVES):
    raise RuntimeError("duplicate primitive names")


def _extendable() -> dict[tuple[str, int], bool]:
    """(type, r) -> whether r more stages can follow a value of this type (B is terminal)."""
    table = {(t, 0): True for t in TYPE_NAMES}
    for r in range(1, MAX_DIFFICULTY + 1):
        for t in TYPE_NAMES:
            table[(t, r)] = any(p.in_type == t and table[(p.out_type, r - 1)] for p in PRIMITIVES)
    return table


_EXTENDABLE = _extendable()


def is_heldout_structure(names: tuple[str, ...]) -> bool:
    """Fixed, seed-independent split by structure: multi-stage structures in a 20% hash bucket."""
    if len(names) < 2:
        return False
    digest = hashlib.sha256(">".join(names).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT


def composition_key(task: Task) -> tuple[str, ...]:
    """The structure of a synthetic task: its primitives' names in order (constants excluded)."""
    stages = task.extra.get("stages")
    if not isinstance(stages, tuple):
        raise ValueError(f"task {task.task_id!r} is not a synthetic task (no extra['stages'])")
    return stages


def _random_input(kind: str, rng: random.Random) -> Any:
    if kind == "L":
        return [rng.randint(-9, 9) for _ in range(rng.randint(0, 7))]
    if kind == "I":
        return rng.randint(-30, 120)
    words = [rng.choice(_WORDS) for _ in range(rng.randint(0 if kind == "W" else 1, 4))]
    if kind == "W":
        return words
    text = " ".join(words)
    return " " + text + " " if rng.random() < 0.25 else text


def _walk(rng: random.Random, difficulty: int) -> tuple[str, tuple[Primitive, ...]]:
    """A random type-correct stage sequence of length ``difficulty`` and its input type."""
    starts = [t for t in INPUT_DESCRIPTIONS if _EXTENDABLE[(t, difficulty)]]
    cur = rng.choice(starts)
    input_type = cur
    stages: list[Primitive] = []
    for i in range(difficulty):
        remaining = difficulty - i - 1
        options = [p for p in PRIMITIVES if p.in_type == cur and _EXTENDABLE[(p.out_type, remaining)]
                   and (not stages or p.name != stages[-1].name)]
        p = rng.choice(options)
        stages.append(p)
        cur = p.out_type
    return input_type, tuple(stages)


def _evaluate(stages: tuple[Primitive, ...], consts: tuple[Any, ...], x: Any) -> Any:
    for p, c in zip(stages, consts):
        x = p.fn(x, c)
    return x


def _build_task(task_id: str, split: str, input_type: str, stages: tuple[Primitive, ...],
                consts: tuple[Any, ...], cases: list[tuple[Any, Any]]) -> Task:
    out_type = stages[-1].out_type
    phrases = [p.phrase.format(c=repr(c)) for p, c in zip(stages, consts)]
    steps = ", then ".join(phrases)
    description = f"Given {INPUT_DESCRIPTIONS[input_type]}, {steps}. Return the result."
    examples = "".join(f"    >>> {ENTRY_POINT}({x!r})\n    {y!r}\n" for x, y in cases[:2])
    imports = "".join(sorted({p.imports for p in stages if p.imports}))
    prompt = (f"{imports}{'' if not imports else chr(10)}"
              f"def {ENTRY_POINT}(x: {TYPE_NAMES[input_type]}) -> {TYPE_NAMES[out_type]}:\n"
              f'    """{description}\n\n{examples}    """\n')
    lines = [p.code.format(c=repr(c)) for p, c in zip(stages, consts)]
    body = "".join(f"    x = {expr}\n" for expr in lines[:-1]) + f"    return {lines[-1]}\n"
    asserts = "".join(f"    assert candidate({x!r}) == {y!r}\n" for x, y in cases)
    test = "\n\ndef check(candidate):\n" + asserts
    names = tuple(p.name for p in stages)
    return Task(task_id=task_id, prompt=prompt, entry_point=ENTRY_POINT, canonical_solution=body, test=test,
                benchmark="synthetic", extra={"stages": names, "constants": consts, "difficulty": len(stages),
                                              "split": split, "input_type": input_type})


def synthetic_tasks(split: str, n: int, seed: int, difficulty: int | None = None) -> list[Task]:
    """``n`` tasks of ``split`` ("train" | "heldout"), deterministic in (split, n, seed, difficulty).

    ``difficulty`` = number of stages (1–4; held-out needs >= 2); None draws it per task uniformly
    (1–4 for train, 2–4 for held-out). A task is redrawn when its tests would not tell solutions apart
    (fewer than two distinct expected outputs).
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    for name, value in (("n", n), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    lowest = 2 if split == "heldout" else 1
    if difficulty is not None:
        if isinstance(difficulty, bool) or not isinstance(difficulty, int):
            raise TypeError(f"difficulty must be an int or None, got {type(difficulty).__name__}")
        if not lowest <= difficulty <= MAX_DIFFICULTY:
            raise ValueError(f"difficulty for split {split!r} must be in [{lowest}, {MAX_DIFFICULTY}] "
                             f"(single-stage structures are all in train), got {difficulty}")
    digest = hashlib.sha256(f"synthetic|{split}|{seed}|{difficulty}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    tasks: list[Task] = []
    attempts = 0
    while len(tasks) < n:
        attempts += 1
        if attempts > 200 * (n + 10):
            raise RuntimeError(f"could not draw {n} {split} tasks (difficulty={difficulty})")
        d = difficulty if difficulty is not None else rng.randint(lowest, MAX_DIFFICULTY)
        input_type, stages = _walk(rng, d)
        if is_heldout_structure(tuple(p.name for p in stages)) != (split == "heldout"):
            continue
        consts = tuple(rng.choice(p.consts) if p.consts else None for p in stages)
        n_tests = rng.randint(3, 5)
        inputs: list[Any] = []
        for _ in range(4 * n_tests):  # distinct inputs, so no assert (or docstring example) repeats
            x = _random_input(input_type, rng)
            if all(repr(x) != repr(y) for y in inputs):
                inputs.append(x)
            if len(inputs) == n_tests:
                break
        cases = [(x, _evaluate(stages, consts, x)) for x in inputs]
        if len({repr(y) for _, y in cases}) < 2:
            continue  # a constant-output test set cannot distinguish solutions
        tasks.append(_build_task(f"Synthetic/{split}/{seed}/{len(tasks)}", split, input_type, stages, consts,
                                 cases))
    return tasks
