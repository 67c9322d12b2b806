"""The unbiased pass@k estimator (Chen et al., 2021) and its mean over a benchmark.

For a task with ``n`` samples of which ``c`` pass, pass@k = 1 − C(n−c, k) / C(n, k): the probability that
a random size-k subset of the samples contains at least one passing sample. The ratio of binomials is
computed as the product ∏_{i=n−c+1}^{n} (1 − k/i), which never forms huge binomial coefficients.

k > n has no unbiased estimate; like EvalPlus (which omits such k) we refuse it: `pass_at_k` raises and
`mean_pass_at_k` raises naming the first task with too few samples.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task: ``n`` samples, ``c`` correct, ``1 <= k <= n``."""
    _check_int("n", n, 1)
    _check_int("c", c, 0)
    _check_int("k", k, 1)
    if c > n:
        raise ValueError(f"c (correct samples) cannot exceed n (samples): c={c}, n={n}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per task, got n={n}")
    if n - c < k:
        return 1.0  # every size-k subset contains a passing sample
    fail_all = 1.0
    for i in range(n - c + 1, n + 1):
        fail_all *= 1.0 - k / i
    return 1.0 - fail_all


def mean_pass_at_k(counts: Mapping[Hashable, tuple[int, int]], k: int) -> float:
    """Mean of `pass_at_k` over tasks; ``counts`` maps task_id -> (n, c)."""
    if not isinstance(counts, Mapping):
        raise TypeError(f"counts must be a mapping task_id -> (n, c), got {type(counts).__name__}")
    if not counts:
        raise ValueError("counts is empty: pass@k of no tasks is undefined")
    total = 0.0
    for task_id, pair in counts.items():
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"counts[{task_id!r}] must be a pair (n, c), got {pair!r}")
        n, c = pair
        try:
            total += pass_at_k(n, c, k)
        except (TypeError, ValueError) as e:
            raise type(e)(f"task {task_id!r}: {e}") from None
    return total / len(counts)
