"""Reward functions for RL on code (docs/rl.md): a registry of ``(completions, **row) -> list[float | None]``.

Every function scores the G completions of one prompt; ``row`` carries the prompt's data: ``task`` (a
:class:`unmask.data.benchmarks.Task`) and ``mode`` (how ``unmask.programs.build_program`` assembles a
program: ``instruct`` for chat answers, ``humaneval`` / ``mbpp`` / ``infilling`` for plain completions).
``None`` is a *missing* reward (the sandbox failed: infra_error), never 0: the advantage skips it.

- ``code_format``: instruct mode, as DiffuCoder (docs/rl.md): 1.0 for exactly one closed ```python block that
  parses, 0.5 if it does not parse, 0 otherwise (``prefilled=True``, the default in instruct mode, means the prompt
  ended with the evaluation prefill's opening fence, so the completion starts inside the block). Plain
  modes have no fence, so the block is the code ``build_program`` puts before the tests: 1.0 when it
  parses, 0.5 when it does not, 0 for an empty completion.
- ``code``: only when the format reward is 1, the fraction of the task's assert tests that pass, each
  assert run as its own sandboxed program with ``timeout`` seconds (5 by default); 0 otherwise.

Defences against reward hacking (each has a test in tests/test_rewards.py):
- early ``sys.exit(0)`` / ``os._exit(0)`` / printing a fake pass marker: the sandbox only reports
  "passed" when the program reached its end (a nonce on fd 3 the program never sees);
- objects whose ``__eq__`` always returns True: every ``assert a == b`` of a test is rewritten to
  ``assert _unmask_same(a, b)``, which also requires the value's type (recursively, inside lists,
  tuples, dicts and sets) to be the expected's type, with plain ``int``/``float``/``complex``/``bool``
  compared as numbers (so ``2 == 2.0`` still passes but an ``int`` subclass does not). The helper is
  defined before the completion's code and binds the builtins it uses at definition time.
Not defended: a completion that deliberately rewrites the harness (finds and replaces ``_unmask_same`` in
its globals, or monkeypatches ``builtins`` before the test's own calls), and tests that do not compare
with ``==`` (e.g. EvalPlus-style ``check`` programs that call a comparison helper: their unit is the
whole test).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from unmask.data.benchmarks import Task
from unmask.programs import build_program

__all__ = [
    "DEFAULT_WEIGHTS",
    "REWARD_FUNCTIONS",
    "RewardFn",
    "code_format_reward",
    "code_reward",
    "combine_rewards",
    "format_score",
    "get_reward",
    "guarded_program",
    "register_reward",
    "split_tests",
]

RewardFn = Callable[..., list[float | None]]
REWARD_FUNCTIONS: dict[str, RewardFn] = {}
DEFAULT_WEIGHTS: dict[str, float] = {"code": 2.0, "code_format": 0.5}

GUARD_NAME = "_unmask_same"
# Defined before the candidate's code; builtins are bound as defaults so later rebinding of the names in
# the program's globals does not change the helper.
GUARD_SOURCE = f'''
def {GUARD_NAME}(a, b, _type=type, _len=len, _all=all, _zip=zip, _any=any, _sorted=sorted, _repr=repr,
                 _numbers=(int, float, complex, bool)):
    """a == b that also demands the same types all the way down (defeats an always-equal __eq__)."""
    ta, tb = _type(a), _type(b)
    if ta in _numbers and tb in _numbers:
        return a == b
    if ta is not tb:
        return False
    if ta is list or ta is tuple:
        return _len(a) == _len(b) and _all({GUARD_NAME}(x, y) for x, y in _zip(a, b))
    if ta is dict:
        if _len(a) != _len(b):
            return False
        for k in a:
            if not _any({GUARD_NAME}(k, kb) for kb in b):
                return False
            if k not in b or not {GUARD_NAME}(a[k], b[k]):
                return False
        return True
    if ta is set or ta is frozenset:
        return _len(a) == _len(b) and _all(_any({GUARD_NAME}(x, y) for y in b) for x in a)
    return a == b
'''


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: add a reward function to :data:`REWARD_FUNCTIONS` under ``name`` (unique)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a reward name must be a non-empty str, got {name!r}")

    def add(fn: RewardFn) -> RewardFn:
        if name in REWARD_FUNCTIONS and REWARD_FUNCTIONS[name] is not fn:
            raise ValueError(f"a reward function named {name!r} is already registered")
        REWARD_FUNCTIONS[name] = fn
        return fn

    return add


def get_reward(name: str) -> RewardFn:
    if name not in REWARD_FUNCTIONS:
        raise ValueError(f"unknown reward function {name!r}; registered: {', '.join(sorted(REWARD_FUNCTIONS))}")
    return REWARD_FUNCTIONS[name]


# ----------------------------------------------------------------------------------------------------------
# Format

_FENCE_LINE = re.compile(r"^[ \t]*```+[ \t]*([\w+#.-]*)[ \t]*$")
_PY_TAGS = {"python", "py", "python3", "py3"}


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: null bytes
        return False
    return True


def _fenced_blocks(text: str) -> list[tuple[str, str | None]]:
    """(language tag, code or None when the block is never closed) for each fenced block, in order."""
    lines = text.splitlines()
    blocks: list[tuple[str, str | None]] = []
    i = 0
    while i < len(lines):
        match = _FENCE_LINE.match(lines[i])
        if match is None:
            i += 1
            continue
        tag = match.group(1).lower()
        close = next((j for j in range(i + 1, len(lines)) if _FENCE_LINE.match(lines[j])), None)
        if close is None:
            blocks.append((tag, None))
            break
        blocks.append((tag, "\n".join(lines[i + 1 : close])))
        i = close + 1
    return blocks


def _plain_code(task: Task, completion: str, mode: str) -> str:
    if mode == "mbpp":
        return completion
    if mode == "infilling":
        return task.prompt + completion + task.extra.get("suffix", "")
    return task.prompt + completion


def format_score(completion: str, *, task: Task, mode: str, prefilled: bool = True) -> float:
    """DiffuCoder's format reward of one completion (docs/rl.md): 1.0, 0.5 or 0.0 (see the module docstring)."""
    if not isinstance(completion, str):
        raise TypeError(f"a completion must be a str, got {type(completion).__name__}")
    if mode != "instruct":
        if not completion.strip():
            return 0.0
        return 1.0 if _parses(_plain_code(task, completion, mode)) else 0.5
    text = ("```python\n" + completion) if prefilled else completion
    blocks = _fenced_blocks(text)
    if len(blocks) != 1:
        return 0.0
    tag, code = blocks[0]
    if tag not in _PY_TAGS or code is None or not code.strip():
        return 0.0
    return 1.0 if _parses(code) else 0.5


def _row_task(row: Mapping[str, Any]) -> tuple[Task, str, bool]:
    task = row.get("task")
    if not isinstance(task, Task):
        raise TypeError(f"reward functions need row['task'] to be a Task, got {type(task).__name__}")
    mode = row.get("mode", "humaneval")
    if mode not in ("instruct", "humaneval", "mbpp", "infilling"):
        raise ValueError(f"unknown program mode {mode!r}")
    return task, mode, bool(row.get("prefilled", True))


@register_reward("code_format")
def code_format_reward(completions: Sequence[str], **row: Any) -> list[float | None]:
    task, mode, prefilled = _row_task(row)
    return [format_score(c, task=task, mode=mode, prefilled=prefilled) for c in completions]


# ----------------------------------------------------------------------------------------------------------
# Tests: one program per assert, with the type-checking equality


class _GuardEquality(ast.NodeTransformer):
    """``assert a == b`` -> ``assert _unmask_same(a, b)`` (only a single ``==``, the usual test shape)."""

    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        test = node.test
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            call = ast.Call(ast.Name(GUARD_NAME, ast.Load()), [test.left, test.comparators[0]], [])
            node.test = ast.copy_location(call, test)
        return node


def _guard(tree: ast.AST) -> ast.AST:
    return ast.fix_missing_locations(_GuardEquality().visit(tree))


def split_tests(test: str) -> list[str]:
    """One test source per assert statement, with the equality guard applied.

    Asserts are the top-level statements of a ``check`` function (HumanEval style) or of the module (MBPP
    style); each unit keeps every other statement (set-up code) and one assert. A test with no such
    asserts (a loop-driven ``check``) is one unit. A test that does not parse is returned unchanged as
    one unit (it will fail honestly in the sandbox).
    """
    try:
        module = ast.parse(test)
    except (SyntaxError, ValueError):
        return [test]
    check = next((n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    body_owner: Any = check if check is not None and any(isinstance(s, ast.Assert) for s in check.body) else module
    body = body_owner.body
    assert_positions = [i for i, s in enumerate(body) if isinstance(s, ast.Assert)]
    if not assert_positions:
        return [ast.unparse(_guard(module))]
    units = []
    original = list(body)
    for keep in assert_positions:
        body_owner.body = [s for i, s in enumerate(original) if not isinstance(s, ast.Assert) or i == keep]
        units.append(ast.unparse(_guard(ast.parse(ast.unparse(module)))))
    body_owner.body = original
    return units


def guarded_program(task: Task, completion: str, unit_test: str, *, mode: str) -> str:
    """The sandbox program for one test unit: the guard helper, then ``build_program``'s assembly."""
    return GUARD_SOURCE + "\n" + build_program(dataclasses.replace(task, test=unit_test), completion, mode=mode)


@register_reward("code")
def code_reward(
    completions: Sequence[str],
    *,
    timeout: float = 5.0,
    memory_mb: int = 1024,
    workers: int | None = None,
    **row: Any,
) -> list[float | None]:
    """Fraction of the task's asserts that pass (format must be 1, else 0); None on a sandbox failure."""
    from unmask.sandbox import run_many

    task, mode, prefilled = _row_task(row)
    units = split_tests(task.test)
    programs: list[str] = []
    owners: list[int] = []
    rewards: list[float | None] = [0.0] * len(completions)
    for i, completion in enumerate(completions):
        if format_score(completion, task=task, mode=mode, prefilled=prefilled) != 1.0:
            continue
        text = ("```python\n" + completion) if (mode == "instruct" and prefilled) else completion
        programs.extend(guarded_program(task, text, unit, mode=mode) for unit in units)
        owners.extend([i] * len(units))
    if not programs:
        return rewards
    results = run_many(programs, timeout=timeout, memory_mb=memory_mb, workers=workers)
    passed = [0] * len(completions)
    broken = [False] * len(completions)
    for owner, result in zip(owners, results):
        if result.status == "infra_error":
            broken[owner] = True
        elif result.passed:
            passed[owner] += 1
    for i in set(owners):
        rewards[i] = None if broken[i] else passed[i] / len(units)
    return rewards


# ----------------------------------------------------------------------------------------------------------
# Combination


def combine_rewards(
    completions: Sequence[str], row: Mapping[str, Any], weights: Mapping[str, float] | None = None,
    **options: Any,
) -> tuple[list[float | None], dict[str, list[float | None]]]:
    """Weighted sum of the named reward functions: (total per completion, each function's scores).

    A completion whose score is None in any function gets a None total (a missing reward, not 0).
    ``options`` are passed to every function (e.g. ``timeout``); functions accept ``**row``, so extra
    keys are harmless.
    """
    weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
    if not weights:
        raise ValueError("give at least one reward function")
    parts: dict[str, list[float | None]] = {}
    for name, weight in weights.items():
        if not isinstance(weight, (int, float)) or isinstance(weight, bool):
            raise TypeError(f"the weight of reward {name!r} must be a number, got {weight!r}")
        scores = get_reward(name)(list(completions), **{**row, **options})
        if len(scores) != len(completions):
            raise ValueError(f"reward {name!r} returned {len(scores)} scores for {len(completions)} completions")
        parts[name] = scores
    totals: list[float | None] = []
    for i in range(len(completions)):
        values = [parts[name][i] for name in weights]
        totals.append(None if any(v is None for v in values) else
                      float(sum(weights[name] * float(v) for name, v in zip(weights, values))))  # type: ignore[arg-type]
    return totals, parts
