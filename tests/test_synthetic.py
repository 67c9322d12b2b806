"""The procedural benchmark: determinism, the structural split, self-consistency, difficulty."""

from __future__ import annotations

import random
from typing import Any

import pytest

from unmask.data.synthetic import (
    MAX_DIFFICULTY,
    PRIMITIVES,
    PRIMITIVES_BY_NAME,
    _random_input,
    composition_key,
    is_heldout_structure,
    synthetic_tasks,
)


def passes(task: Any, body: str) -> bool:
    """Run prompt + body + test + check in-process (trusted generated code)."""
    namespace: dict[str, Any] = {}
    try:
        exec(task.prompt + body + task.test + f"\ncheck({task.entry_point})\n", namespace)
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def train() -> list:
    return synthetic_tasks("train", 3000, seed=0)


@pytest.fixture(scope="module")
def heldout() -> list:
    return synthetic_tasks("heldout", 1000, seed=0)


def test_deterministic() -> None:
    a = synthetic_tasks("train", 50, seed=3, difficulty=3)
    b = synthetic_tasks("train", 50, seed=3, difficulty=3)
    assert [(t, t.extra) for t in a] == [(t, t.extra) for t in b]
    c = synthetic_tasks("train", 50, seed=4, difficulty=3)
    assert [t.prompt for t in a] != [t.prompt for t in c]
    # A prefix of a longer request is the same tasks (n only decides where to stop).
    assert synthetic_tasks("heldout", 10, seed=1) == synthetic_tasks("heldout", 30, seed=1)[:10]


def test_split_disjoint_by_structure(train: list, heldout: list) -> None:
    train_keys = {composition_key(t) for t in train}
    heldout_keys = {composition_key(t) for t in heldout}
    assert not train_keys & heldout_keys
    assert all(is_heldout_structure(k) for k in heldout_keys)
    assert not any(is_heldout_structure(k) for k in train_keys)
    # Rich enough: hundreds of structures on each side.
    assert len(train_keys) >= 500 and len(heldout_keys) >= 200
    # Held-out structures recombine primitives that train uses, and every primitive is used in train.
    train_prims = {p for k in train_keys for p in k}
    assert train_prims == set(PRIMITIVES_BY_NAME)
    assert {p for k in heldout_keys for p in k} <= train_prims
    # Held-out differs by structure, not only by constants: no held-out stage list appears in train.
    assert all(len(k) >= 2 for k in heldout_keys)


def test_canonical_solutions_pass_their_tests(train: list, heldout: list) -> None:
    failing = [t.task_id for t in train + heldout if not passes(t, t.canonical_solution)]
    assert failing == []


def test_broken_solutions_fail(train: list) -> None:
    task = next(t for t in train if composition_key(t) == ("keep_even",))
    assert passes(task, task.canonical_solution)
    assert not passes(task, task.canonical_solution.replace("% 2 == 0", "% 2 == 1"))
    # Another task's solution with the same signature (different structure) almost always fails.
    by_sig: dict[str, list] = {}
    for t in train[:1500]:
        by_sig.setdefault(t.prompt.splitlines()[0], []).append(t)
    trials = fails = 0
    for group in by_sig.values():
        for a, b in zip(group, group[1:]):
            if composition_key(a) != composition_key(b):
                trials += 1
                fails += not passes(a, b.canonical_solution)
    assert trials > 300 and fails / trials > 0.9
    assert sum(not passes(t, "    return None\n") for t in train[:500]) == 500


@pytest.mark.parametrize("difficulty", range(1, MAX_DIFFICULTY + 1))
def test_difficulty_is_number_of_stages(difficulty: int) -> None:
    tasks = synthetic_tasks("train", 100, seed=7, difficulty=difficulty)
    for t in tasks:
        assert len(composition_key(t)) == difficulty == t.extra["difficulty"]
        assert len(t.canonical_solution.splitlines()) == difficulty  # one line per stage
    if difficulty >= 2:
        assert all(len(composition_key(t)) == difficulty
                   for t in synthetic_tasks("heldout", 30, seed=7, difficulty=difficulty))


def test_task_format(train: list) -> None:
    for t in train[:300]:
        asserts = [line for line in t.test.splitlines() if line.strip().startswith("assert")]
        assert 3 <= len(asserts) <= 5
        assert len(set(asserts)) == len(asserts)
        # The two docstring examples are the first two tests.
        lines = t.prompt.splitlines()
        calls = [line.strip()[4:] for line in lines if line.strip().startswith(">>> ")]
        results = [lines[i + 1].strip() for i, line in enumerate(lines) if line.strip().startswith(">>> ")]
        assert [f"assert candidate{c[len(t.entry_point):]} == {r}" for c, r in zip(calls, results)] == [
            a.strip() for a in asserts[:2]
        ]
        assert t.prompt.startswith(("def f(", "import math\n"))
    lengths = [len(t.canonical_solution) for t in train]
    assert max(lengths) <= 200


def test_primitive_code_matches_callable() -> None:
    # The canonical code (what the model learns) and the callable (what makes the tests) must agree.
    rng = random.Random(0)
    import math  # noqa: F401  (the `product` primitive's code uses it)

    for p in PRIMITIVES:
        for _ in range(30):
            x = _random_input(p.in_type, rng) if p.in_type != "B" else rng.random() < 0.5
            c = rng.choice(p.consts) if p.consts else None
            assert eval(p.code.format(c=repr(c)), {"math": math, "x": x}) == p.fn(x, c), p.name


def test_hand_checked_composition() -> None:
    keep_even, square, total = (PRIMITIVES_BY_NAME[n] for n in ("keep_even", "square", "sum"))
    x = [1, 2, 3, 4, -6]
    y = total.fn(square.fn(keep_even.fn(x, None), None), None)
    assert y == 4 + 16 + 36


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split"):
        synthetic_tasks("test", 1, seed=0)
    with pytest.raises(ValueError, match="single-stage"):
        synthetic_tasks("heldout", 1, seed=0, difficulty=1)
    with pytest.raises(ValueError, match="difficulty"):
        synthetic_tasks("train", 1, seed=0, difficulty=5)
    with pytest.raises(ValueError, match="n must be"):
        synthetic_tasks("train", -1, seed=0)
    with pytest.raises(TypeError, match="seed"):
        synthetic_tasks("train", 1, seed="0")  # type: ignore[arg-type]
