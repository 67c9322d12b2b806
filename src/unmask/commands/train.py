"""``unmask train [MODEL]``: masked-diffusion training (pretrain, AR adaptation, SFT), flags from ``TrainConfig``.

MODEL, when given, is the model to start from: the same as ``--init-from MODEL`` (fine-tuning, SFT, AR
adaptation); without it a fresh model of ``--preset`` is trained.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from unmask.commands.common import CLIError, add_dataclass_arguments, dataclass_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    from unmask.train_config import TrainConfig

    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="start from this HF model directory (the same as --init-from; default: a fresh --preset model)")
    p.add_argument("--config", metavar="FILE", help="JSON/YAML file of TrainConfig fields; flags override")
    add_dataclass_arguments(p, TrainConfig, group="training (TrainConfig)")


def _read_config_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise CLIError(f"cannot read config file {path}: {err.strerror}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise CLIError("YAML configs need pyyaml (pip install pyyaml); or use JSON") from None
        loaded = yaml.safe_load(text)
    else:
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as err:
            raise CLIError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(loaded, dict):
        raise CLIError(f"{path}: the config must be a mapping of field names to values")
    return loaded


def settings(args: argparse.Namespace) -> dict:
    """Config values in order of precedence: flags (MODEL = --init-from) > --config FILE > the run's
    run_config.json (--resume)."""
    from unmask.train_config import TrainConfig

    flags = dataclass_overrides(TrainConfig, args)
    if args.model is not None:
        if "init_from" in flags:
            raise CLIError(f"the model is given twice: {args.model!r} and --init-from {flags['init_from']!r}")
        flags["init_from"] = args.model
    values: dict = _read_config_file(Path(args.config)) if args.config else {}
    run_dir = flags.get("run_dir") or values.get("run_dir")
    if flags.get("resume") and run_dir and (Path(run_dir) / "run_config.json").is_file():
        saved = json.loads((Path(run_dir) / "run_config.json").read_text(encoding="utf-8"))
        values = {**saved, **values}
    return {**values, **flags}


def run(args: argparse.Namespace) -> int:
    from unmask.train import TrainConfig, train

    config = TrainConfig.from_dict(settings(args))
    result = train(config)
    last = result.history[-1] if result.history else {}
    summary = {k: last[k] for k in ("step", "loss", "val_loss", "tokens_per_s") if k in last}
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"run_dir": str(result.run_dir), **summary}))
    return 0
