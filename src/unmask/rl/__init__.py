"""Reinforcement learning for dLLMs: GRPO math (advantages, coupled masks, log-prob estimators, clipped loss).

:mod:`unmask.rl.grpo` holds the pure tensor math, :mod:`unmask.rl.rewards` the reward registry (sandboxed
code tests), :mod:`unmask.rl.config` the run settings (``RLConfig``), :mod:`unmask.rl.loop` the GRPO loop
behind ``unmask rl`` (imported on demand: it pulls in the sampler, the evaluator and the training helpers).
"""

_SUBMODULES = ("config", "grpo", "loop", "rewards")


def __getattr__(name: str):
    # The GRPO math is the package's public surface (``unmask.rl.group_advantages``), loaded on first use:
    # importing ``unmask.rl.config`` (what ``unmask rl --help`` reads) must not pull in torch.
    if name.startswith("__") or name in _SUBMODULES:
        raise AttributeError(f"module 'unmask.rl' has no attribute {name!r}")
    from unmask.rl import grpo

    if name in grpo.__all__:
        return getattr(grpo, name)
    raise AttributeError(f"module 'unmask.rl' has no attribute {name!r}")
