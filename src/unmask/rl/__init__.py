"""Reinforcement learning for dLLMs: GRPO math (advantages, coupled masks, log-prob estimators, clipped loss).

:mod:`unmask.rl.grpo` holds the pure tensor math, :mod:`unmask.rl.rewards` the reward registry (sandboxed
code tests), :mod:`unmask.rl.loop` the GRPO loop behind ``unmask rl`` (imported on demand: it pulls in the
sampler, the evaluator and the training helpers).
"""

from unmask.rl.grpo import (
    ESTIMATORS,
    LogprobPasses,
    build_logprob_passes,
    clipped_policy_loss,
    combine_pass_logprobs,
    coupled_masks,
    decoupled_masks,
    diffu_grpo_mask,
    full_mask,
    group_advantages,
    mask_seed,
    sample_coupled_t,
    seeded_generator,
    sequence_logprob_estimates,
)

__all__ = [
    "ESTIMATORS",
    "LogprobPasses",
    "build_logprob_passes",
    "clipped_policy_loss",
    "combine_pass_logprobs",
    "coupled_masks",
    "decoupled_masks",
    "diffu_grpo_mask",
    "full_mask",
    "group_advantages",
    "mask_seed",
    "sample_coupled_t",
    "seeded_generator",
    "sequence_logprob_estimates",
]
