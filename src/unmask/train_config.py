"""``TrainConfig``: the settings of a training run (``unmask train``), apart from the training loop.

Kept free of torch so that ``unmask train --help`` (whose flags are generated from these fields) starts
in a fraction of a second; ``unmask.train`` re-exports everything here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unmask import trackers
from unmask.config import (
    RunOptions,
    check_choices,
    check_device,
    check_ints,
    check_lora,
    check_numbers,
    doc,
)
from unmask.errors import ConfigError

STAGES = ("pretrain", "sft")
NORMALIZERS = ("tokens", "sequence")
T_METHODS = ("antithetic", "stratified", "uniform")
DISTRIBUTED = ("ddp", "fsdp")
OBJECTIVES = ("diffusion", "autoregressive")


@dataclass(frozen=True)
class TrainConfig(RunOptions):
    """Everything a training run needs; saved as ``run_config.json`` in the run directory."""

    _what = "training"

    run_dir: str = field(default="runs/default", metadata=doc("run directory (checkpoints, metrics)"))
    data: str = field(default="stdlib", metadata=doc("a directory of .py files, a .jsonl, or 'stdlib'"))
    data_max_bytes: int | None = field(default=2_000_000, metadata=doc("read at most this much text"))
    stage: str = field(default="pretrain", metadata=doc("pretrain | sft", choices=STAGES))
    objective: str = field(
        default="diffusion",
        metadata=doc("diffusion (masked ELBO) | autoregressive (causal next-token baseline)", choices=OBJECTIVES),
    )
    preset: str = field(default="tiny", metadata=doc("model preset for a fresh model"))
    init_from: str | None = field(default=None, metadata=doc("continue from this HF model directory"))
    tokenizer: str | None = field(
        default=None, metadata=doc("tokenizer directory (default: BPE on the corpus)")
    )
    vocab_size: int | None = field(
        default=None, metadata=doc("BPE size when one is trained (default: preset's)")
    )
    chat: bool = field(default=True, metadata=doc("SFT: wrap prompts in the ChatML template"))
    seq_len: int = field(default=256, metadata=doc("tokens per row"))
    batch_size: int = field(default=8, metadata=doc("rows per micro-batch, summed over all ranks"))
    grad_accum: int = field(default=1, metadata=doc("micro-batches per optimiser step"))
    max_steps: int = field(default=1000, metadata=doc("optimiser steps of the whole run"))
    stop_after_steps: int | None = field(default=None, metadata=doc("stop this invocation after N steps"))
    lr: float = field(default=3e-4, metadata=doc("peak learning rate"))
    min_lr_ratio: float = field(default=0.1, metadata=doc("final LR as a fraction of the peak"))
    warmup_steps: int = field(default=50, metadata=doc("linear warm-up steps"))
    weight_decay: float = field(default=0.1, metadata=doc("AdamW decoupled weight decay (matrices only)"))
    beta1: float = field(default=0.9, metadata=doc("AdamW beta1"))
    beta2: float = field(default=0.95, metadata=doc("AdamW beta2"))
    grad_clip: float = field(default=1.0, metadata=doc("clip the global grad norm (0 = off)"))
    t_method: str = field(default="antithetic", metadata=doc("t sampling", choices=T_METHODS))
    mask_eps: float = field(default=1e-3, metadata=doc("p(t) = (1 - eps) t + eps"))
    loss_normalizer: str = field(default="tokens", metadata=doc("tokens | sequence", choices=NORMALIZERS))
    adapt_from_ar: bool = field(default=False, metadata=doc("anneal causal→full attention (AR adaptation)"))
    anneal_steps: int = field(default=0, metadata=doc("steps of causal→full annealing"))
    prefix_prob: float = field(default=0.01, metadata=doc("adaptation: P(clean random prefix)"))
    truncate_prob: float = field(default=0.01, metadata=doc("adaptation: P(random truncation)"))
    block_mask_prob: float = field(
        default=0.0, metadata=doc("P(a row trains one semi-AR block: clean before it, all masked after it)")
    )
    block_mask_length: int = field(default=8, metadata=doc("length of those blocks (the decoder's block_length)"))
    block_size: int | None = field(default=None, metadata=doc(
        "block diffusion: train block-causal attention over blocks of this size, two-stream (sets the model's "
        "block_size; default: the model's own, None = full attention; docs/training.md)"))
    val_fraction: float = field(default=0.05, metadata=doc("documents held out for validation"))
    eval_every: int = field(default=100, metadata=doc("validation loss every N steps (0 = off)"))
    eval_batches: int = field(default=4, metadata=doc("validation micro-batches"))
    save_every: int = field(default=500, metadata=doc("checkpoint every N steps (and at the end)"))
    keep_checkpoints: int = field(default=2, metadata=doc("newest checkpoints kept"))
    log_every: int = field(default=10, metadata=doc("metrics.jsonl line every N steps"))
    seed: int = field(default=0, metadata=doc("seed of init, data order and noise"))
    device: str = field(default="auto", metadata=doc("auto | cpu | cuda"))
    gradient_checkpointing: bool = field(default=False, metadata=doc("recompute activations in backward"))
    distributed: str = field(
        default="ddp", metadata=doc("ddp | fsdp (FSDP2 shards; only under torchrun)", choices=DISTRIBUTED)
    )
    sample_prompts: int = field(default=2, metadata=doc("prompts decoded at each validation (0 = off)"))
    sample_tokens: int = field(default=32, metadata=doc("tokens decoded per sample prompt"))
    resume: bool = field(default=False, metadata=doc("continue from the run's latest checkpoint"))
    progress: bool = field(default=True, metadata=doc("tqdm progress bar on rank 0"))

    def __post_init__(self) -> None:
        check_ints(self, ("seq_len", "batch_size", "grad_accum", "max_steps", "eval_batches", "save_every",
                          "keep_checkpoints", "log_every", "sample_tokens", "block_mask_length"))
        check_ints(self, ("warmup_steps", "anneal_steps", "eval_every", "sample_prompts"), minimum=0)
        check_ints(self, ("stop_after_steps", "vocab_size", "data_max_bytes", "block_size"), optional=True)
        if self.seq_len < 3:
            raise ConfigError(f"seq_len must be at least 3, got {self.seq_len}")
        check_choices(self)
        if self.adapt_from_ar and self.anneal_steps == 0:
            raise ConfigError("adapt_from_ar needs anneal_steps > 0: the causal model's attention is opened to full "
                              "over that many steps (DiffuCoder anneals over 10k steps; try half of max_steps)")
        if self.objective == "autoregressive" and self.adapt_from_ar:
            raise ConfigError("adapt_from_ar turns a causal model into a diffusion one; it cannot be combined with "
                              "objective autoregressive")
        check_numbers(self, ("lr", "min_lr_ratio", "beta1", "beta2", "mask_eps", "prefix_prob", "truncate_prob",
                             "block_mask_prob", "val_fraction"), "[0, 1]")
        if self.lr <= 0 or self.val_fraction >= 1:
            raise ConfigError("lr must be > 0 and val_fraction < 1")
        if self.block_mask_prob > 0 and self.objective != "diffusion":
            raise ConfigError("block_mask_prob shapes the masked-diffusion noise; it has no meaning for objective "
                              "autoregressive")
        if self.block_size is not None and self.objective != "diffusion":
            raise ConfigError("block_size trains a block-diffusion model; objective autoregressive has no blocks")
        if self.block_size is not None and self.block_mask_prob > 0:
            raise ConfigError("block_mask_prob imitates block decoding for full-attention models; with block_size "
                              "every block is trained in that state already (leave block_mask_prob 0)")
        check_numbers(self, ("weight_decay", "grad_clip"), "[0, inf)")
        check_device(self.device)
        if self.init_from is not None and self.tokenizer is not None:
            raise ConfigError("pass either init_from (which brings its tokenizer) or tokenizer, not both")
        check_lora(self)
        if self.lora_r and self.distributed == "fsdp":
            raise ConfigError("lora_r > 0 cannot be combined with distributed fsdp (the adapter checkpoints are not "
                              "gathered from shards); LoRA's frozen bf16 base fits one GPU: use distributed ddp")
        trackers.parse(self.report_to)

