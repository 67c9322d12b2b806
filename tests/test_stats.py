"""Wilson intervals and the exact McNemar test against hand-computed values."""

from __future__ import annotations

import pytest

from unmask.stats import Z95, mcnemar_exact, paired_counts, wilson_interval


def test_wilson_interval_hand_values():
    # 10/200: p = .05, z² = 3.841459, centre (.05 + .0096036) / 1.0192073 = .058480,
    # half 1.959964 * sqrt(.05 * .95 / 200 + 3.841459 / 160000) / 1.0192073 = .031098
    lo, hi = wilson_interval(10, 200)
    assert lo == pytest.approx(0.02738, abs=5e-6) and hi == pytest.approx(0.08958, abs=5e-6)
    # 0 successes: the interval is [0, z² / (n + z²)], not the degenerate [0, 0] of the normal approximation
    assert wilson_interval(0, 20) == (0.0, pytest.approx(Z95**2 / (20 + Z95**2)))
    assert wilson_interval(20, 20) == (pytest.approx(20 / (20 + Z95**2)), 1.0)
    # a wider z widens it
    assert wilson_interval(10, 200, z=2.576)[0] < lo
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_mcnemar_exact_hand_values():
    assert mcnemar_exact(1, 6) == 2 * (1 + 7) / 2**7 == 0.125  # discordant 7, tail P(X <= 1)
    assert mcnemar_exact(6, 1) == 0.125  # symmetric in the two models
    assert mcnemar_exact(2, 10) == 2 * (1 + 12 + 66) / 2**12  # 0.0386: significant at 5%
    assert mcnemar_exact(0, 5) == 2 / 2**5
    assert mcnemar_exact(3, 3) == 1.0  # doubled tail 84/64 capped at 1
    assert mcnemar_exact(0, 0) == 1.0  # no discordant task: no evidence either way
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_paired_counts_over_shared_keys():
    a = {"t1": True, "t2": True, "t3": False, "t4": False, "t5": True}
    b = {"t1": True, "t2": False, "t3": True, "t4": False, "t6": True}
    assert paired_counts(a, b) == {"both": 1, "only_a": 1, "only_b": 1, "neither": 1, "unpaired": 2}
