"""Decode-order analysis: AR-ness metrics (pure, here), plots (``analysis.plots``, needs matplotlib)
and terminal rendering (``analysis.terminal``, rich).

Only the pure metrics are imported here so ``import unmask.analysis`` never pulls in matplotlib.
"""

from unmask.analysis.arness import (
    DEFAULT_GLOBAL_KS,
    DEFAULT_LOCAL_KS,
    arness_profile,
    commit_steps,
    flatten_order,
    global_arness,
    local_arness,
    summarize,
)

__all__ = [
    "DEFAULT_GLOBAL_KS",
    "DEFAULT_LOCAL_KS",
    "arness_profile",
    "commit_steps",
    "flatten_order",
    "global_arness",
    "local_arness",
    "summarize",
]
