"""The masked-diffusion training loop: pretraining, AR→diffusion adaptation and SFT (docs/training.md).

One plain loop (``train``): for each optimiser step, ``grad_accum`` micro-batches are drawn, noised
(``make_batch``: t per row, forward masking outside the clean prompt, optional causal→full attention
annealing and adaptation spans), and trained with the ELBO loss on shifted logits; then gradient
clipping, AdamW, a linear-warm-up + cosine LR schedule, logging to ``metrics.jsonl``, validation and
atomic checkpoints.

Distributed data parallel: run the same command under ``torchrun --nproc_per_node N``. Every rank draws
the *whole* global micro-batch (indices, t, masks) from identically seeded generators and trains on its
contiguous slice of rows, and each rank's loss is ``sum of its per-row ELBO terms / (maskable tokens of
the global step) * world_size``; DDP's gradient mean then equals the single-process gradient, so N
processes reproduce one process (to float tolerance) for the same ``batch_size``. Only rank 0 writes.
``distributed="fsdp"`` uses PyTorch's FSDP2 (``fully_shard`` on each decoder layer, then the root) instead
of DDP; validation and sample decoding then run on every rank, since every forward gathers shards.

Checkpoints have one format whatever the launch: full (unsharded) tensors gathered with
``torch.distributed.checkpoint.state_dict`` and written by rank 0, so an FSDP run resumes in one process
and vice versa. At each validation a few prompts are decoded greedily with the reference sampler
(``sample_prompts``/``sample_tokens``) into ``samples.jsonl``, with their own generator: training draws
are untouched.

Run directory (``run_dir``): ``run_config.json`` (the resolved ``TrainConfig``), ``metrics.jsonl``,
``samples.jsonl``, ``checkpoint-{step:07d}/`` (an HF model directory, ``optimizer.pt``: the full optimiser
state keyed by parameter name, and ``trainer_state.pt``: scheduler, step, sampler position and every RNG
state) and ``latest`` (the name of the newest complete checkpoint).

LoRA (``lora_r > 0``, ``unmask.lora``): adapters on the projections of a frozen base; only they are trained and
only they reach the optimiser. Its checkpoints hold ``adapter/`` (peft's format) instead of weights, and name the
base: the ``init_from`` directory, or ``run_dir/base`` (written once) for a fresh preset or a model given in
memory. Not with ``distributed="fsdp"`` (refused by ``TrainConfig``). ``report_to`` copies every metrics record
to TensorBoard or W&B (``unmask.trackers``).

    unmask train --preset tiny --data stdlib --run-dir runs/tiny --max-steps 2000
    torchrun --nproc_per_node 2 -m unmask.cli train --preset small --data src/ --run-dir runs/small
    torchrun --nproc_per_node 8 -m unmask.cli train --distributed fsdp --init-from qwen2-dir --adapt-from-ar ...
    unmask train --run-dir runs/tiny --resume
    unmask train qwen-7b-dream --stage sft --data sft.jsonl --lora-r 16 --report-to tensorboard --run-dir runs/lora
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from unmask import lora, runs, trackers
from unmask.decoding.canvas import left_pad
from unmask.diffusion import (
    adaptation_spans,
    annealed_attention_mask,
    attention_anneal_fraction,
    block_spans,
    diffusion_loss,
    forward_mask,
    sample_t,
    shift_logits,
    token_logprobs,
    two_stream_logits,
    two_stream_mask,
    uniform,
)
from unmask.errors import ConfigError
from unmask.model import DreamModel, block_ids
from unmask.runs import OPTIMIZER_FILE, lr_factor
from unmask.train_config import DISTRIBUTED, NORMALIZERS, OBJECTIVES, STAGES, T_METHODS, TrainConfig  # noqa: F401
from unmask.training_data import EpochSampler, TokenRows, val_batches

__all__ = ["Batch", "TrainConfig", "TrainData", "TrainResult", "fsdp_shard", "lr_factor", "make_batch", "prepare",
           "train"]


@dataclass(frozen=True)
class TrainData:
    train: TokenRows
    val: TokenRows


TrainResult = runs.RunResult


# ----------------------------------------------------------------------------------------------------------
# Pure pieces: LR schedule, batch construction


@dataclass(frozen=True)
class Batch:
    """A noised micro-batch; ``attention_mask`` is None (full attention, no padding) or (B, 1, T, T) bool."""

    input_ids: torch.Tensor  # (B, T) noisy x_t
    targets: torch.Tensor  # (B, T) clean x_0
    masked: torch.Tensor  # (B, T) bool, positions replaced by MASK
    maskable: torch.Tensor  # (B, T) bool
    t: torch.Tensor  # (B,)
    attention_mask: torch.Tensor | None
    anneal_fraction: float
    row_weight: torch.Tensor | None = None  # (B,) loss multiplier per row (semi-AR block rows), None = all 1
    # Block diffusion (two streams): input_ids/attention_mask cover [x_t | x_0] (B, 2T), with these positions
    # (B, 2T) and the block index of every position (B, T); None for full attention.
    position_ids: torch.Tensor | None = None
    blocks: torch.Tensor | None = None

    def rows(self, start: int, stop: int) -> Batch:
        return self._map(lambda tensor: tensor[start:stop])

    def to(self, device: torch.device) -> Batch:
        return self._map(lambda tensor: tensor.to(device))

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        """This batch with ``fn`` applied to every tensor (the optional ones stay None)."""
        return dataclasses.replace(self, **{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})


def make_batch(
    clean: torch.Tensor,
    prompt_lengths: torch.Tensor,
    *,
    step: int,
    cfg: TrainConfig,
    mask_token_id: int,
    generator: torch.Generator,
    stop_id: int | None = None,
) -> Batch:
    """Noise clean rows (B, T) for optimiser step ``step``; all draws come from ``generator``.

    Maskable = from the row's prompt length on (pretraining: from position 1; SFT: the response and its
    pads). With ``adapt_from_ar``: adaptation spans (a clean prefix, a truncation whose tail becomes
    padding) and attention annealed from causal to full over ``anneal_steps``. With ``block_size``: the
    two-stream batch of block diffusion (``_two_stream``).
    """
    B, T = clean.shape
    pos = torch.arange(T)[None, :]  # (1, T)
    start = prompt_lengths[:, None]  # (B, 1)
    if cfg.objective == "autoregressive":
        return _causal_batch(clean, start, sft=cfg.stage == "sft", stop_id=stop_id)
    key_valid = torch.ones(B, T, dtype=torch.bool)  # (B, T)
    fraction = 1.0
    # Block origin (docs/model.md): the SFT prompt is one clean prefix block; plain text counts from 0.
    origin = prompt_lengths if cfg.stage == "sft" else torch.zeros_like(prompt_lengths)
    if cfg.adapt_from_ar:
        prefix, keep = adaptation_spans(
            B, T, generator=generator, prefix_prob=cfg.prefix_prob, truncate_prob=cfg.truncate_prob
        )
        start = torch.maximum(start, prefix[:, None])
        origin = torch.maximum(origin, prefix)
        key_valid = pos < keep[:, None]
        fraction = attention_anneal_fraction(step, cfg.anneal_steps)
    maskable = (pos >= start) & key_valid  # (B, T)
    t = sample_t(B, generator=generator, eps=cfg.mask_eps, method=cfg.t_method)
    noisy, masked = forward_mask(
        clean, t, maskable=maskable, generator=generator, mask_token_id=mask_token_id, eps=cfg.mask_eps
    )
    row_weight = None
    if cfg.block_mask_prob > 0:  # drawn only when asked, so the noise stream of other runs is unchanged
        noisy, masked, row_weight = _semi_ar_rows(clean, masked, maskable, cfg, generator, mask_token_id, stop_id)
    if cfg.block_size is not None:
        within = annealed_attention_mask(T, fraction, generator=generator if 0.0 < fraction < 1.0 else None)
        return _two_stream(Batch(noisy, clean, masked, maskable, t, None, fraction), key_valid,
                           block_ids(T, cfg.block_size, origin), None if fraction == 1.0 else within)
    attention = None
    if fraction < 1.0 or not bool(key_valid.all()):
        # DiffuLLaMA/DiffuCoder stage 1: causal OR a fresh Bernoulli(fraction) draw of future keys every step
        # (exactly causal at 0, drawn only while annealing so the noise stream is unchanged afterwards).
        anneal = generator if 0.0 < fraction < 1.0 else None
        base = annealed_attention_mask(T, fraction, generator=anneal)  # (T, T) [query, key]
        attention = base[None, None] & key_valid[:, None, None, :]  # (B, 1, T, T)
        attention = attention | torch.eye(T, dtype=torch.bool)[None, None]  # pad queries see themselves
    return Batch(noisy, clean, masked, maskable, t, attention, fraction, row_weight)


def _two_stream(batch: Batch, key_valid: torch.Tensor, blocks: torch.Tensor, within: torch.Tensor | None) -> Batch:
    """The block-diffusion layout of a noised batch (BD3-LM's two streams, docs/training.md): the input is
    ``[x_t | x_0]`` (B, 2T), both copies at positions 0..T-1, under ``diffusion.two_stream_mask``. One forward
    denoises every block against clean earlier blocks; ``two_stream_logits`` takes the noisy row's predictions
    out of it (the first token of a block from the clean token before it)."""
    T = batch.targets.shape[1]
    positions = torch.arange(T).repeat(2)[None].expand(batch.targets.shape[0], 2 * T)  # (B, 2T)
    return dataclasses.replace(
        batch, input_ids=torch.cat([batch.input_ids, batch.targets], dim=1),
        attention_mask=two_stream_mask(blocks, key_valid, within), position_ids=positions, blocks=blocks)


def forward_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Raw logits (B, T, V) of a batch's noisy rows: one forward, and for a two-stream batch the noisy row's
    predictions taken out of both streams."""
    logits = model(batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    return logits if batch.blocks is None else two_stream_logits(logits, batch.blocks)


def _semi_ar_rows(
    clean: torch.Tensor,
    masked: torch.Tensor,
    maskable: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
    mask_token_id: int,
    stop_id: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn a ``block_mask_prob`` share of the rows into semi-AR block rows (docs/training.md): the blocks
    decoder fills block j with everything before it committed and everything after it still masked, a state
    uniform masking almost never shows the model. Such a row keeps its region (response and end token) clean
    before block j, noises block j as drawn (the only scored positions), and masks all later positions.
    Returns (noisy ids, scored positions, row weights = blocks per row, 1 for untouched rows)."""
    B, T = clean.shape
    pos = torch.arange(T)[None, :]  # (1, T)
    chosen = (uniform((B,), generator).cpu() < cfg.block_mask_prob) & maskable.any(dim=1)  # (B,)
    start = torch.where(maskable.any(dim=1), maskable.long().argmax(dim=1), 0)  # (B,) first maskable
    end = T - maskable.flip(1).long().argmax(dim=1)  # (B,) one past the last maskable
    if stop_id is not None:  # the region ends with the response's end token; the pads after it are left out
        stops = (clean == stop_id) & maskable
        end = torch.where(stops.any(dim=1), stops.long().argmax(dim=1) + 1, end)
    end = torch.maximum(end, start + 1)
    lo, hi, n = block_spans(start, end, cfg.block_mask_length, generator=generator)
    block = (pos >= lo[:, None]) & (pos < hi[:, None])  # (B, T)
    scored = torch.where(chosen[:, None], masked & block, masked)
    hidden = torch.where(chosen[:, None], scored | (maskable & (pos >= hi[:, None])), masked)
    noisy = torch.where(hidden, torch.full_like(clean, mask_token_id), clean)
    return noisy, scored, torch.where(chosen, n.float(), torch.ones(B))


def _causal_batch(clean: torch.Tensor, start: torch.Tensor, *, sft: bool, stop_id: int | None) -> Batch:
    """The autoregressive baseline's batch: clean inputs, causal attention, and every position from the
    prompt on as a target (logits are shifted, so target ``j`` is predicted from tokens ``< j``). SFT rows
    stop counting after the response's first stop token: an AR model stops there, the pads are not
    learned."""
    from unmask.autoregressive import causal_attention

    B, T = clean.shape
    pos = torch.arange(T)[None, :]
    targets = pos >= start.clamp(min=1)  # (B, T)
    if sft and stop_id is not None:
        is_stop = (clean == stop_id) & targets
        before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()  # stops strictly before each position
        targets &= before == 0
    attention = causal_attention(torch.ones(B, T, dtype=torch.bool))
    return Batch(clean, clean, targets, targets, torch.ones(B), attention, 0.0)


def _loss_sum(logits: torch.Tensor, batch: Batch, cfg: TrainConfig) -> torch.Tensor:
    """Sum over rows of the per-row ELBO terms (numerator of the global normaliser); 0-d float32."""
    B, T = batch.targets.shape
    if cfg.objective == "autoregressive":
        nll = -token_logprobs(shift_logits(logits), batch.targets) * batch.masked  # (B, T)
        if cfg.loss_normalizer == "tokens":
            return nll.sum()
        return (nll.sum(1) / batch.masked.sum(1).clamp(min=1)).sum()
    # "tokens": the batch-mean times B*T is sum_b S_b; "sequence": the per-row mean times B is sum_b S_b / n_b.
    normalizer, scale = ("batch", B * T) if cfg.loss_normalizer == "tokens" else ("sequence", B)
    loss, _ = diffusion_loss(logits, batch.targets, batch.masked, batch.t, maskable=batch.maskable,
                             normalizer=normalizer, eps=cfg.mask_eps, row_weight=batch.row_weight)
    return loss * scale


def _denominator(batches: list[Batch], cfg: TrainConfig) -> float:
    if cfg.loss_normalizer == "tokens":
        return float(max(1, sum(int(b.maskable.sum()) for b in batches)))
    return float(sum(b.targets.shape[0] for b in batches))


# ----------------------------------------------------------------------------------------------------------
# Set-up: model, tokenizer, data


def prepare(cfg: TrainConfig) -> tuple[DreamModel, Any, TrainData]:
    """Resolve the config into (model, tokenizer, data); every bad input is a ``ConfigError`` here."""
    from unmask.checkpoint import load_model, read_config
    from unmask.config import ModelConfig
    from unmask.tokenizer import load_tokenizer, train_bpe
    from unmask.training_data import (
        dedup_texts,
        pack_rows,
        read_sft_pairs,
        read_texts,
        sft_rows,
        split_by_hash,
        split_sft_pairs,
    )

    if cfg.stage == "sft":
        train_items, val_items = split_sft_pairs(read_sft_pairs(cfg.data), cfg.val_fraction)
        tok_texts = [p + r for p, r in train_items]
    else:
        items = dedup_texts(read_texts(cfg.data, max_bytes=cfg.data_max_bytes))
        train_items, val_items = split_by_hash(items, cfg.val_fraction)
        tok_texts = train_items

    if cfg.init_from is not None:
        # float32 master weights; LoRA's frozen base is read straight into its training dtype (bf16 on a GPU)
        weights = lora.base_dtype(runs.resolve_device(cfg.device, 0)) if cfg.lora_r else torch.float32
        model = load_model(cfg.init_from, dtype=weights)
        _, family, raw = read_config(cfg.init_from)
        tokenizer = load_tokenizer(cfg.init_from, raw)
        model.config = _with_special_ids(model.config, tokenizer.special, cfg.init_from)
        if cfg.block_size is not None:  # AR twin or full-attention diffusion model -> block diffusion
            model.config = model.config.replace(block_size=cfg.block_size)
        if family != "dream" and not cfg.adapt_from_ar and cfg.objective == "diffusion":
            print(
                f"note: {cfg.init_from} is a causal {family} checkpoint; --adapt-from-ar with --anneal-steps N "
                "anneals its attention from causal to full (docs/training.md)",
                file=sys.stderr,
            )
    else:
        preset = ModelConfig.from_name(cfg.preset)
        if cfg.tokenizer is not None:
            tokenizer = load_tokenizer(cfg.tokenizer)
        else:
            tokenizer = train_bpe(tok_texts, cfg.vocab_size or preset.vocab_size)
        s = tokenizer.special
        config = preset.replace(
            vocab_size=tokenizer.vocab_size,
            mask_token_id=s.mask,
            pad_token_id=s.pad,
            eos_token_id=s.eos,
            bos_token_id=s.bos,
            block_size=cfg.block_size,
        )
        model = DreamModel(config)
        model.init_weights(torch.Generator().manual_seed(cfg.seed))
    _check_model(cfg, model)

    special = tokenizer.special
    if cfg.stage == "sft":
        pad = sft_pad_id(special)
        if model.config.pad_token_id != pad:  # the checkpoint declares the pad its rows were trained with
            model.config = model.config.replace(pad_token_id=pad)

        def encode(pairs: list[tuple[str, str]]) -> TokenRows:
            encoded = []
            end = special.im_end if (cfg.chat and special.im_end is not None) else special.eos
            for prompt, response in pairs:
                text = (
                    tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
                    if cfg.chat
                    else prompt
                )
                encoded.append((tokenizer.encode(text), tokenizer.encode(response) + [end]))
            return sft_rows(encoded, cfg.seq_len, pad_id=pad)

        data = TrainData(encode(train_items), encode(val_items))
    else:
        data = TrainData(
            pack_rows((tokenizer.encode(t) for t in train_items), cfg.seq_len, eos_id=special.eos),
            pack_rows((tokenizer.encode(t) for t in val_items), cfg.seq_len, eos_id=special.eos),
        )
    if len(data.train) == 0:
        raise ConfigError(
            f"the corpus {cfg.data} yields no training rows of seq_len {cfg.seq_len} "
            "(too little text, or every prompt is longer than seq_len)"
        )
    return model, tokenizer, data


def sft_pad_id(special: Any) -> int:
    """The token SFT rows are padded with: ``<|dlm_pad|>`` where the tokenizer's pad is its eos.

    With pad = eos, ~80% of a row's loss terms are end tokens and the model learns to commit the end run
    first (the decoders then squeeze the code into what is left); DiffuCoder-Instruct pads with
    ``<|dlm_pad|>`` and keeps a single eos after the response."""
    if special.pad == special.eos and getattr(special, "dlm_pad", None) is not None:
        return int(special.dlm_pad)
    return int(special.pad)


def _with_special_ids(config: Any, special: Any, source: str) -> Any:
    """Fill the special ids a causal checkpoint lacks (Qwen2 has no mask token; often no pad id) from its
    tokenizer, so the adapted model's Dream config.json carries them. Ids the config has are kept."""
    filled = {
        name: value
        for name, value in (
            ("mask_token_id", special.mask),
            ("pad_token_id", special.pad),
            ("eos_token_id", special.eos),
            ("bos_token_id", special.bos),
        )
        if getattr(config, name) is None and value is not None
    }
    try:
        return config.replace(**filled) if filled else config
    except ConfigError as err:  # ModelConfig checks each id against the vocabulary
        raise ConfigError(
            f"{source}: its tokenizer's special ids do not fit the model ({err}); resize the embeddings first"
        ) from None


def _check_model(cfg: TrainConfig, model: DreamModel) -> None:
    limit = model.config.max_position_embeddings
    if cfg.seq_len > limit:
        raise ConfigError(f"seq_len {cfg.seq_len} exceeds the model's max_position_embeddings ({limit})")
    if model.config.mask_token_id is None and cfg.objective == "diffusion":
        raise ConfigError("the model config has no mask_token_id; a diffusion model needs one")


def _stop_id(cfg: TrainConfig, model_config: Any, tokenizer: Any) -> int | None:
    """The token that ends an SFT response (what an AR model stops at)."""
    special = getattr(tokenizer, "special", None)
    if cfg.chat and special is not None and special.im_end is not None:
        return special.im_end
    return model_config.eos_token_id


# ----------------------------------------------------------------------------------------------------------
# Checkpoints


def _state_options(**extra: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Full (unsharded) tensors on the CPU: under FSDP they are all-gathered and only rank 0 keeps them, so a
    # checkpoint has exactly the single-process layout and either kind of run can resume the other.
    return StateDictOptions(full_state_dict=True, cpu_offload=True, **extra)


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model state, optimizer state) as full CPU tensors keyed by parameter name. A collective under FSDP:
    every rank must call it; rank 0 gets the tensors (other ranks may get empty dicts)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    options = _state_options()
    return get_model_state_dict(model, options=options), optimizer_state(model, optimizer)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state as full CPU tensors keyed by parameter name (a collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_state_options())


def plain_model(config: Any, state: dict[str, torch.Tensor]) -> DreamModel:
    """A ``DreamModel`` that adopts ``state``'s tensors (no copy: built on ``meta``, then assigned)."""
    with torch.device("meta"):
        model = DreamModel(config)
    model.load_state_dict(state, strict=not config.tie_word_embeddings, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model


def load_full_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, checkpoint: Path, *, rank: int, world: int
) -> None:
    """Load a checkpoint's weights and optimizer state into a (possibly DDP- or FSDP-wrapped) model.

    Rank 0 reads the files; with several processes the tensors are broadcast from it and each rank keeps
    its shard. A legacy checkpoint (optimizer inside ``trainer_state.pt``, keyed by parameter index) is
    loaded with ``optimizer.load_state_dict``, which only works for unsharded parameters."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    from unmask.checkpoint import load_model

    options = _state_options(broadcast_from_rank0=world > 1)
    legacy = not (checkpoint / OPTIMIZER_FILE).is_file()
    model_state: dict[str, Any] = {}
    optim_state: dict[str, Any] = {}
    if rank == 0 or world == 1:
        model_state = load_model(checkpoint, dtype="float32").state_dict()
        if not legacy:
            optim_state = torch.load(checkpoint / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    set_model_state_dict(model, model_state, options=options)
    if legacy:
        from torch.distributed.tensor import DTensor

        if any(isinstance(p, DTensor) for p in model.parameters()):
            raise ConfigError(
                f"{checkpoint} is an old-format checkpoint (optimizer state keyed by index); resume it once "
                "without --distributed fsdp, then continue under FSDP"
            )
        state = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        return
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)


def load_adapter_state(model: Any, optimizer: torch.optim.Optimizer, checkpoint: Path) -> None:
    """A LoRA checkpoint's adapter weights and optimizer state into the PeftModel ``model`` (whose base is in place);
    every rank reads the files, which are small."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    lora.load_adapter(model, checkpoint)
    optim_state = torch.load(checkpoint / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    set_optimizer_state_dict(model, optimizer, optim_state, options=_state_options())


# ----------------------------------------------------------------------------------------------------------
# The loop


@torch.no_grad()
def evaluate(
    model: DreamModel,
    data: TokenRows,
    cfg: TrainConfig,
    *,
    step: int,
    mask_token_id: int,
    device: torch.device,
    stop_id: int | None = None,
    pad_id: int | None = None,
) -> tuple[float | None, float | None]:
    """(validation loss, validation loss on response tokens) on the first ``eval_batches`` micro-batches with
    a fixed noise seed, so values at different steps are comparable and evaluation consumes none of the
    training randomness.

    The second value (diffusion SFT with a ``pad_id``) counts only the response and its end token, not the
    trailing pads: the pads are most of a row and nearly free to predict, so the whole-row loss hides how
    well the code itself is learned. It is None where it does not apply."""
    if len(data) == 0:
        return None, None
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(cfg.seed + 7919)
    cfg = dataclasses.replace(cfg, block_mask_prob=0.0)  # validation scores the plain ELBO of every run
    batches = []
    total = torch.zeros((), dtype=torch.float64)
    response = _ResponseLoss() if (cfg.stage == "sft" and cfg.objective == "diffusion" and pad_id is not None) else None
    for rows in val_batches(len(data), cfg.batch_size, cfg.eval_batches):
        idx = torch.tensor(list(rows))
        batch = make_batch(
            data.ids[idx],
            data.prompt_lengths[idx],
            step=step,
            cfg=cfg,
            mask_token_id=mask_token_id,
            generator=generator,
            stop_id=stop_id,
        )
        batches.append(batch)
        b = batch.to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = forward_logits(model, b)
        total += _loss_sum(logits, b, cfg).double().cpu()
        if response is not None:
            response.add(logits, b, pad_id, cfg.mask_eps)
    model.train(was_training)
    return float(total / _denominator(batches, cfg)), (None if response is None else response.value())


class _ResponseLoss:
    """Running ELBO restricted to the response tokens (maskable and not pad): a sum and a token count."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, logits: torch.Tensor, batch: Batch, pad_id: int, eps: float) -> None:
        keep = batch.maskable & (batch.targets != pad_id)  # (B, T)
        count = int(keep.sum())
        if count == 0:
            return
        loss, _ = diffusion_loss(logits, batch.targets, batch.masked & keep, batch.t, maskable=keep,
                                 normalizer="tokens", eps=eps)
        self.total += float(loss) * count
        self.count += count

    def value(self) -> float | None:
        return self.total / self.count if self.count else None


def sample_prompts(data: TokenRows, cfg: TrainConfig) -> list[list[int]]:
    """The prompts decoded at each validation: the first ``sample_prompts`` validation rows, cut to their
    prompt (SFT) or to their first 32 tokens (pretraining, where the whole row is text)."""
    prompts = []
    for i in range(min(cfg.sample_prompts, len(data))):
        length = int(data.prompt_lengths[i]) if cfg.stage == "sft" else min(32, data.seq_len)
        prompts.append(data.ids[i, :length].tolist())
    return prompts


@torch.no_grad()
def generate_samples(
    model: torch.nn.Module,
    prompts: list[list[int]],
    cfg: TrainConfig,
    *,
    pad_token_id: int,
    device: torch.device,
) -> list[list[int]]:
    """Greedy completions (``sample_tokens`` ids each) of ``prompts`` with the reference sampler
    (alg entropy, one token per step). Uses its own generator and leaves the model in the mode it found,
    so it consumes none of the training randomness."""
    from unmask.config import DecodeConfig, DecoderConfig
    from unmask.decoding.dispatch import decode as generate

    if not prompts:
        return []
    ids, attention, _ = left_pad(prompts, pad_token_id)  # (B, P)
    decode = DecodeConfig(
        max_new_tokens=cfg.sample_tokens, steps=cfg.sample_tokens, temperature=0.0, alg="entropy"
    )
    was_training = model.training
    model.eval()
    try:
        if cfg.objective == "autoregressive":
            from unmask.autoregressive import generate_ar

            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = generate_ar(model, ids.to(device), attention.to(device), max_new_tokens=cfg.sample_tokens,
                                  pad_id=pad_token_id)
            return out.generated.cpu().tolist()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            result = generate(
                model,
                ids.to(device),
                attention.to(device),
                config=decode,
                # a block-diffusion model runs only its exact block decoder (one token per step, as here)
                decoder=(DecoderConfig() if cfg.block_size is None
                         else DecoderConfig(decoder="blocks", block_length=cfg.block_size)),
                generator=torch.Generator(device=device).manual_seed(cfg.seed + 104729),
            )
    finally:
        model.train(was_training)
    return result.generated.cpu().tolist()  # (B, sample_tokens)


def _sample_record(step: int, prompt: list[int], completion: list[int], tokenizer: Any) -> dict[str, Any]:
    # Text when a tokenizer is known (completions cut at the first stop token); raw ids otherwise.
    if tokenizer is None:
        return {"step": step, "prompt": prompt, "completion": completion}
    return {
        "step": step,
        "prompt": tokenizer.decode(prompt, cut=False, skip_special=False),
        "completion": tokenizer.decode(completion, cut=True, skip_special=True),
    }


def _wrap(model: DreamModel, cfg: TrainConfig, world: int, device: torch.device) -> torch.nn.Module:
    """DDP or FSDP2 (``fsdp_shard``) around ``model`` when running with several processes; the model itself
    otherwise."""
    if world == 1:
        return model
    if cfg.distributed == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return fsdp_shard(model, world, device)


def fsdp_shard(model: DreamModel, world: int, device: torch.device) -> DreamModel:
    """FSDP2 in place over a process group of ``world`` ranks: ``fully_shard`` each decoder layer, then the root
    (embeddings, final norm, lm_head); on CUDA parameters are all-gathered in bf16 and gradients reduced in fp32.
    Build the optimiser afterwards, so that it holds the sharded parameters. (``bench/gpu_check.py`` shards over
    a group of one.)"""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if device.type == "cuda":
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (world,))
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if device.type == "cuda"
        else MixedPrecisionPolicy()
    )
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def _as_float(value: torch.Tensor) -> float:
    # clip_grad_norm_ over FSDP's DTensor parameters returns a (replicated) DTensor
    full = getattr(value, "full_tensor", None)
    return float(full() if full is not None else value)


def train(
    cfg: TrainConfig,
    *,
    model: DreamModel | None = None,
    tokenizer: Any = None,
    data: TrainData | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train per ``cfg``; ``model``/``tokenizer``/``data`` default to ``prepare(cfg)``.

    Joins the process group when launched by torchrun (``WORLD_SIZE`` > 1; gloo on CPU, nccl on GPU).
    ``on_step(step, record)`` is called on every rank after each optimiser step (for tests and tools).
    """
    with runs.process_group(cfg.device):
        return _train(cfg, model, tokenizer, data, on_step)


@dataclass(frozen=True)
class _Run:
    """What the loop works with, built once by ``_setup``. ``model`` is the module itself (under FSDP: the
    sharded one), ``wrapped`` what the forward runs through (DDP's wrapper, or ``model``)."""

    cfg: TrainConfig
    rank: int
    world: int
    run_dir: Path
    model: DreamModel
    wrapped: torch.nn.Module
    model_config: Any  # the config the checkpoints declare (read before wrapping)
    tokenizer: Any
    data: TrainData
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: EpochSampler
    noise: torch.Generator
    mask_id: int
    stop_id: int | None
    pad_id: int
    prompts: list[list[int]]
    start: int  # the step the run starts from: 0, or the resumed checkpoint's
    base: Path | None  # LoRA: the directory of the frozen base (``model`` is then a PeftModel); None: all weights

    @property
    def fsdp(self) -> bool:
        return self.world > 1 and self.cfg.distributed == "fsdp"


class _Throughput:
    """Tokens per second over the steps since the last logged line."""

    def __init__(self, tokens_per_step: int) -> None:
        self.tokens_per_step = tokens_per_step
        self.start, self.steps, self.last = time.perf_counter(), 0, 0.0

    def rate(self) -> float:
        """The window's rate; a new window starts."""
        elapsed = time.perf_counter() - self.start
        self.last = round(self.steps * self.tokens_per_step / max(elapsed, 1e-9), 1)
        self.start, self.steps = time.perf_counter(), 0
        return self.last


def _train(
    cfg: TrainConfig,
    model: DreamModel | None,
    tokenizer: Any,
    data: TrainData | None,
    on_step: Callable[[int, dict[str, Any]], None] | None,
) -> TrainResult:
    run = _setup(cfg, model, tokenizer, data)
    step, history = runs.drive(run, cfg, desc="train", on_step=on_step, steps=_steps)
    return TrainResult(step=step, history=history, run_dir=run.run_dir)


def _steps(run: _Run, loop: runs.StepLoop) -> int:
    """Step, log, validate and save until this invocation's last step; the step it stopped at."""
    cfg, step = run.cfg, run.start
    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len
    throughput = _Throughput(tokens_per_step)
    while step < loop.end:
        batches = _draw_batches(run, step)
        stats = _train_step(run, batches)
        step += 1
        throughput.steps += 1
        record: dict[str, Any] = {
            "step": step,
            **stats,
            "epoch": round(run.sampler.epochs_done, 4),
            "tokens": step * tokens_per_step,
            "anneal_fraction": batches[0].anneal_fraction,
        }
        # Under FSDP every forward is a collective, so all ranks validate (identically); only rank 0 writes.
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps) and (run.rank == 0 or run.fsdp):
            record.update(_validate(run, step))
        if loop.due(step, cfg.log_every) or "val_loss" in record:
            record["tokens_per_s"] = throughput.rate()
            if run.rank == 0:
                loop.log(record)
        loop.finished(step, record, loss=f"{record['loss']:.4f}", tok_s=f"{throughput.last:,.0f}")
        if loop.due(step, cfg.save_every):
            _save(run, step)
    return step


def _setup(cfg: TrainConfig, model: DreamModel | None, tokenizer: Any, data: TrainData | None) -> _Run:
    """Everything before the first step: checks, model on its device (wrapped), optimiser, RNG, resume."""
    rank, world = runs.distributed()
    if cfg.batch_size % world:
        raise ConfigError(
            f"batch_size {cfg.batch_size} must be divisible by the number of processes ({world})"
        )
    trackers.check_installed(cfg.report_to)
    run_dir = Path(cfg.run_dir)
    resume_from = runs.resume_point(run_dir, cfg.resume)
    if cfg.resume and resume_from is None and rank == 0:
        print(f"note: no checkpoint in {run_dir}; starting a fresh run", file=sys.stderr)
    if resume_from is not None:
        lora.check_resume(resume_from, cfg.lora_r)
    start = cfg.init_from if model is None or data is None else None  # the directory the weights come from
    model, tokenizer, data = _load(cfg, model, tokenizer, data, resume_from)
    cfg = _resolve_block_size(cfg, model)
    # The AR baseline never masks: without a mask id in its config, -1 keeps the shared code paths uniform.
    mask_id = int(model.config.mask_token_id) if model.config.mask_token_id is not None else -1
    model_config = model.config
    stop_id = _stop_id(cfg, model_config, tokenizer)
    device = runs.resolve_device(cfg.device, rank)
    model = model.to(device=device, dtype=lora.base_dtype(device) if cfg.lora_r else torch.float32)
    model.gradient_checkpointing = cfg.gradient_checkpointing
    base = None
    if cfg.lora_r:  # adapters on a frozen base, which stays in its directory (every checkpoint names it)
        base = (lora.base_of(resume_from) if resume_from is not None
                else lora.keep_base(run_dir, start, model, tokenizer, write=rank == 0))
        model = lora.attach(model, cfg, seed=cfg.seed)
    model.train()
    # Under FSDP the model itself becomes the sharded module (fully_shard works in place); the optimiser is
    # built afterwards so that it holds the sharded parameters.
    wrapped = _wrap(model, cfg, world, device)
    optimizer, scheduler = _optimizer(model, cfg)
    sampler = EpochSampler(len(data.train), cfg.seed + 1)
    noise = torch.Generator().manual_seed(cfg.seed + 2)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    step = 0
    if resume_from is not None:
        step = _resume(resume_from, model, optimizer, scheduler, sampler, noise, rank=rank, world=world,
                       adapters=base is not None)
    if rank == 0:
        runs.start_run_dir(run_dir, "run_config.json", cfg.to_dict(), resumed_at=None if resume_from is None else step,
                      logs=("metrics.jsonl", "samples.jsonl"))
    prompts = sample_prompts(data.val, cfg)
    pad_id = model_config.pad_token_id if model_config.pad_token_id is not None else mask_id
    return _Run(cfg, rank, world, run_dir, model, wrapped, model_config, tokenizer, data, device, optimizer,
                scheduler, sampler, noise, mask_id, stop_id, pad_id, prompts, step, base)


def _load(
    cfg: TrainConfig, model: DreamModel | None, tokenizer: Any, data: TrainData | None, resume_from: Path | None
) -> tuple[DreamModel, Any, TrainData]:
    """The given model and data, or ``prepare``'s; checked against ``cfg``."""
    # A resumed run takes its model and tokenizer from the checkpoint (no BPE retraining); a LoRA run from its base.
    base = lora.base_of(resume_from) if resume_from is not None and cfg.lora_r else None
    if model is None or data is None:
        source = (
            cfg
            if resume_from is None
            else dataclasses.replace(cfg, init_from=str(base or resume_from), tokenizer=None)
        )
        model, tokenizer, data = prepare(source)
    elif base is not None:
        lora.restore_base(model, base)  # the weights come from disk, as a full-weight resume's do
    _check_model(cfg, model)
    if data.train.seq_len != cfg.seq_len:
        raise ConfigError(f"data rows have length {data.train.seq_len} but seq_len is {cfg.seq_len}")
    return model, tokenizer, data


def _resolve_block_size(cfg: TrainConfig, model: DreamModel) -> TrainConfig:
    """One block size for the run: the config's (which the model then adopts) or else the model's own (which the
    saved run config then records); None for full attention."""
    if cfg.block_size is None:
        return dataclasses.replace(cfg, block_size=model.config.block_size)
    if model.config.block_size != cfg.block_size:
        model.config = model.config.replace(block_size=cfg.block_size)
    return cfg


def _optimizer(model: DreamModel, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its warm-up + cosine schedule (``lr_factor``)."""
    optimizer = runs.adamw(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(
            s, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, min_lr_ratio=cfg.min_lr_ratio
        ),
    )
    return optimizer, scheduler


def _resume(
    checkpoint: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    sampler: EpochSampler,
    noise: torch.Generator,
    *,
    rank: int,
    world: int,
    adapters: bool,
) -> int:
    """Restore weights (``adapters``: a LoRA run's adapters), optimiser, schedule, sampler position and every
    RNG; the checkpoint's step."""
    if adapters:
        load_adapter_state(model, optimizer, checkpoint)
    else:
        load_full_state(model, optimizer, checkpoint, rank=rank, world=world)
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    noise.set_state(state["noise_generator"])
    runs.set_rng_state(state["rng"])
    return int(state["step"])


def _draw_batches(run: _Run, step: int) -> list[Batch]:
    """The step's ``grad_accum`` global micro-batches. Every rank makes identical draws and keeps its rows."""
    cfg, train_rows = run.cfg, run.data.train
    batches = []
    for _ in range(cfg.grad_accum):
        idx = run.sampler.next(cfg.batch_size)
        batches.append(
            make_batch(
                train_rows.ids[idx],
                train_rows.prompt_lengths[idx],
                step=step,
                cfg=cfg,
                mask_token_id=run.mask_id,
                generator=run.noise,
                stop_id=run.stop_id,
            )
        )
    return batches


def _train_step(run: _Run, batches: list[Batch]) -> dict[str, float]:
    """One optimiser step on this rank's rows of ``batches``: loss, learning rate and gradient norm."""
    cfg, world = run.cfg, run.world
    local = cfg.batch_size // world
    denominator = _denominator(batches, cfg)
    step_loss = torch.zeros((), dtype=torch.float64, device=run.device)
    for micro, batch in enumerate(batches):
        mine = batch.rows(run.rank * local, (run.rank + 1) * local).to(run.device)
        with _gradient_sync(run, micro == len(batches) - 1):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=run.device.type == "cuda"):
                logits = forward_logits(run.wrapped, mine)  # (b, T, V)
            loss_sum = _loss_sum(logits, mine, cfg)
            (loss_sum * (world / denominator)).backward()
        step_loss += loss_sum.detach().double()
    if world > 1:
        dist.all_reduce(step_loss)
    grad_norm = (
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
        if cfg.grad_clip > 0
        else torch.zeros(())
    )
    lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return {"loss": float(step_loss) / denominator, "lr": lr, "grad_norm": _as_float(grad_norm)}


def _gradient_sync(run: _Run, sync: bool) -> contextlib.AbstractContextManager:
    """The context of one micro-batch's backward: gradients are reduced across ranks only when ``sync``."""
    if run.fsdp:
        # accumulate unsharded gradients; reduce-scatter once, after the last micro-batch
        run.wrapped.set_requires_gradient_sync(sync)  # type: ignore[operator]
    elif run.world > 1 and not sync:
        return run.wrapped.no_sync()  # type: ignore[operator]
    return contextlib.nullcontext()


def _validate(run: _Run, step: int) -> dict[str, float]:
    """Validation losses and sample completions (written to ``samples.jsonl``); the metrics on rank 0."""
    val_loss, val_response = evaluate(run.model, run.data.val, run.cfg, step=step, mask_token_id=run.mask_id,
                                      device=run.device, stop_id=run.stop_id, pad_id=run.pad_id)
    completions = generate_samples(run.model, run.prompts, run.cfg, pad_token_id=run.pad_id, device=run.device)
    if run.rank != 0:
        return {}
    metrics = {"val_loss": val_loss}
    if val_response is not None:
        metrics["val_response_loss"] = val_response
    if run.prompts:
        _write_samples(run.run_dir / "samples.jsonl", step, run.prompts, completions, run.tokenizer)
    return metrics


def _save(run: _Run, step: int) -> None:
    """A checkpoint of ``step``: gathered on every rank (a collective under FSDP), written by rank 0."""
    cfg = run.cfg
    if run.base is not None:  # LoRA: peft writes the adapter weights; the base stays where it is
        model_state, optim_state = {}, optimizer_state(run.model, run.optimizer)
    else:
        model_state, optim_state = full_state(run.model, run.optimizer)  # a collective under FSDP
    if run.rank == 0:
        trainer_state = {
            "step": step,
            "scheduler": run.scheduler.state_dict(),
            "sampler": run.sampler.state_dict(),
            "noise_generator": run.noise.get_state(),
            "rng": runs.rng_state(),
            "config": cfg.to_dict(),
        }
        runs.save_checkpoint(
            run.run_dir,
            run.model if run.base is not None else plain_model(run.model_config, model_state),
            run.tokenizer,
            trainer_state,
            cfg.keep_checkpoints,
            optimizer_state=optim_state,
            family="qwen2" if cfg.objective == "autoregressive" else "dream",
            adapter=None if run.base is None else functools.partial(lora.save_adapter, run.model, base=run.base),
        )
    del model_state, optim_state
    if run.world > 1:
        dist.barrier()


def _write_samples(
    path: Path, step: int, prompts: list[list[int]], completions: list[list[int]], tokenizer: Any
) -> None:
    """Append one ``{"step", "prompt", "completion"}`` line per prompt and echo it above the progress bar."""
    from tqdm import tqdm

    records = [_sample_record(step, p, c, tokenizer) for p, c in zip(prompts, completions)]
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    for record in records:
        tqdm.write(f"[step {step}] {record['prompt']!r} -> {record['completion']!r}", file=sys.stderr)
