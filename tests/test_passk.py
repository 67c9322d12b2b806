"""pass@k: hand-computed values, an exact-fraction reference, properties, and bad input."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unmask.passk import mean_pass_at_k, pass_at_k


def exact(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(comb(n - c, k), comb(n, k))


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (10, 0, 3, 0.0),
        (10, 10, 3, 1.0),
        (4, 1, 1, 0.25),  # pass@1 = c/n
        (4, 2, 3, 1.0),  # n - c < k: every 3-subset holds a pass
        (200, 1, 100, 0.5),
    ],
)
def test_hand_computed_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_matches_exact_binomial_formula(nck: tuple[int, int, int]) -> None:
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(float(exact(n, c, k)), abs=1e-12)


@given(st.integers(2, 40).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(0, n - 1), st.integers(1, n - 1))))
def test_monotone_in_c_and_k(nck: tuple[int, int, int]) -> None:
    n, c, k = nck
    assert pass_at_k(n, c + 1, k) >= pass_at_k(n, c, k) - 1e-12
    assert pass_at_k(n, c, k + 1) >= pass_at_k(n, c, k) - 1e-12


def test_stable_for_large_n() -> None:
    # C(2000, 100) overflows float; the product form stays accurate.
    assert pass_at_k(2000, 37, 100) == pytest.approx(float(exact(2000, 37, 100)), rel=1e-10)
    assert pass_at_k(100_000, 1, 10) == pytest.approx(1e-4, rel=1e-9)


def test_mean_over_tasks() -> None:
    counts = {"a": (5, 2), "b": (5, 0), "c": (5, 5)}
    assert mean_pass_at_k(counts, 2) == pytest.approx((0.7 + 0.0 + 1.0) / 3)
    assert mean_pass_at_k(counts, 1) == pytest.approx((0.4 + 0 + 1) / 3)


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((5, 2, 6), ValueError, "at least 6 samples"),
        ((5, 6, 1), ValueError, "cannot exceed"),
        ((0, 0, 1), ValueError, "n must be >= 1"),
        ((5, -1, 1), ValueError, "c must be >= 0"),
        ((5, 1, 0), ValueError, "k must be >= 1"),
        ((5.0, 1, 1), TypeError, "n must be an int"),
        ((5, True, 1), TypeError, "c must be an int"),
    ],
)
def test_bad_input(args: tuple, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        pass_at_k(*args)


def test_mean_bad_input_names_the_task() -> None:
    with pytest.raises(ValueError, match="'t2'.*at least 10"):
        mean_pass_at_k({"t1": (20, 3), "t2": (5, 1)}, 10)
    with pytest.raises(ValueError, match="empty"):
        mean_pass_at_k({}, 1)
    with pytest.raises(ValueError, match="pair"):
        mean_pass_at_k({"t": (5,)}, 1)
    with pytest.raises(TypeError, match="mapping"):
        mean_pass_at_k([(5, 1)], 1)  # type: ignore[arg-type]
