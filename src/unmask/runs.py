"""The run lifecycle shared by ``unmask train`` and ``unmask rl``: ranks and devices, the optimiser and its
LR schedule, the run directory (config file, ``metrics.jsonl``, the ``latest`` pointer), the step loop's
bookkeeping, RNG state and atomic checkpoints.

A run directory holds ``checkpoint-{step:07d}/`` directories (an HF model directory plus
``trainer_state.pt``; training adds ``optimizer.pt``; a LoRA run's has ``adapter/`` instead of weights) and
``latest``, the name of the newest complete one. ``StepLoop`` writes ``metrics.jsonl`` and copies each record to
the experiment trackers (``unmask.trackers``).
Only rank 0 writes; every function here that writes is called on rank 0 alone.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import random
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from unmask.errors import ConfigError
from unmask.fileio import atomic_write_text

__all__ = [
    "OPTIMIZER_FILE",
    "RunResult",
    "StepLoop",
    "adamw",
    "append_jsonl",
    "distributed",
    "end_step",
    "latest_checkpoint",
    "lr_factor",
    "param_groups",
    "process_group",
    "progress_bar",
    "resolve_device",
    "resume_point",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "start_run_dir",
    "truncate_metrics",
]

OPTIMIZER_FILE = "optimizer.pt"


# ----------------------------------------------------------------------------------------------------------
# Processes and devices


def distributed() -> tuple[int, int]:
    """(rank, world size): (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def process_group(device: str) -> Iterator[None]:
    """Join the process group for the run when launched by torchrun (``WORLD_SIZE`` > 1; nccl on GPU, gloo on
    CPU) and leave it afterwards; outside torchrun, or inside a group someone else started, nothing happens."""
    started = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() and device != "cpu" else "gloo")
        started = True
    try:
        yield
    finally:
        if started:
            # FSDP modules left for the interpreter's final collection sometimes abort the process after
            # a finished run (gloo, torch 2.13: "terminate called without an active exception", ~1 in 15
            # runs); collecting them while the group still exists avoids it.
            gc.collect()
            dist.destroy_process_group()


def resolve_device(device: str, rank: int) -> torch.device:
    """``auto``: this rank's GPU (``LOCAL_RANK`` under torchrun) when CUDA is there, else the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but no CUDA device is available")
    return torch.device(device)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------------------
# The optimiser and its schedule


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Decay matrices only (not norms or biases), the usual AdamW practice.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(model: torch.nn.Module, cfg: Any) -> torch.optim.AdamW:
    """AdamW over ``model`` with ``cfg``'s ``lr``, ``beta1``/``beta2`` and ``weight_decay`` (``param_groups``)."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=False, foreach=False)


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak LR for optimiser step ``step`` (0-based): linear warm-up from
    ``1/warmup_steps`` to 1 over ``warmup_steps`` steps, then cosine decay to ``min_lr_ratio`` at
    ``max_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------------------
# The run directory


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run (from the ``latest`` pointer), or None."""
    pointer = Path(run_dir) / "latest"
    if not pointer.is_file():
        return None
    path = Path(run_dir) / pointer.read_text(encoding="utf-8").strip()
    return path if (path / "trainer_state.pt").is_file() else None


def resume_point(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: a fresh run). A fresh run never writes over checkpoints."""
    if not resume:
        if latest_checkpoint(run_dir) is not None:
            raise ConfigError(
                f"{run_dir} already holds checkpoints; pass --resume to continue it or choose another --run-dir"
            )
        return None
    return latest_checkpoint(run_dir)


def start_run_dir(run_dir: Path, config_file: str, config: dict[str, Any], *, resumed_at: int | None,
                  logs: Sequence[str]) -> None:
    """Create ``run_dir``, write the run's config; on resume, drop ``logs`` lines past the checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / config_file, json.dumps(config, indent=2) + "\n")
    if resumed_at is not None:
        for name in logs:
            truncate_metrics(run_dir / name, resumed_at)


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines written after the checkpoint (they will be produced again)."""
    if not path.is_file():
        return
    kept = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def end_step(step: int, max_steps: int, stop_after_steps: int | None) -> int:
    """Where this invocation stops: ``max_steps``, or earlier with ``stop_after_steps`` (a run in slices)."""
    return max_steps if stop_after_steps is None else min(max_steps, step + stop_after_steps)


def progress_bar(enabled: bool, *, total: int, initial: int, desc: str) -> Any:
    """A tqdm bar on stderr, or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr)


@dataclass
class RunResult:
    """What a train or rl invocation returns: the step it stopped at, its metric records, its run directory."""

    step: int
    history: list[dict[str, Any]]
    run_dir: Path


class StepLoop:
    """What train and rl do around their own step: where this invocation ends (``end_step``), the rank-0
    progress bar, ``metrics.jsonl`` and the experiment trackers (rank 0), the history of metric records and the
    caller's ``on_step(step, record)`` hook. ``close`` it when the loop ends, however it ends.

    ``cfg`` needs ``max_steps``, ``stop_after_steps``, ``progress`` and ``report_to``."""

    def __init__(self, start: int, cfg: Any, *, rank: int, desc: str, run_dir: Path,
                 on_step: Callable[[int, dict[str, Any]], None] | None) -> None:
        from unmask.trackers import Trackers

        self.end = end_step(start, cfg.max_steps, cfg.stop_after_steps)
        self.metrics = run_dir / "metrics.jsonl"
        # a run resumed from step `start` (> 0: no checkpoint has step 0) logged up to there already
        self.trackers = Trackers.open(cfg.report_to if rank == 0 else "none", run_dir, cfg.to_dict(),
                                      resumed_at=start or None)
        self.bar = progress_bar(rank == 0 and cfg.progress, total=cfg.max_steps, initial=start, desc=desc)
        self.history: list[dict[str, Any]] = []
        self.on_step = on_step

    def due(self, step: int, every: int) -> bool:
        """Whether something done every ``every`` steps (log, save) happens after ``step``: the last one too."""
        return step % every == 0 or step == self.end

    def log(self, record: dict[str, Any]) -> None:
        """Write a metrics record: a ``metrics.jsonl`` line, and a copy to each tracker. Rank 0 only."""
        append_jsonl(self.metrics, record)
        self.trackers.log(record)

    def finished(self, step: int, record: dict[str, Any], **postfix: str) -> None:
        """Step ``step`` is done: keep its record, advance the bar (showing ``postfix``), call the hook."""
        self.history.append(record)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(**postfix)
        if self.on_step is not None:
            self.on_step(step, record)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.trackers.close()


# ----------------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    tokenizer: Any,
    trainer_state: dict[str, Any],
    keep: int,
    optimizer_state: dict[str, Any] | None = None,
    family: str = "dream",
    generation: dict[str, Any] | None = None,
    adapter: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``checkpoint-{step}`` atomically (staging directory, then ``os.replace``), update ``latest``
    and prune old checkpoints. A crash at any point leaves the previous checkpoint intact and pointed to.

    ``model`` must hold plain (unsharded) tensors; ``optimizer_state`` (the full, parameter-name keyed
    state from ``get_optimizer_state_dict``) goes to ``optimizer.pt`` so only rank 0 ever reads it.
    ``generation``: the generation_config.json to carry (a fine-tuned policy keeps its parent's sampler and
    decoder recommendation). ``adapter``: writes a LoRA run's adapter into the directory it is given
    (``adapter/``); the model's own weights are then left out, being its base's (``unmask.lora``)."""
    from unmask.checkpoint import save_model

    name = f"checkpoint-{trainer_state['step']:07d}"
    final = run_dir / name
    staging = run_dir / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        save_model(model, staging, tokenizer=tokenizer, family=family, generation=generation or None,
                   weights=adapter is None)
        if adapter is not None:
            from unmask.lora import ADAPTER_DIR

            adapter(staging / ADAPTER_DIR)
        if optimizer_state is not None:
            torch.save(optimizer_state, staging / OPTIMIZER_FILE)
        torch.save(trainer_state, staging / "trainer_state.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    atomic_write_text(run_dir / "latest", name + "\n")
    old = sorted(p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p != final)
    for path in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(path, ignore_errors=True)
    return final


def drive(run: Any, cfg: Any, *, desc: str, on_step: Callable[[int, dict[str, Any]], None] | None,
          steps: Callable[[Any, StepLoop], int]) -> tuple[int, list[dict[str, Any]]]:
    """Run ``steps(run, loop)`` inside a ``StepLoop`` that is closed however the steps end (the trackers are
    flushed when a step fails too); (the step it stopped at, the metric records). ``run`` needs ``start``,
    ``rank`` and ``run_dir``: what train's and rl's ``_setup`` return."""
    loop = StepLoop(run.start, cfg, rank=run.rank, desc=desc, run_dir=run.run_dir, on_step=on_step)
    try:
        step = steps(run, loop)
    finally:
        loop.close()
    return step, loop.history
