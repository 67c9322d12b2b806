"""``TrainConfig``: the settings of a training run (``unmask train``), apart from the training loop.

Kept free of torch so that ``unmask train --help`` (whose flags are generated from these fields) starts
in a fraction of a second; ``unmask.train`` re-exports everything here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from unmask.config import config_from_dict
from unmask.errors import ConfigError

STAGES = ("pretrain", "sft")
NORMALIZERS = ("tokens", "sequence")
T_METHODS = ("antithetic", "stratified", "uniform")
DISTRIBUTED = ("ddp", "fsdp")
OBJECTIVES = ("diffusion", "autoregressive")


def _doc(text: str, **extra: Any) -> dict[str, Any]:
    return {"doc": text, **extra}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; saved as ``run_config.json`` in the run directory."""

    run_dir: str = field(default="runs/default", metadata=_doc("run directory (checkpoints, metrics)"))
    data: str = field(default="stdlib", metadata=_doc("a directory of .py files, a .jsonl, or 'stdlib'"))
    data_max_bytes: int | None = field(default=2_000_000, metadata=_doc("read at most this much text"))
    stage: str = field(default="pretrain", metadata=_doc("pretrain | sft", choices=STAGES))
    objective: str = field(
        default="diffusion",
        metadata=_doc("diffusion (masked ELBO) | autoregressive (causal next-token baseline)", choices=OBJECTIVES),
    )
    preset: str = field(default="tiny", metadata=_doc("model preset for a fresh model"))
    init_from: str | None = field(default=None, metadata=_doc("continue from this HF model directory"))
    tokenizer: str | None = field(
        default=None, metadata=_doc("tokenizer directory (default: BPE on the corpus)")
    )
    vocab_size: int | None = field(
        default=None, metadata=_doc("BPE size when one is trained (default: preset's)")
    )
    chat: bool = field(default=True, metadata=_doc("SFT: wrap prompts in the ChatML template"))
    seq_len: int = field(default=256, metadata=_doc("tokens per row"))
    batch_size: int = field(default=8, metadata=_doc("rows per micro-batch, summed over all ranks"))
    grad_accum: int = field(default=1, metadata=_doc("micro-batches per optimiser step"))
    max_steps: int = field(default=1000, metadata=_doc("optimiser steps of the whole run"))
    stop_after_steps: int | None = field(default=None, metadata=_doc("stop this invocation after N steps"))
    lr: float = field(default=3e-4, metadata=_doc("peak learning rate"))
    min_lr_ratio: float = field(default=0.1, metadata=_doc("final LR as a fraction of the peak"))
    warmup_steps: int = field(default=50, metadata=_doc("linear warm-up steps"))
    weight_decay: float = field(default=0.1, metadata=_doc("AdamW decoupled weight decay (matrices only)"))
    beta1: float = field(default=0.9, metadata=_doc("AdamW beta1"))
    beta2: float = field(default=0.95, metadata=_doc("AdamW beta2"))
    grad_clip: float = field(default=1.0, metadata=_doc("clip the global grad norm (0 = off)"))
    t_method: str = field(default="antithetic", metadata=_doc("t sampling", choices=T_METHODS))
    mask_eps: float = field(default=1e-3, metadata=_doc("p(t) = (1 - eps) t + eps"))
    loss_normalizer: str = field(default="tokens", metadata=_doc("tokens | sequence", choices=NORMALIZERS))
    adapt_from_ar: bool = field(default=False, metadata=_doc("anneal causal→full attention (AR adaptation)"))
    anneal_steps: int = field(default=0, metadata=_doc("steps of causal→full annealing"))
    prefix_prob: float = field(default=0.01, metadata=_doc("adaptation: P(clean random prefix)"))
    truncate_prob: float = field(default=0.01, metadata=_doc("adaptation: P(random truncation)"))
    block_mask_prob: float = field(
        default=0.0, metadata=_doc("P(a row trains one semi-AR block: clean before it, all masked after it)")
    )
    block_mask_length: int = field(default=8, metadata=_doc("length of those blocks (the decoder's block_length)"))
    val_fraction: float = field(default=0.05, metadata=_doc("documents held out for validation"))
    eval_every: int = field(default=100, metadata=_doc("validation loss every N steps (0 = off)"))
    eval_batches: int = field(default=4, metadata=_doc("validation micro-batches"))
    save_every: int = field(default=500, metadata=_doc("checkpoint every N steps (and at the end)"))
    keep_checkpoints: int = field(default=2, metadata=_doc("newest checkpoints kept"))
    log_every: int = field(default=10, metadata=_doc("metrics.jsonl line every N steps"))
    seed: int = field(default=0, metadata=_doc("seed of init, data order and noise"))
    device: str = field(default="auto", metadata=_doc("auto | cpu | cuda"))
    gradient_checkpointing: bool = field(default=False, metadata=_doc("recompute activations in backward"))
    distributed: str = field(
        default="ddp", metadata=_doc("ddp | fsdp (FSDP2 shards; only under torchrun)", choices=DISTRIBUTED)
    )
    sample_prompts: int = field(default=2, metadata=_doc("prompts decoded at each validation (0 = off)"))
    sample_tokens: int = field(default=32, metadata=_doc("tokens decoded per sample prompt"))
    resume: bool = field(default=False, metadata=_doc("continue from the run's latest checkpoint"))
    progress: bool = field(default=True, metadata=_doc("tqdm progress bar on rank 0"))

    def __post_init__(self) -> None:
        def positive(name: str, allow_zero: bool = False) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
                raise ConfigError(
                    f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}"
                )

        for name in (
            "seq_len",
            "batch_size",
            "grad_accum",
            "max_steps",
            "eval_batches",
            "save_every",
            "keep_checkpoints",
            "log_every",
            "sample_tokens",
            "block_mask_length",
        ):
            positive(name)
        for name in ("warmup_steps", "anneal_steps", "eval_every", "sample_prompts"):
            positive(name, allow_zero=True)
        if self.seq_len < 3:
            raise ConfigError(f"seq_len must be at least 3, got {self.seq_len}")
        for name in ("stop_after_steps", "vocab_size", "data_max_bytes"):
            if getattr(self, name) is not None:
                positive(name)
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {', '.join(STAGES)}; got {self.stage!r}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}")
        if self.adapt_from_ar and self.anneal_steps == 0:
            raise ConfigError("adapt_from_ar needs anneal_steps > 0: the causal model's attention is opened to full "
                              "over that many steps (DiffuCoder anneals over 10k steps; try half of max_steps)")
        if self.objective == "autoregressive" and self.adapt_from_ar:
            raise ConfigError("adapt_from_ar turns a causal model into a diffusion one; it cannot be combined with "
                              "objective autoregressive")
        if self.loss_normalizer not in NORMALIZERS:
            raise ConfigError(
                f"loss_normalizer must be one of {', '.join(NORMALIZERS)}; got {self.loss_normalizer!r}"
            )
        if self.distributed not in DISTRIBUTED:
            raise ConfigError(f"distributed must be one of {', '.join(DISTRIBUTED)}; got {self.distributed!r}")
        if self.t_method not in T_METHODS:
            raise ConfigError(f"t_method must be one of {', '.join(T_METHODS)}; got {self.t_method!r}")
        for name, low, high in (
            ("lr", 0.0, 1.0),
            ("min_lr_ratio", 0.0, 1.0),
            ("beta1", 0.0, 1.0),
            ("beta2", 0.0, 1.0),
            ("mask_eps", 0.0, 1.0),
            ("prefix_prob", 0.0, 1.0),
            ("truncate_prob", 0.0, 1.0),
            ("block_mask_prob", 0.0, 1.0),
            ("val_fraction", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
                raise ConfigError(f"{name} must be a number in [{low}, {high}], got {value!r}")
        if self.lr <= 0 or self.val_fraction >= 1:
            raise ConfigError("lr must be > 0 and val_fraction < 1")
        if self.block_mask_prob > 0 and self.objective != "diffusion":
            raise ConfigError("block_mask_prob shapes the masked-diffusion noise; it has no meaning for objective "
                              "autoregressive")
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda[:N]; got {self.device!r}")
        if self.init_from is not None and self.tokenizer is not None:
            raise ConfigError("pass either init_from (which brings its tokenizer) or tokenizer, not both")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping (a JSON file, CLI flags); an unknown key is a ``ConfigError`` naming it."""
        return config_from_dict(cls, values, "training")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
