"""Reinforcement learning for dLLMs: GRPO math (advantages, coupled masks, log-prob estimators, clipped loss).

:mod:`unmask.rl.grpo` holds the pure tensor math, :mod:`unmask.rl.rewards` the reward registry (sandboxed
code tests), :mod:`unmask.rl.loop` the GRPO loop behind ``unmask rl`` (imported on demand: it pulls in the
sampler, the evaluator and the training helpers).
"""

from unmask.rl.grpo import *  # noqa: F403 — the pure math is the package's public surface
from unmask.rl.grpo import __all__  # noqa: F401
