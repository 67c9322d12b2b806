"""Small statistics for reports on pass/fail outcomes: a binomial confidence interval and an exact paired test.

Benchmarks here have a few hundred tasks, so a pass rate is only known to a few points; these functions say how
many, and whether two models evaluated on the same tasks differ by more than chance.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

Z95 = 1.959963984540054  # the standard normal quantile for a two-sided 95% interval


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``.

    Unlike the normal (Wald) interval it stays inside [0, 1] and does not collapse to a point at 0 or n
    successes, which matters for the small pass rates of small models.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # clamp rounding noise at the ends (0 or n successes give exactly 0 or 1 in exact arithmetic)
    return max(0.0, center - half), min(1.0, center + half)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: under the null the discordant pairs split Binomial(b + c, 1/2).

    Only the tasks exactly one model solves carry information about which is better; the p-value is twice the
    smaller tail, capped at 1 (the usual doubling convention for a symmetric null).
    """
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts must be >= 0, got {only_a}, {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_counts(a: Mapping[Hashable, bool], b: Mapping[Hashable, bool]) -> dict[str, int]:
    """Counts over the keys both outcome maps share: passed by both, only by ``a``, only by ``b``, neither;
    ``unpaired`` is how many keys only one of them has (left out of the four counts)."""
    shared = a.keys() & b.keys()
    name = {(True, True): "both", (True, False): "only_a", (False, True): "only_b", (False, False): "neither"}
    counts = dict.fromkeys(name.values(), 0)
    for key in shared:
        counts[name[(bool(a[key]), bool(b[key]))]] += 1
    counts["unpaired"] = len(a.keys() ^ b.keys())
    return counts
