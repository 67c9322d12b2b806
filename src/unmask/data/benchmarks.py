"""Loaders for the code benchmarks shipped with the package, as HumanEval-shaped `Task`s.

Data files live next to this module in ``files/<name>/`` (copied unmodified; each folder has a
``LICENSE-NOTE.md`` with source, version, license and sha256). Names ``load_benchmark`` accepts:

- ``humaneval`` — 164 tasks. ``prompt`` = signature + docstring, ``test`` defines ``check(candidate)``.
- ``humaneval+`` / ``humaneval+mini`` — HumanEval+ v0.1.10 (full / Mini). EvalPlus records carry inputs,
  not asserts, so ``test`` is a generated ``check(candidate)`` program: it embeds the base + plus inputs as
  Python literals and the canonical solution as source, runs that reference in its own namespace to get
  the expected outputs, and compares (exact ``==``; floats within ``atol + 1e-7·|expected|`` as EvalPlus
  does; for ``find_zero``, HumanEval/32, ``|poly(xs, x)| <= atol`` since any root is right).
  ``extra["base_test"]`` holds the original HumanEval test (also a ``check``).
- ``mbpp`` — the full MBPP set's standard test split, task_id 11–510 (500 tasks). ``mbpp-train`` — the
  train + validation splits, 511–974 (464 tasks, for RL/SFT; ``extra["in_mbppplus"]`` flags overlap with
  MBPP+ for decontamination). Like EvalPlus, ``prompt`` is a docstring holding the description and the
  first test (the signature hint); ``canonical_solution`` is the full reference code; ``test`` is
  ``test_setup_code`` + the asserts, which call the function by name (self-executing, no ``check``).
- ``mbpp+`` — MBPP+ v0.2.0 (378 tasks), derived from the shipped v0.1.0-equivalent file by dropping the
  21 tasks and stripping the URL from the 18 prompts that v0.2.0 changed (see the data LICENSE-NOTE).
  ``test`` is a generated ``check`` program, as for HumanEval+, followed by ``check(<entry_point>)`` so it
  is self-executing like MBPP's asserts (named ``_plus_check``: Mbpp/56's entry point is ``check``);
  ``extra["base_test"]`` holds the original asserts. JSON loses
  tuples and sets, so each argument's container types are inferred from the literal arguments in the
  task's own asserts and re-applied to every input (checked against the base inputs).
  ``mbpp+v0.1.0`` loads all 399 tasks unchanged.
- ``humaneval-infilling-{single,multi,span,span-light}`` — ``prompt`` is the prefix,
  ``extra["suffix"]`` the suffix, ``canonical_solution`` the middle; ``test`` defines ``check``.

``HARNESS_IMPORTS`` is the import header the harness puts before every program (EvalPlus also provides
common imports; MBPP+ Mbpp/120's asserts use ``math`` without importing it).
"""

from __future__ import annotations

import ast
import functools
import gzip
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unmask.fileio import atomic_write_text, parse_jsonl

DATA_DIR = Path(__file__).resolve().parent / "files"

# Standard-library imports provided to every assembled program (stdlib only: the sandbox may lack numpy).
HARNESS_IMPORTS = (
    "import math\nimport re\nimport sys\nimport copy\nimport string\nimport heapq\nimport bisect\n"
    "import itertools\nimport functools\nimport collections\nimport statistics\nimport hashlib\n"
    "from typing import *\nfrom collections import *\n"
)

MBPP_V020_REMOVED = frozenset(
    f"Mbpp/{i}"
    for i in (83, 115, 117, 143, 164, 229, 249, 295, 396, 400, 407, 431, 438, 442, 461, 574, 582, 595, 640,
              746, 783)
)
MBPP_V020_URL_STRIPPED = frozenset(
    f"Mbpp/{i}"
    for i in (734, 735, 736, 739, 740, 743, 745, 749, 751, 752, 753, 757, 763, 771, 780, 781, 782, 803)
)

_INFILLING_FILES = {
    "humaneval-infilling-single": "HumanEval-SingleLineInfilling.jsonl.gz",
    "humaneval-infilling-multi": "HumanEval-MultiLineInfilling.jsonl.gz",
    "humaneval-infilling-span": "HumanEval-RandomSpanInfilling.jsonl.gz",
    "humaneval-infilling-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}
BENCHMARKS = (
    "humaneval", "humaneval+", "humaneval+mini", "mbpp", "mbpp-train", "mbpp+", "mbpp+v0.1.0",
    *_INFILLING_FILES,
)


@dataclass(frozen=True)
class Task:
    """One benchmark problem in HumanEval shape (see the module docstring for what each field holds)."""

    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str
    benchmark: str
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("task_id", "prompt", "entry_point", "canonical_solution", "test", "benchmark"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"Task.{name} must be a str, got {type(getattr(self, name)).__name__}")
        if not self.entry_point.isidentifier():
            raise ValueError(f"Task {self.task_id!r}: entry_point {self.entry_point!r} is not an identifier")


def load_benchmark(name: str, *, limit: int | None = None) -> list[Task]:
    """The tasks of benchmark ``name`` in file order, the first ``limit`` of them if given."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; valid names: {', '.join(BENCHMARKS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    tasks = _load_cached(name)
    return list(tasks if limit is None else tasks[:limit])


@functools.cache
def _load_cached(name: str) -> tuple[Task, ...]:
    if name == "humaneval":
        return tuple(_humaneval_task(r) for r in _read_jsonl(DATA_DIR / "humaneval" / "HumanEval.jsonl.gz"))
    if name in ("humaneval+", "humaneval+mini"):
        fname = {"humaneval+": "HumanEvalPlus-v0.1.10.jsonl.gz",
                 "humaneval+mini": "HumanEvalPlus-Mini-v0.1.10.jsonl.gz"}[name]
        return tuple(_humanevalplus_task(r, name) for r in _read_jsonl(DATA_DIR / "humanevalplus" / fname))
    if name in ("mbpp", "mbpp-train"):
        records = _read_jsonl(DATA_DIR / "mbpp" / "mbpp.jsonl")
        lo, hi = (11, 510) if name == "mbpp" else (511, 974)
        plus_ids = {r["task_id"] for r in _mbppplus_records()} if name == "mbpp-train" else set()
        return tuple(_mbpp_task(r, name, f"Mbpp/{r['task_id']}" in plus_ids)
                     for r in records if lo <= r["task_id"] <= hi)
    if name in ("mbpp+", "mbpp+v0.1.0"):
        v020 = name == "mbpp+"
        return tuple(_mbppplus_task(r, name, v020) for r in _mbppplus_records()
                     if not (v020 and r["task_id"] in MBPP_V020_REMOVED))
    path = DATA_DIR / "humaneval_infilling" / _INFILLING_FILES[name]
    return tuple(
        Task(task_id=r["task_id"], prompt=r["prompt"], entry_point=r["entry_point"],
             canonical_solution=r["canonical_solution"], test=r["test"], benchmark=name,
             extra={"suffix": r["suffix"]})
        for r in _read_jsonl(path)
    )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@functools.lru_cache(maxsize=1)
def _mbppplus_records() -> tuple[dict[str, Any], ...]:
    return tuple(_read_jsonl(DATA_DIR / "mbppplus" / "MbppPlus-v0.1.0-prerelease-767efcc.jsonl.gz"))


@functools.lru_cache(maxsize=1)
def _humaneval_tests() -> dict[str, str]:
    # The Mini file omits `test`; its base tests are HumanEval's own.
    return {t.task_id: t.test for t in _load_cached("humaneval")}


def _humaneval_task(r: Mapping[str, Any]) -> Task:
    return Task(task_id=r["task_id"], prompt=r["prompt"], entry_point=r["entry_point"],
                canonical_solution=r["canonical_solution"], test=r["test"], benchmark="humaneval")


def _humanevalplus_task(r: Mapping[str, Any], name: str) -> Task:
    inputs = list(r["base_input"]) + list(r["plus_input"])
    test = plus_check_program(
        reference_source=r["prompt"] + r["canonical_solution"], entry_point=r["entry_point"],
        inputs=inputs, atol=float(r["atol"] or 0.0), root_of_poly=r["task_id"] == "HumanEval/32",
    )
    return Task(task_id=r["task_id"], prompt=r["prompt"], entry_point=r["entry_point"],
                canonical_solution=r["canonical_solution"], test=test, benchmark=name,
                extra={"base_test": r.get("test") or _humaneval_tests()[r["task_id"]],
                       "n_base": len(r["base_input"]), "n_plus": len(r["plus_input"])})


def _mbpp_prompt(description: str, first_test: str) -> str:
    # EvalPlus's MBPP prompt: the description and one test (which reveals name and signature) in a docstring.
    return f'"""\n{description.strip()}\n{first_test.strip()}\n"""\n'


def _mbpp_entry_point(code: str, test: str, task_id: Any) -> str:
    with warnings.catch_warnings():  # some MBPP reference code has invalid escapes in plain strings
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        defined = [n.name for n in ast.parse(code).body if isinstance(n, ast.FunctionDef)]
    for node in ast.walk(ast.parse(test)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in defined:
            return node.func.id
    raise ValueError(f"MBPP task {task_id}: no function defined in its code is called by its first test")


def _mbpp_task(r: Mapping[str, Any], name: str, in_plus: bool) -> Task:
    tests = list(r["test_list"])
    # `code` first, then test_setup_code, then the asserts (tasks 367 and 927 need this order).
    test = (r["test_setup_code"] + "\n" if r["test_setup_code"] else "") + "\n".join(tests) + "\n"
    extra: dict[str, Any] = {"text": r["text"], "test_list": tests}
    if name == "mbpp-train":
        extra["in_mbppplus"] = in_plus
    return Task(task_id=f"Mbpp/{r['task_id']}", prompt=_mbpp_prompt(r["text"], tests[0]),
                entry_point=_mbpp_entry_point(r["code"], tests[0], r["task_id"]),
                canonical_solution=r["code"], test=test, benchmark=name, extra=extra)


_URL = re.compile(r"\s*https?://\S+")


def _mbppplus_task(r: Mapping[str, Any], name: str, v020: bool) -> Task:
    description = r["prompt"].strip().strip("'\"").strip()
    if v020 and r["task_id"] in MBPP_V020_URL_STRIPPED:
        description = _URL.sub("", description).strip()
    asserts = [line for line in r["assertion"].splitlines() if line.strip().startswith("assert")]
    specs = infer_arg_specs(r["assertion"], r["entry_point"], r["base_input"])
    inputs = [apply_arg_specs(specs, args) for args in list(r["base_input"]) + list(r["plus_input"])]
    check = plus_check_program(reference_source=r["canonical_solution"], entry_point=r["entry_point"],
                               inputs=inputs, atol=float(r["atol"] or 0.0), check_name="_plus_check")
    return Task(task_id=r["task_id"], prompt=_mbpp_prompt(description, asserts[0]),
                entry_point=r["entry_point"], canonical_solution=r["canonical_solution"],
                test=check + f"\n_plus_check({r['entry_point']})\n", benchmark=name,
                extra={"base_test": r["assertion"], "text": description, "arg_specs": specs,
                       "n_base": len(r["base_input"]), "n_plus": len(r["plus_input"])})


# ---- argument container types for MBPP+ (JSON turned tuples and sets into lists) -----------------------

Spec = tuple | None  # ("tuple"|"list"|"set"|"dict", element Spec) or None for "leave as is"


def _shape(value: Any) -> Spec:
    """The container-type spec of a Python literal.

    Elements are assumed homogeneous (the first non-None element spec wins). A container mixing scalars
    with containers of its own kind is taken as a recursive structure ("tuple*": every list at any depth
    becomes a tuple), since plus inputs nest deeper than the literals. Numeric arguments get "num": EvalPlus
    stores complex arguments as strings, which are turned back into complex numbers.
    """
    if isinstance(value, (int, float, complex)) and not isinstance(value, bool):
        return ("num", None)
    kind = {tuple: "tuple", list: "list", set: "set", frozenset: "set", dict: "dict"}.get(type(value))
    if kind is None:
        return None
    elems = list(value.values() if isinstance(value, dict) else value)
    shapes = [_shape(e) for e in elems]
    if kind in ("tuple", "list") and any(s is not None and s[0] == kind for s in shapes) and any(
        s is None or s[0] == "num" for s in shapes
    ):
        return (kind + "*", None)
    # "num" only applies to whole arguments: strings inside containers stay strings.
    inner = next((s for s in shapes if s is not None and s[0] != "num"), None)
    return (kind, inner)


def _apply(spec: Spec, value: Any) -> Any:
    if spec is None:
        return value
    kind, inner = spec
    if kind == "num":
        if isinstance(value, str):
            try:
                return complex(value)
            except ValueError:
                return value
        return value
    if kind in ("tuple*", "list*"):
        make = tuple if kind == "tuple*" else list
        return make(_apply(spec, v) for v in value) if isinstance(value, (list, tuple)) else value
    if kind == "dict":
        return {k: _apply(inner, v) for k, v in value.items()} if isinstance(value, dict) else value
    if not isinstance(value, (list, tuple, set, frozenset)):
        return value
    items = [_apply(inner, v) for v in value]
    return {"tuple": tuple, "list": list, "set": set}[kind](items)


def apply_arg_specs(specs: list[Spec] | None, args: list[Any]) -> list[Any]:
    """Convert one JSON argument list to the container types ``specs`` names (unchanged if arity differs)."""
    if specs is None or len(specs) != len(args):
        return list(args)
    return [_apply(s, a) for s, a in zip(specs, args)]


def infer_arg_specs(assertion: str, entry_point: str, base_inputs: list[list[Any]]) -> list[Spec] | None:
    """Per-argument container specs read off the literal calls to ``entry_point`` in ``assertion``.

    A spec is accepted only if it turns some JSON base input back into exactly the literal arguments of
    one of the asserts; otherwise None (inputs stay as JSON decoded them).
    """
    try:
        tree = ast.parse(assertion)
    except SyntaxError:
        return None
    literal_calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == entry_point:
            try:
                literal_calls.append([ast.literal_eval(a) for a in node.args])
            except (ValueError, SyntaxError, TypeError):
                continue
    for lit in literal_calls:
        specs = [_shape(a) for a in lit]
        for base in base_inputs:
            converted = apply_arg_specs(specs, base)
            if _same_typed(converted, lit):
                return specs
    return None


def _same_typed(a: Any, b: Any) -> bool:
    """Equality that also requires equal container types all the way down (``[1] != (1,)`` already)."""
    numbers = (int, float, complex)
    is_number = [isinstance(v, numbers) and not isinstance(v, bool) for v in (a, b)]
    if all(is_number):
        return a == b  # a complex parsed from a string may stand for an int literal (0j == 0)
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_typed(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_typed(a[k], b[k]) for k in a)
    return a == b


# ---- generated check programs for EvalPlus-style (inputs + reference) tasks -------------------------------

_CHECK_TEMPLATE = '''

def _plus_inputs():
    # Local names so the literals below can spell non-finite floats without touching globals.
    inf = float("inf")
    nan = float("nan")
    return {inputs}


_PLUS_REFERENCE = {reference}
_PLUS_ATOL = {atol!r}


def _plus_close(out, exp, atol):
    if out == exp:
        return True
    if type(out) is type(exp) and type(exp).__eq__ is object.__eq__:
        return repr(out) == repr(exp)  # no value equality (e.g. re.Match): compare what it shows
    if isinstance(exp, float) and isinstance(out, (int, float)) and not isinstance(out, bool):
        return abs(out - exp) <= atol + 1e-07 * abs(exp)
    if isinstance(exp, (list, tuple)) and type(out) is type(exp) and len(out) == len(exp):
        return all(_plus_close(o, e, atol) for o, e in zip(out, exp))
    return False


def {check_name}(candidate):
    import copy as _copy
    namespace = {{}}
    exec(_PLUS_REFERENCE, namespace)
    reference = namespace[{entry_point!r}]
    for i, args in enumerate(_plus_inputs()):
        got = candidate(*_copy.deepcopy(args))
{compare}
'''
_COMPARE_EXPECTED = '''        expected = reference(*_copy.deepcopy(args))
        assert _plus_close(got, expected, _PLUS_ATOL), f"input #{i}: got {got!r}, expected {expected!r}"'''
_COMPARE_ROOT = '''        value = namespace["poly"](args[0], got)
        assert abs(value) <= _PLUS_ATOL, f"input #{i}: poly(xs, {got!r}) = {value!r}, not a root"'''


def plus_check_program(*, reference_source: str, entry_point: str, inputs: list[list[Any]], atol: float,
                       root_of_poly: bool = False, check_name: str = "check") -> str:
    """Test code defining ``check(candidate)``: candidate(*args) must match the reference on every input.

    The reference runs from ``reference_source`` (prefixed by ``HARNESS_IMPORTS``) in its own namespace,
    so it cannot collide with the candidate's names. ``check_name`` renames ``check`` (MBPP+ has a task
    whose entry point is called ``check``). Inputs are deep-copied per call (functions may mutate).
    """
    body = repr(inputs)
    for args in inputs:
        if not isinstance(args, (list, tuple)):
            raise ValueError(f"{entry_point}: each input must be an argument list, got {type(args).__name__}")
    return _CHECK_TEMPLATE.format(
        inputs=body, reference=repr(HARNESS_IMPORTS + reference_source), atol=atol, entry_point=entry_point,
        compare=_COMPARE_ROOT if root_of_poly else _COMPARE_EXPECTED, check_name=check_name,
    )


# ---- EvalPlus-compatible samples files -----------------------------------------------------------------


def write_evalplus_samples(path: str | os.PathLike[str], samples: Iterable[Mapping[str, Any]]) -> None:
    """Write samples as EvalPlus jsonl: one ``{"task_id", "solution"}`` or ``{"task_id", "completion"}``
    object per line (other keys are kept). Written atomically."""
    lines = []
    for i, sample in enumerate(samples):
        _validate_sample(sample, f"sample #{i}")
        lines.append(json.dumps(dict(sample), ensure_ascii=False))
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def read_evalplus_samples(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read an EvalPlus samples jsonl (blank lines skipped); each line is validated."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, sample in parse_jsonl(f, path):
            _validate_sample(sample, f"{path}:{lineno}")
            out.append(sample)
    return out


def _validate_sample(sample: Any, where: str) -> None:
    if not isinstance(sample, Mapping):
        raise TypeError(f"{where}: a sample must be a JSON object / mapping, got {type(sample).__name__}")
    if not isinstance(sample.get("task_id"), str):
        raise ValueError(f"{where}: 'task_id' must be a string")
    has = [k for k in ("solution", "completion") if k in sample]
    if len(has) != 1:
        found = has or "neither"
        raise ValueError(f"{where}: needs exactly one of 'solution' or 'completion', found {found}")
    if not isinstance(sample[has[0]], str):
        raise ValueError(f"{where}: {has[0]!r} must be a string")
