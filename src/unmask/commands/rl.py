"""``unmask rl MODEL``: coupled-GRPO (or diffu-GRPO / decoupled) RL with sandboxed code rewards, flags from
``RLConfig``. MODEL is the initial policy (``--model MODEL`` is the same)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from unmask.commands.common import CLIError, add_dataclass_arguments, dataclass_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    from unmask.rl.config import RLConfig

    p.add_argument("policy", nargs="?", metavar="MODEL", help="the initial policy: an HF model directory")
    add_dataclass_arguments(p, RLConfig, group="reinforcement learning (RLConfig)")


def settings(args: argparse.Namespace) -> dict:
    """Flags (MODEL = --model) over the resumed run's rl_config.json (with --resume)."""
    from unmask.rl.config import RLConfig

    values = dataclass_overrides(RLConfig, args)
    if args.policy is not None:
        if "model" in values:
            raise CLIError(f"the model is given twice: {args.policy!r} and --model {values['model']!r}")
        values["model"] = args.policy
    saved = Path(values.get("run_dir", RLConfig.run_dir)) / "rl_config.json"
    if values.get("resume") and saved.is_file():  # flags override the resumed run's settings
        values = {**json.loads(saved.read_text(encoding="utf-8")), **values}
    return values


def run(args: argparse.Namespace) -> int:
    from unmask.rl.config import RLConfig
    from unmask.rl.loop import rl

    result = rl(RLConfig.from_dict(settings(args)))
    last = result.history[-1] if result.history else {}
    summary = {k: last[k] for k in ("step", "reward_mean", "pass_rate", "kl", "eval_pass@1") if k in last}
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"run_dir": str(result.run_dir), **summary}))
    return 0
