"""``unmask train [MODEL]``: masked-diffusion training (pretrain, AR adaptation, SFT), flags from ``TrainConfig``.

MODEL, when given, is the model to start from: the same as ``--init-from MODEL`` (fine-tuning, SFT, AR
adaptation); without it a fresh model of ``--preset`` is trained. Settings: flags > ``--config FILE`` > the
resumed run's ``run_config.json``.
"""

from __future__ import annotations

import argparse

from unmask.commands.common import add_run_arguments, print_run_summary, run_settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    from unmask.train_config import TrainConfig

    add_run_arguments(p, TrainConfig, group="training (TrainConfig)",
                      start_help="start from this HF model directory (the same as --init-from; default: a fresh "
                                 "--preset model)")


def settings(args: argparse.Namespace) -> dict:
    from unmask.train_config import TrainConfig

    return run_settings(TrainConfig, args, start_field="init_from", saved="run_config.json")


def run(args: argparse.Namespace) -> int:
    from unmask.train import TrainConfig, train

    return print_run_summary(train(TrainConfig.from_dict(settings(args))), ("step", "loss", "val_loss", "tokens_per_s"))
