"""``unmask rl MODEL``: coupled-GRPO (or diffu-GRPO / decoupled) RL with sandboxed code rewards, flags from
``RLConfig``. MODEL is the initial policy (``--model MODEL`` is the same). Settings: flags > ``--config FILE`` >
the resumed run's ``rl_config.json``."""

from __future__ import annotations

import argparse

from unmask.commands.common import add_run_arguments, print_run_summary, run_settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    from unmask.rl.config import RLConfig

    add_run_arguments(p, RLConfig, group="reinforcement learning (RLConfig)",
                      start_help="the initial policy: an HF model directory")


def settings(args: argparse.Namespace) -> dict:
    from unmask.rl.config import RLConfig

    return run_settings(RLConfig, args, start_field="model", saved="rl_config.json")


def run(args: argparse.Namespace) -> int:
    from unmask.rl.config import RLConfig
    from unmask.rl.loop import rl

    result = rl(RLConfig.from_dict(settings(args)))
    return print_run_summary(result, ("step", "reward_mean", "pass_rate", "kl", "eval_pass@1"))
