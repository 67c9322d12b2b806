"""Tests for unmask.rl.rewards: format/code rewards, test splitting, reward hacks, infra_error -> None."""

from __future__ import annotations

import pytest

from unmask.data.benchmarks import Task
from unmask.rl import rewards as R
from unmask.sandbox import ExecutionResult

TEST = """

def check(candidate):
    assert candidate(1) == 2
    assert candidate(2) == 4
    assert candidate(5) == 10
    assert candidate(0) == 0
"""
TASK = Task(task_id="t/0", prompt="def f(x: int) -> int:\n", entry_point="f", canonical_solution="    return 2 * x\n",
            test=TEST, benchmark="synthetic-train")
MBPP = Task(task_id="Mbpp/1", prompt='"""Double."""\n', entry_point="dbl", canonical_solution="",
            test="xs = [1, 2]\nassert dbl(xs[0]) == 2\nassert dbl(xs[1]) == 4\n", benchmark="mbpp")


def test_split_tests_one_assert_per_unit_with_setup_and_guard() -> None:
    units = R.split_tests(TEST)
    assert len(units) == 4
    for k, unit in enumerate(units):
        assert unit.count("assert ") == 1
        assert f"{R.GUARD_NAME}(candidate({[1, 2, 5, 0][k]}), {[2, 4, 10, 0][k]})" in unit
    mbpp = R.split_tests(MBPP.test)
    assert len(mbpp) == 2 and all(u.startswith("xs = [1, 2]") for u in mbpp)
    loop = "def check(candidate):\n    for i in range(3):\n        assert candidate(i) == 2 * i\n"
    assert len(R.split_tests(loop)) == 1  # no top-level asserts: the whole test is one unit
    assert R.split_tests("def check(:") == ["def check(:"]


def test_format_score_instruct_and_plain() -> None:
    ins = dict(task=TASK, mode="instruct")
    assert R.format_score("def f(x):\n    return 2 * x\n```\n", **ins) == 1.0  # prefilled fence closes
    assert R.format_score("def f(x) return\n```\n", **ins) == 0.5  # closed block that does not parse
    assert R.format_score("def f(x):\n    return 2 * x\n", **ins) == 0.0  # never closed
    assert R.format_score("x = 1\n```\nsee\n```python\ny = 2\n```\n", **ins) == 0.0  # two blocks
    assert R.format_score("```python\nx = 1\n```", task=TASK, mode="instruct", prefilled=False) == 1.0
    assert R.format_score("Sure.\n```js\nx = 1\n```", task=TASK, mode="instruct", prefilled=False) == 0.0
    assert R.format_score("    return 2 * x\n", task=TASK, mode="humaneval") == 1.0
    assert R.format_score("    return 2 *\n", task=TASK, mode="humaneval") == 0.5
    assert R.format_score("  \n", task=TASK, mode="humaneval") == 0.0
    with pytest.raises(TypeError, match="str"):
        R.format_score(3, task=TASK, mode="humaneval")  # type: ignore[arg-type]


def test_guard_helper_semantics() -> None:
    ns: dict = {}
    exec(R.GUARD_SOURCE, ns)
    same = ns[R.GUARD_NAME]

    class Liar:
        def __eq__(self, other):
            return True

        __hash__ = object.__hash__

    class SneakyInt(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    assert same([1, (2, "a")], [1, (2, "a")]) and same(2, 2.0) and same({"a": [1]}, {"a": [1]})
    assert same({1, 2}, {2, 1}) and same(None, None)
    assert not same(Liar(), 3) and not same([Liar()], [3]) and not same({"a": Liar()}, {"a": 3})
    assert not same(SneakyInt(5), 3) and not same([1], (1,)) and not same({Liar()}, {3})


def test_code_reward_fraction_hacks_and_format_gate() -> None:
    completions = [
        "    return 2 * x\n",  # all 4 pass
        "    return 2 * x if x < 5 else 0\n",  # 3 of 4 (f(5) == 10 fails)
        "    import os\n    os._exit(0)\n",  # early exit before the asserts
        "    import sys\n    sys.exit(0)\n",
        "    class A:\n        def __eq__(self, o):\n            return True\n    return A()\n",  # always equal
        "    print('ok'); print('PASSED'); raise SystemExit(0)\n",  # fake marker
        "    return 2 *\n",  # does not parse: format 0.5, so no code reward
    ]
    scores = R.code_reward(completions, task=TASK, mode="humaneval", timeout=5.0, workers=2)
    assert scores == [1.0, 0.75, 0.0, 0.0, 0.0, 0.0, 0.0]
    totals, parts = R.combine_rewards(completions[:2] + completions[-1:], {"task": TASK, "mode": "humaneval"})
    assert parts["code_format"] == [1.0, 1.0, 0.5]
    assert totals == [2.0 * 1.0 + 0.5, 2.0 * 0.75 + 0.5, 0.5 * 0.5]


def test_code_reward_instruct_and_mbpp() -> None:
    good = "def f(x):\n    return 2 * x\n```\n"
    part = "def f(x):\n    return 2 * x if x < 3 else 1\n```\n"  # fails only f(5) == 10
    assert R.code_reward([good, part, "def f(x):\n    return 2 * x\n"], task=TASK, mode="instruct",
                         workers=2) == [1.0, 0.75, 0.0]
    assert R.code_reward(["def dbl(v):\n    return v + v\n", "def dbl(v):\n    return 2\n"], task=MBPP,
                         mode="mbpp", workers=2) == [1.0, 0.5]


def test_infra_error_is_missing_not_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    import unmask.sandbox as sandbox

    def fake_run_many(programs, **kwargs):
        out = []
        for k, _ in enumerate(programs):
            if k < 4:  # every unit of the first completion fails in the sandbox itself
                out.append(ExecutionResult("infra_error", None, "", "boom", False, 0.0, "infra"))
            else:
                out.append(ExecutionResult("passed", 0, "", "", False, 0.01, ""))
        return out

    monkeypatch.setattr(sandbox, "run_many", fake_run_many)
    scores = R.code_reward(["    return 2 * x\n", "    return 2 * x\n"], task=TASK, mode="humaneval")
    assert scores == [None, 1.0]
    totals, _ = R.combine_rewards(["    return 2 * x\n"] * 2, {"task": TASK, "mode": "humaneval"})
    assert totals == [None, 2.5]


def test_a_sandbox_that_cannot_score_gives_missing_rewards(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real sandbox, broken (its preflight cannot pass): correct code must get None, never 0."""
    from unmask.sandbox import preflight

    monkeypatch.setattr(preflight, "PROGRAM", "import no_such_module_for_the_preflight\n")
    preflight.forget()
    try:
        scores = R.code_reward(["    return 2 * x\n", "    return 0\n"], task=TASK, mode="humaneval", workers=2)
    finally:
        preflight.forget()
    assert scores == [None, None]


def test_registry_and_errors() -> None:
    assert R.get_reward("code") is R.code_reward and R.get_reward("code_format") is R.code_format_reward
    with pytest.raises(ValueError, match="unknown reward"):
        R.get_reward("nope")
    with pytest.raises(ValueError, match="already registered"):
        R.register_reward("code")(lambda completions, **row: [])
    with pytest.raises(TypeError, match="Task"):
        R.code_format_reward(["x"], task="t/0")
    with pytest.raises(ValueError, match="mode"):
        R.code_format_reward(["x"], task=TASK, mode="weird")
