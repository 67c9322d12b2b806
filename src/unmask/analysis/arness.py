"""AR-ness: how autoregressive (left-to-right) a diffusion decode's commit order is (docs/arness.md).

A sampler's trace gives, per step, the canvas positions committed at that step, relative to the start
of the generated region (0-based), e.g. ``[[0], [3, 1], [2]]``. This module turns such traces into
the two metrics of the DiffuCoder paper and aggregates them over many samples. Plain Python and
numpy only, no torch, so it runs wherever a trace file can be read.

Conventions (each one chosen so that a pure left-to-right decode scores exactly 1 on every metric):

* **Flattening.** Several positions committed in one step are ordered by position
  (:func:`flatten_order`), giving one position per commit, ``p_1 … p_T``.
* **Masked set.** ``M_{t-1}`` is the set of positions still masked just before commit ``t`` of the
  flattened order — it *excludes* the commits of the same step that were placed earlier in the
  flattened order. The flattened order is thus read as an ordinary one-at-a-time decode. Why: it is
  the only reading under which the paper's per-commit definitions apply unchanged, and it keeps a
  block of adjacent positions committed together (``[[0, 1, 2]]``) fully left-to-right instead of
  penalising parallel decoding for committing several tokens at once.
* **Region start.** The prompt (or, for infilling, whatever precedes the region) is treated as a
  run of virtual commits at positions ``…, -3, -2, -1`` made before step 1. So a commit whose window
  of ``k`` predecessors reaches before step 1 counts for local AR-ness@k exactly when everything
  committed so far is the contiguous prefix ``0, 1, …, p_t`` in order. With this rule every metric has
  the fixed denominator ``T`` (all commits), local AR-ness is non-increasing in ``k`` by construction,
  left-to-right scores 1 for every ``k`` and right-to-left scores 0 (for ``L ≥ 2``).
* **Uncommitted positions.** An order need not cover ``0..L-1`` (a decode stopped early): positions
  never committed stay in ``M`` for every step.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

DEFAULT_LOCAL_KS: tuple[int, ...] = tuple(range(1, 10))  # the paper plots local AR-ness@1..9
DEFAULT_GLOBAL_KS: tuple[int, ...] = tuple(range(1, 5))  # and global AR-ness@1..4


# ---------------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------------


def _as_position(value: Any, where: str) -> int:
    """One position as a plain int; bools, floats and strings are refused with a message naming ``where``."""
    if isinstance(value, bool):
        raise TypeError(f"{where}: positions must be integers, got a bool ({value!r})")
    try:
        position = operator.index(value)  # accepts int, numpy integers, 0-d integer tensors
    except TypeError:
        kind = type(value).__name__
        raise TypeError(f"{where}: positions must be integers, got {kind} ({value!r})") from None
    if position < 0:
        raise ValueError(
            f"{where}: positions are relative to the generated region and must be >= 0, got {position}"
        )
    return position


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int >= 1, got {type(k).__name__} ({k!r})")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k


def _check_order(order: Any) -> list[int]:
    """Validate a flattened decode order: non-empty, integer positions >= 0, no position twice."""
    if isinstance(order, (str, bytes)) or not isinstance(order, Iterable):
        raise TypeError(f"order must be a sequence of integer positions, got {type(order).__name__}")
    positions = [_as_position(p, f"order[{i}]") for i, p in enumerate(order)]
    if not positions:
        raise ValueError("order is empty: a decode must commit at least one position")
    seen: set[int] = set()
    for i, p in enumerate(positions):
        if p in seen:
            raise ValueError(f"order[{i}]: position {p} is committed twice (a decode never repeats one)")
        seen.add(p)
    return positions


def _check_length(positions: list[int], length: int | None) -> int:
    if length is None:
        return max(positions) + 1
    if isinstance(length, bool) or not isinstance(length, int):
        raise TypeError(f"length must be an int or None, got {type(length).__name__}")
    if max(positions) >= length:
        raise ValueError(f"position {max(positions)} is outside a generated region of length {length}")
    return length


def _check_ks(ks: Iterable[int], name: str) -> list[int]:
    checked = [_check_k(k) for k in ks]
    if not checked:
        raise ValueError(f"{name} is empty: give at least one k")
    return checked


# ---------------------------------------------------------------------------------------------------
# the order
# ---------------------------------------------------------------------------------------------------


def flatten_order(steps: Sequence[Sequence[int]]) -> list[int]:
    """Per-step commits -> one position per commit; several in one step are ordered by position.

    ``[[0], [3, 1], [2]] -> [0, 1, 3, 2]``. Steps that commit nothing are allowed (the ``origin``
    sampler can commit zero positions in a step) and contribute nothing.

    On the flattened order, ``M_{t-1}`` is the set of positions still masked just before commit
    ``t``: it excludes the commits of the same step that precede ``t`` in the flattened order. So
    ``[[2, 0]]`` reads as "0, then 2 with M = {1, 2}", and a block committed in one step counts as
    left-to-right (the module docstring gives the reasons).
    """
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
        raise TypeError(f"steps must be a sequence of lists of positions, got {type(steps).__name__}")
    flat: list[int] = []
    for s, step in enumerate(steps):
        if isinstance(step, (str, bytes)) or not isinstance(step, Iterable):
            raise TypeError(f"steps[{s}] must be a sequence of positions, got {type(step).__name__}")
        flat.extend(sorted(_as_position(p, f"steps[{s}]") for p in step))
    return _check_order(flat)


def commit_steps(steps: Sequence[Sequence[int]], length: int | None = None) -> list[int | None]:
    """Position -> index of the step that committed it (``None`` where never committed).

    The inverse view of a trace, used to colour tokens by when they were decoded. ``length`` defaults
    to one past the largest committed position.
    """
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
        raise TypeError(f"steps must be a sequence of lists of positions, got {type(steps).__name__}")
    steps = [list(step) if isinstance(step, Iterable) else step for step in steps]  # iterate twice safely
    flat = flatten_order(steps)  # validates types, signs and duplicates
    length = _check_length(flat, length)
    result: list[int | None] = [None] * length
    for s, step in enumerate(steps):
        for p in step:
            result[operator.index(p)] = s
    return result


# ---------------------------------------------------------------------------------------------------
# the metrics
# ---------------------------------------------------------------------------------------------------


def _run_lengths(positions: list[int]) -> list[float]:
    """For each commit t, how many immediately preceding commits are p_t-1, p_t-2, … in that order.

    ``math.inf`` when the run reaches the region start (the virtual prompt commits continue it
    forever). local AR-ness@k counts commits with run length >= k, so one pass serves every k.
    """
    runs: list[float] = []
    for t, p in enumerate(positions):
        if t == 0:
            runs.append(math.inf if p == 0 else 0.0)
        elif positions[t - 1] == p - 1:
            runs.append(runs[t - 1] + 1)
        else:
            runs.append(0.0)
    return runs


def local_arness(order: Sequence[int], k: int) -> float:
    """Local AR-ness@k: fraction of commits that continue a strictly consecutive left-to-right run.

    Commit ``t`` counts when the ``k`` commits before it are exactly ``p_t-1, …, p_t-k`` (most recent
    first), with the region start acting as virtual predecessors ``-1, -2, …`` (module docstring).
    Denominator: all ``T`` commits. Left-to-right -> 1.0 for every k; right-to-left -> 0.0 (L >= 2).
    """
    k = _check_k(k)
    positions = _check_order(order)
    runs = _run_lengths(positions)
    return sum(1 for r in runs if r >= k) / len(positions)


class _Fenwick:
    """Prefix counts over positions 0..n-1 with point updates, O(log n) each (a binary indexed tree)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.tree = [0] * (n + 1)
        # all positions start masked (count 1 each); build in O(n)
        for i in range(1, n + 1):
            self.tree[i] += 1
            parent = i + (i & -i)
            if parent <= n:
                self.tree[parent] += self.tree[i]

    def add(self, index: int, delta: int) -> None:
        i = index + 1
        while i <= self.n:
            self.tree[i] += delta
            i += i & -i

    def count_below(self, index: int) -> int:
        """How many still-masked positions are < ``index``."""
        total, i = 0, index
        while i > 0:
            total += self.tree[i]
            i -= i & -i
        return total


def _mask_ranks(positions: list[int], length: int) -> list[int]:
    """For each commit t, the rank of p_t in M_{t-1}: how many still-masked positions lie left of it."""
    masked = _Fenwick(length)
    ranks: list[int] = []
    for p in positions:
        ranks.append(masked.count_below(p))
        masked.add(p, -1)  # p leaves M once committed
    return ranks


def global_arness(order: Sequence[int], k: int, length: int | None = None) -> float:
    """Global AR-ness@k: fraction of commits where p_t is among the k smallest positions of M_{t-1}.

    ``length`` is the size of the generated region; it defaults to one past the largest committed
    position. Positions never committed stay masked throughout. Masked positions to the right of every
    commit can never be smaller than a p_t, so a larger ``length`` validates more loosely but never
    changes the value. Denominator: all ``T`` commits. Left-to-right -> 1.0; right-to-left over a
    full region of length L -> min(k, L) / L (only the last k commits are among the k leftmost masks).
    """
    k = _check_k(k)
    positions = _check_order(order)
    length = _check_length(positions, length)
    ranks = _mask_ranks(positions, length)
    return sum(1 for r in ranks if r < k) / len(positions)


def arness_profile(
    order: Sequence[int],
    ks_local: Iterable[int] = DEFAULT_LOCAL_KS,
    ks_global: Iterable[int] = DEFAULT_GLOBAL_KS,
    length: int | None = None,
) -> dict[str, dict[int, float]]:
    """Both metrics of one decode for several k: ``{"local": {k: value}, "global": {k: value}}``.

    Computes the run lengths and mask ranks once, so a profile costs one pass, not one per k.
    """
    ks_l = _check_ks(ks_local, "ks_local")
    ks_g = _check_ks(ks_global, "ks_global")
    positions = _check_order(order)
    length = _check_length(positions, length)
    runs = _run_lengths(positions)
    ranks = _mask_ranks(positions, length)
    n = len(positions)
    return {
        "local": {k: sum(1 for r in runs if r >= k) / n for k in ks_l},
        "global": {k: sum(1 for r in ranks if r < k) / n for k in ks_g},
    }


def summarize(
    orders: Iterable[Sequence[int]],
    ks_local: Iterable[int] = DEFAULT_LOCAL_KS,
    ks_global: Iterable[int] = DEFAULT_GLOBAL_KS,
) -> dict[str, Any]:
    """Mean and standard deviation of each metric over many decodes (each decode weighs the same).

    Returns a JSON-ready dict with list values so it round-trips through ``json`` unchanged::

        {"n": N,
         "local":  {"k": [1, …, 9], "mean": [...], "std": [...]},
         "global": {"k": [1, …, 4], "mean": [...], "std": [...]}}

    ``std`` is the population standard deviation (ddof=0), defined for a single sample (0.0).
    Orders may have different lengths; each uses its own region (max position + 1).
    """
    ks_l = _check_ks(ks_local, "ks_local")
    ks_g = _check_ks(ks_global, "ks_global")
    if isinstance(orders, (str, bytes)) or not isinstance(orders, Iterable):
        raise TypeError(f"orders must be a sequence of decode orders, got {type(orders).__name__}")
    profiles = []
    for i, order in enumerate(orders):
        try:
            profiles.append(arness_profile(order, ks_l, ks_g))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"orders[{i}]: {exc}") from None
    if not profiles:
        raise ValueError("orders is empty: summarize needs at least one decode order")
    summary: dict[str, Any] = {"n": len(profiles)}
    for kind, ks in (("local", ks_l), ("global", ks_g)):
        values = np.array([[prof[kind][k] for k in ks] for prof in profiles], dtype=np.float64)  # (N, K)
        summary[kind] = {
            "k": list(ks),
            "mean": [float(v) for v in values.mean(axis=0)],
            "std": [float(v) for v in values.std(axis=0)],
        }
    return summary
