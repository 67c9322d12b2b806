"""Tests for unmask.analysis.arness: hand-computed values, properties, and a naive re-implementation."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unmask.analysis.arness import (
    arness_profile,
    commit_steps,
    flatten_order,
    global_arness,
    local_arness,
    summarize,
)

# ---------------------------------------------------------------------------------------------------
# naive references, written differently from the module on purpose:
# local keeps an explicit history list with the virtual prompt commits prepended and compares windows;
# global simulates the masked set step by step and sorts it.
# ---------------------------------------------------------------------------------------------------


def naive_local(order: list[int], k: int) -> float:
    history = list(range(-k, 0))  # virtual prompt commits ..., -2, -1 (most recent last)
    hits = 0
    for p in order:
        window = history[-k:][::-1]  # the k most recent commits, most recent first
        if window == [p - j for j in range(1, k + 1)]:
            hits += 1
        history.append(p)
    return hits / len(order)


def naive_global(order: list[int], k: int, length: int) -> float:
    masked = set(range(length))
    hits = 0
    for p in order:
        if p in sorted(masked)[:k]:
            hits += 1
        masked.remove(p)
    return hits / len(order)


# ---------------------------------------------------------------------------------------------------
# hand-computed values
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 2, 5, 12])
def test_left_to_right_scores_one_for_every_k(length):
    order = list(range(length))
    for k in range(1, 10):
        assert local_arness(order, k) == 1.0
    for k in range(1, 5):
        assert global_arness(order, k) == 1.0


def test_right_to_left_local_zero_and_global_hand_value():
    # L=5, order 4,3,2,1,0. Before commit t the masked set is {0..5-t}; p_t=5-t is its largest, rank 5-t.
    # rank < k only for the last k commits -> global@k = k/5. No commit follows its left neighbour -> local 0.
    order = [4, 3, 2, 1, 0]
    for k in range(1, 10):
        assert local_arness(order, k) == 0.0
    for k in range(1, 6):
        assert global_arness(order, k) == pytest.approx(k / 5)
    assert global_arness(order, 9) == 1.0  # k beyond L: every masked set has < k elements


def test_single_position_is_both_directions():
    assert local_arness([0], 3) == 1.0 and global_arness([0], 1) == 1.0


def test_mixed_order_a():
    # order 2,0,1,3,4 (L=5)
    # local: t1 p=2, not position 0 -> no virtual run; t2 p=0 after 2 -> no; t3 p=1 after 0 -> run 1;
    #        t4 p=3 after 1 -> no; t5 p=4 after 3 -> run 1 (before that 1, not 2).  @1 = 2/5, @2 = 0.
    # global ranks in M: t1 2 in {0..4} -> 2; then 0,1,3,4 are each the leftmost mask -> 0.
    #        @1 = @2 = 4/5, @3 = 5/5.
    order = [2, 0, 1, 3, 4]
    assert local_arness(order, 1) == pytest.approx(2 / 5)
    assert local_arness(order, 2) == 0.0
    assert global_arness(order, 1) == pytest.approx(4 / 5)
    assert global_arness(order, 2) == pytest.approx(4 / 5)
    assert global_arness(order, 3) == 1.0


def test_mixed_order_b_from_parallel_steps():
    # steps [[1,0],[4],[2,3]] flatten (by position inside a step) to 0,1,4,2,3 (L=5)
    # local: t1 p=0 continues the virtual prompt run (inf); t2 p=1 after 0 (inf); t3 p=4 after 1 -> 0;
    #        t4 p=2 after 4 -> 0; t5 p=3 after 2, but 4 before that -> run 1.  @1 = 3/5, @2..@9 = 2/5.
    # global: t1 rank 0, t2 rank 0, t3 p=4 in M={2,3,4} rank 2, t4 p=2 in {2,3} rank 0, t5 rank 0.
    #        @1 = @2 = 4/5, @3 = 1.
    order = flatten_order([[1, 0], [4], [2, 3]])
    assert order == [0, 1, 4, 2, 3]
    assert local_arness(order, 1) == pytest.approx(3 / 5)
    for k in range(2, 10):
        assert local_arness(order, k) == pytest.approx(2 / 5)
    assert global_arness(order, 1) == pytest.approx(4 / 5)
    assert global_arness(order, 2) == pytest.approx(4 / 5)
    assert global_arness(order, 3) == 1.0


def test_mixed_order_c_two_halves():
    # order 3,4,5,0,1,2 (L=6): the right half left-to-right, then the left half.
    # local: t1 p=3 -> 0; t2 p=4 after 3 -> 1; t3 p=5 after 4,3 -> 2; t4 p=0 after 5 -> 0 (the virtual
    #        prompt run only counts while nothing else has been committed); t5 p=1 -> 1; t6 p=2 -> 2.
    #        @1 = 4/6, @2 = 2/6, @3 = 0.
    # global: t1 3 in {0..5} rank 3; t2 4 in {0,1,2,4,5} rank 3; t3 5 in {0,1,2,5} rank 3; t4..t6 rank 0.
    #        @1 = @2 = @3 = 3/6, @4 = 1.
    order = [3, 4, 5, 0, 1, 2]
    assert local_arness(order, 1) == pytest.approx(4 / 6)
    assert local_arness(order, 2) == pytest.approx(2 / 6)
    assert local_arness(order, 3) == 0.0
    for k in (1, 2, 3):
        assert global_arness(order, k) == pytest.approx(0.5)
    assert global_arness(order, 4) == 1.0


def test_mixed_order_d_partial_region():
    # order 0,2,3 in a region of length 5: positions 1 and 4 are never committed and stay masked.
    # local: t1 p=0 (inf); t2 p=2 after 0 -> 0; t3 p=3 after 2 -> 1.  @1 = 2/3, @2 = 1/3.
    # global: t1 rank 0; t2 p=2 in {1,2,3,4} rank 1; t3 p=3 in {1,3,4} rank 1.  @1 = 1/3, @2 = 1.
    order = [0, 2, 3]
    assert local_arness(order, 1) == pytest.approx(2 / 3)
    assert local_arness(order, 2) == pytest.approx(1 / 3)
    assert global_arness(order, 1, length=5) == pytest.approx(1 / 3)
    assert global_arness(order, 2, length=5) == 1.0
    assert global_arness(order, 1) == pytest.approx(1 / 3)  # default length 4 gives the same value


def test_profile_and_summary_hand_values():
    a, b = [2, 0, 1, 3, 4], [0, 1, 4, 2, 3]
    prof = arness_profile(a, ks_local=[1, 2], ks_global=[1, 3])
    assert prof == {"local": {1: pytest.approx(0.4), 2: 0.0}, "global": {1: pytest.approx(0.8), 3: 1.0}}
    summ = summarize([a, b], ks_local=[1, 2], ks_global=[1, 3])
    assert summ["n"] == 2
    assert summ["local"]["k"] == [1, 2]
    # local@1: 0.4 and 0.6 -> mean 0.5, population std 0.1; local@2: 0 and 0.4 -> 0.2, 0.2
    assert summ["local"]["mean"] == pytest.approx([0.5, 0.2])
    assert summ["local"]["std"] == pytest.approx([0.1, 0.2])
    # global@1: 0.8 both -> std 0; global@3: 1 both
    assert summ["global"]["mean"] == pytest.approx([0.8, 1.0])
    assert summ["global"]["std"] == pytest.approx([0.0, 0.0])
    assert json.loads(json.dumps(summ)) == summ  # JSON-ready as documented
    default = summarize([a])
    assert default["local"]["k"] == list(range(1, 10)) and default["global"]["k"] == [1, 2, 3, 4]


def test_flatten_orders_each_step_by_position():
    assert flatten_order([[0], [3, 1], [2]]) == [0, 1, 3, 2]
    assert flatten_order([[], [2, 0], [], [1]]) == [0, 2, 1]  # empty steps contribute nothing
    # a block committed in one step reads as left-to-right, not as a penalty for parallel decoding
    blocks = flatten_order([[3, 2, 1, 0], [7, 5, 6, 4]])
    assert local_arness(blocks, 9) == 1.0 and global_arness(blocks, 1) == 1.0
    # M_{t-1} excludes earlier commits of the same step: with [[2, 0]] the 2 (second in the flattened
    # order) sees M = {1, 2}, rank 1, so global@1 = 1/2 (with the step-level mask it would see {0,1,2}).
    assert global_arness(flatten_order([[2, 0]]), 1, length=3) == pytest.approx(1 / 2)


def test_commit_steps_inverts_a_trace():
    assert commit_steps([[0], [3, 1], [2]]) == [0, 1, 2, 1]
    assert commit_steps([[1], [], [0]], length=4) == [2, 0, None, None]
    with pytest.raises(ValueError, match="outside"):
        commit_steps([[5]], length=3)


def test_accepts_numpy_integers():
    order = np.array([2, 0, 1, 3, 4])
    assert local_arness(order, 1) == pytest.approx(2 / 5)
    assert flatten_order([np.array([1, 0])]) == [0, 1]


# ---------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "error", "pattern"),
    [
        ([0, 1, 1], ValueError, "position 1 is committed twice"),
        ([0, -1], ValueError, "must be >= 0"),
        ([], ValueError, "empty"),
        ([0, 1.0], TypeError, "integers"),
        ([True, 0], TypeError, "bool"),
        ("012", TypeError, "sequence"),
        (5, TypeError, "sequence"),
    ],
)
def test_bad_orders_raise_clear_errors(order, error, pattern):
    with pytest.raises(error, match=pattern):
        local_arness(order, 1)
    with pytest.raises(error, match=pattern):
        global_arness(order, 1)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="k must be >= 1"):
        local_arness([0, 1], 0)
    with pytest.raises(TypeError, match="k must be an int"):
        global_arness([0, 1], 1.5)
    with pytest.raises(TypeError, match="k must be an int"):
        global_arness([0, 1], True)
    with pytest.raises(ValueError, match="outside a generated region of length 2"):
        global_arness([0, 2], 1, length=2)
    with pytest.raises(ValueError, match="ks_local is empty"):
        arness_profile([0], ks_local=[])
    with pytest.raises(ValueError, match="orders is empty"):
        summarize([])
    with pytest.raises(ValueError, match=r"orders\[1\].*committed twice"):
        summarize([[0, 1], [1, 1]])
    with pytest.raises(ValueError, match=r"steps\[1\].*>= 0"):
        flatten_order([[0], [-3]])
    with pytest.raises(ValueError, match="committed twice"):
        flatten_order([[0, 1], [1]])
    with pytest.raises(ValueError, match="empty"):
        flatten_order([[], []])
    with pytest.raises(TypeError, match=r"steps\[0\]"):
        flatten_order([3])


# ---------------------------------------------------------------------------------------------------
# properties over random orders
# ---------------------------------------------------------------------------------------------------


@st.composite
def permutations(draw, max_len: int = 24):
    length = draw(st.integers(1, max_len))
    return draw(st.permutations(list(range(length))))


@st.composite
def partial_orders(draw, max_len: int = 24):
    """A decode that may skip positions: distinct positions below a region length, in any order."""
    length = draw(st.integers(1, max_len))
    order = draw(st.lists(st.integers(0, length - 1), min_size=1, max_size=length, unique=True))
    return order, length


@settings(max_examples=150, deadline=None)
@given(permutations())
def test_monotone_in_k_and_bounded(order):
    length = len(order)
    local = [local_arness(order, k) for k in range(1, length + 2)]
    glob = [global_arness(order, k) for k in range(1, length + 2)]
    assert all(0.0 <= v <= 1.0 for v in local + glob)
    assert all(a >= b for a, b in zip(local, local[1:]))  # local non-increasing in k
    assert all(a <= b for a, b in zip(glob, glob[1:]))  # global non-decreasing in k
    assert global_arness(order, length) == 1.0  # every masked set has at most L elements


@settings(max_examples=150, deadline=None)
@given(partial_orders())
def test_matches_naive_reference(case):
    order, length = case
    for k in range(1, length + 2):
        assert local_arness(order, k) == pytest.approx(naive_local(order, k))
        assert global_arness(order, k, length=length) == pytest.approx(naive_global(order, k, length))


@settings(max_examples=100, deadline=None)
@given(partial_orders(), st.integers(0, 10))
def test_region_length_beyond_the_last_commit_never_changes_global(case, extra):
    order, length = case
    for k in (1, 2, 3):
        assert global_arness(order, k, length=length + extra) == global_arness(order, k)


@settings(max_examples=100, deadline=None)
@given(partial_orders())
def test_score_one_exactly_for_left_to_right(case):
    order, _ = case
    is_l2r = order == list(range(len(order)))
    assert (local_arness(order, 1) == 1.0) == is_l2r
    assert (global_arness(order, 1) == 1.0) == is_l2r


@settings(max_examples=100, deadline=None)
@given(permutations(), st.integers(0, 2**32 - 1))
def test_steps_flatten_independently_of_order_within_a_step(order, seed):
    rng = random.Random(seed)
    # cut the permutation into random steps, then shuffle inside each step
    steps, i = [], 0
    while i < len(order):
        size = rng.randint(0, 4)  # 0 gives an empty step
        steps.append(list(order[i : i + size]))
        i += size
    shuffled = [rng.sample(step, len(step)) for step in steps]
    flat = flatten_order(shuffled)
    assert flat == [p for step in steps for p in sorted(step)]
    assert flat == flatten_order(steps)
    assert sorted(flat) == sorted(order)
    positions = commit_steps(shuffled)
    for s, step in enumerate(steps):
        assert all(positions[p] == s for p in step)


@settings(max_examples=60, deadline=None)
@given(st.lists(permutations(12), min_size=1, max_size=6))
def test_profile_and_summary_agree_with_single_calls(orders):
    summ = summarize(orders)
    for idx, k in enumerate(range(1, 10)):
        values = [local_arness(o, k) for o in orders]
        assert summ["local"]["mean"][idx] == pytest.approx(sum(values) / len(values))
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        assert summ["local"]["std"][idx] == pytest.approx(std, abs=1e-12)
    for idx, k in enumerate(range(1, 5)):
        values = [global_arness(o, k) for o in orders]
        assert summ["global"]["mean"][idx] == pytest.approx(sum(values) / len(values))
    prof = arness_profile(orders[0])
    assert prof["local"] == {k: local_arness(orders[0], k) for k in range(1, 10)}
    assert prof["global"] == {k: global_arness(orders[0], k) for k in range(1, 5)}


def test_long_decode_is_fast_enough():
    # a 2048-token decode (DiffuCoder's SFT length) in random order: the Fenwick tree keeps this well under a second
    rng = random.Random(0)
    order = list(range(2048))
    rng.shuffle(order)
    prof = arness_profile(order)
    assert prof["global"][4] == pytest.approx(naive_global(order, 4, 2048))
