"""Reinforcement learning for dLLMs: GRPO math (advantages, coupled masks, log-prob estimators, clipped loss).

Rewards and the RL loop live in sibling modules; :mod:`unmask.rl.grpo` holds the pure tensor math.
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
