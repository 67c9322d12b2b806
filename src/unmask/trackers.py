"""Experiment trackers beside ``metrics.jsonl``: ``--report-to tensorboard,wandb`` for ``unmask train`` and ``rl``.

``metrics.jsonl`` stays the run's record; a tracker gets a copy of every record written there, each number
as a scalar named by its key at the record's ``step`` (``None`` and text are skipped). TensorBoard events go to
``run_dir/tensorboard`` (``tensorboard --logdir RUN_DIR``); a resumed run purges the events after its checkpoint,
as it truncates ``metrics.jsonl``. Weights & Biases runs offline (``WANDB_MODE=offline``, files under
``run_dir/wandb``) unless the user set ``WANDB_MODE`` themselves: nothing goes over the network by default.

Imports nothing heavy at module level: the configs validate ``report_to`` with ``parse`` while ``--help`` runs.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from unmask.errors import ConfigError

TRACKERS = ("tensorboard", "wandb")


def parse(report_to: str) -> tuple[str, ...]:
    """The trackers of a ``report_to`` comma list (``none`` or empty: no tracker)."""
    names = tuple(dict.fromkeys(n.strip() for n in str(report_to).split(",") if n.strip()))
    if names == ("none",):
        return ()
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"report_to: unknown tracker {name!r}; choose from {', '.join(TRACKERS)} (or none)")
    return names


def check_installed(report_to: str) -> None:
    """Fail before a run loads anything when a tracker's package is missing (a look-up, not an import)."""
    for name in parse(report_to):
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"--report-to {name} needs `pip install {name}`")


class Trackers:
    """The open trackers of a run (none: every call does nothing). Open them on rank 0 only."""

    def __init__(self, writers: list[Any]) -> None:
        self.writers = writers

    @classmethod
    def open(cls, report_to: str, run_dir: Path, config: dict[str, Any], *, resumed_at: int | None) -> Trackers:
        """Start each tracker of ``report_to`` for the run in ``run_dir``; ``resumed_at``: the checkpoint's step."""
        check_installed(report_to)
        kinds = {"tensorboard": _TensorBoard, "wandb": _WandB}
        return cls([kinds[name](run_dir, config, resumed_at) for name in parse(report_to)])

    def log(self, record: dict[str, Any]) -> None:
        """Every number of a metrics record, at its ``step``."""
        step = int(record["step"])
        scalars = {k: float(v) for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for writer in self.writers:
            writer.log(scalars, step)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []


class _TensorBoard:
    def __init__(self, run_dir: Path, config: dict[str, Any], resumed_at: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides the events a killed run wrote after the checkpoint it resumes from
        self.writer = SummaryWriter(str(run_dir / "tensorboard"),
                                    purge_step=None if resumed_at is None else resumed_at + 1)
        if resumed_at is None:
            self.writer.add_text("config", "\n".join(f"    {k}: {v!r}" for k, v in config.items()), 0)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run_dir: Path, config: dict[str, Any], resumed_at: int | None) -> None:
        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")  # no network unless the user configured W&B themselves
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "unmask"), name=run_dir.name,
                              dir=str(run_dir), config=config)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()

