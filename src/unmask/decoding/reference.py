"""The reference sampler: Dream's ``diffusion_generate`` semantics (docs/sampler.md). Ids in, ids out.

A canvas is a (B, T) id tensor in which some positions hold the mask token; ``generate`` builds it as
prompt + ``max_new_tokens`` masks, ``denoise`` accepts masks anywhere (infilling). Each step is one full
forward pass over the canvas; committed positions never change again.

Schedule: ``ts = linspace(1, eps, steps + 1)`` in float32, as Dream. At step i (t = ts[i], s = ts[i+1]):
- ``origin``: each masked position is committed independently with probability 1 - s/t (all at the last
  step), its token drawn from the filtered distribution.
- otherwise: every masked position gets a candidate x0 and a confidence (``maskgit_plus`` p(x0),
  ``topk_margin`` p1 - p2, ``entropy`` sum p log p); ``k = int(m * (1 - s/t))`` of them (all at the last
  step) are committed: the k most confident, or — with ``alg_temp`` > 0 — k drawn without replacement
  from softmax(confidence / alg_temp).

Exactly Dream's arithmetic, so with steps == max_new_tokens the first step commits int(0.999 L / L) = 0
tokens and the last step two. Two deliberate differences, both only where Dream misbehaves:
- ``m`` is each row's own masked count. Dream uses the batch mean, which equals it whenever rows have the
  same number of masks (always, for ``generate``); with unequal counts Dream could pick an already
  committed position (and overwrite it with a mask) or leave masks after the last step.
- Probabilities and confidences are computed in float32 even for bf16 models (see ``sampling``).
- The mask token itself is never sampled (committing it would leave the position masked).

Randomness comes only from the explicit ``generator``: same seed, same output.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from unmask.config import DecodeConfig
from unmask.decoding.eos import default_stop_ids, demote_early_stops
from unmask.decoding.sampling import sample_tokens
from unmask.decoding.trace import DecodeTrace
from unmask.diffusion import shift_logits
from unmask.errors import ConfigError
from unmask.model import padding_attention_mask, positions_from_mask

log = logging.getLogger(__name__)


def dream_timesteps(steps: int, eps: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """(steps + 1,) float32 timesteps from 1 down to eps, Dream's schedule."""
    return torch.linspace(1, eps, steps + 1, device=device)


def reveal_counts(masked: torch.Tensor, t: torch.Tensor, s: torch.Tensor, last: bool) -> torch.Tensor:
    """Tokens to commit per row: int(m * (1 - s/t)) in float32, or all m at the last step. masked: (B,) long."""
    if last:
        return masked.clone()
    return (masked.float() * (1 - s / t)).long()


@dataclass
class DecodeStep:
    """One step of a streaming decode: the canvas after the step and what it committed."""

    step: int
    canvas: torch.Tensor  # (B, T) ids after this step (a view of the working canvas: clone to keep)
    committed: torch.Tensor  # (B, T) bool, positions committed at this step
    confidence: torch.Tensor  # (B, T) float32, confidence of committed positions (0 elsewhere)
    forwards: int = 1  # model calls this step made (0: a step skipped losslessly; the draft round's call is 1)
    canvases: int = 1  # canvases those calls evaluated per row (a draft-and-verify round evaluates several)


@dataclass
class DecodeStats:
    forward_passes: int = 0  # sequential model calls (the latency unit: tokens per forward uses it)
    tokens_committed: int = 0
    seconds: float = 0.0
    canvas_forwards: int = 0  # canvases evaluated (compute); > forward_passes when drafts are batched
    useful_tokens: int | None = None  # tokens before the first eos/pad, summed over rows (when known)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_committed / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens_committed / self.forward_passes if self.forward_passes else 0.0

    def to_json(self) -> dict:
        return {"forward_passes": self.forward_passes, "tokens_committed": self.tokens_committed,
                "seconds": round(self.seconds, 4), "tokens_per_second": round(self.tokens_per_second, 2),
                "tokens_per_forward": round(self.tokens_per_forward, 3),
                **({"canvas_forwards": self.canvas_forwards} if self.canvas_forwards else {}),
                **({} if self.useful_tokens is None else {
                    "useful_tokens": self.useful_tokens,
                    "useful_tokens_per_second": round(self.useful_tokens / self.seconds, 2) if self.seconds else 0.0})}


@dataclass
class DecodeResult:
    sequences: torch.Tensor  # (B, T) final canvas
    region_start: int  # canvas index where the generated region starts (= padded prompt length)
    stats: DecodeStats = field(default_factory=DecodeStats)
    trace: DecodeTrace | None = None

    @property
    def generated(self) -> torch.Tensor:
        return self.sequences[:, self.region_start:]


def reference_step(logits: torch.Tensor, canvas: torch.Tensor, masked: torch.Tensor, step: int,
                   timesteps: torch.Tensor, config: DecodeConfig, generator: torch.Generator | None,
                   mask_token_id: int, stop_ids: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Commit tokens for one step. Pure apart from the generator; returns (committed (B,T) bool, conf (B,T)).

    logits: (B, T, V) ALIGNED predictions; canvas: (B, T) ids, updated in place; masked: (B, T) bool.
    With ``config.stop_last``, candidates in ``stop_ids`` that have a mask to their left are ranked last
    (``eos.demote_early_stops``); the reported confidence stays the model's.
    """
    t, s = timesteps[step], timesteps[step + 1]
    last = step == config.steps - 1
    batch, length = canvas.shape
    committed = torch.zeros_like(masked)
    conf_out = torch.zeros(canvas.shape, dtype=torch.float32, device=canvas.device)
    mask_logits = logits[masked].float()  # (N, V) in row-major order of the masked positions
    # The mask token is never a valid output: committing it would leave the position masked. Trained models
    # give it ~0 probability anyway, so excluding it changes nothing for them and guarantees progress.
    mask_logits[:, mask_token_id] = torch.finfo(mask_logits.dtype).min
    sample = dict(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k, generator=generator)

    if config.alg == "origin":
        p_transfer = 1.0 if last else float(1 - s / t)
        draw = torch.rand(mask_logits.shape[0], generator=generator, device=canvas.device) < p_transfer
        x0, conf = sample_tokens(mask_logits[draw], **sample)
        flat = masked.nonzero(as_tuple=True)
        rows, cols = flat[0][draw], flat[1][draw]
        canvas[rows, cols] = x0
        committed[rows, cols] = True
        conf_out[rows, cols] = conf
        return committed, conf_out

    x0, conf = sample_tokens(mask_logits, confidence=config.alg, **sample)
    full_conf = torch.full(canvas.shape, float("-inf"), device=canvas.device)
    full_conf[masked] = conf
    candidates = torch.zeros_like(canvas)
    candidates[masked] = x0
    ranking = full_conf
    if config.stop_last and stop_ids:
        ranking = demote_early_stops(full_conf, candidates, masked, stop_ids)
    counts = reveal_counts(masked.sum(-1), t, s, last)  # (B,)
    counts_list = counts.tolist()
    for row_group in _same_count_groups(counts_list):
        k = counts_list[row_group[0]]
        if k == 0:
            continue
        rows = torch.tensor(row_group, device=canvas.device)
        scores = ranking[rows]  # (b, T)
        if config.alg_temp > 0:
            # k draws without replacement from softmax(scores / alg_temp), as Gumbel-top-k: the same
            # (Plackett-Luce) distribution as torch.multinomial, but it cannot fail when softmax underflows
            # to zero for some masked positions.
            exp1 = torch.empty(scores.shape, device=scores.device).exponential_(generator=generator)
            gumbel = -torch.log(exp1)  # Gumbel(0, 1) noise, since -log(Exp(1)) ~ Gumbel
            picks = torch.topk(scores / config.alg_temp + gumbel, k, dim=-1).indices  # (b, k)
        else:
            picks = torch.topk(scores, k, dim=-1).indices  # (b, k)
        row_idx = rows[:, None].expand_as(picks)
        canvas[row_idx, picks] = candidates[row_idx, picks]
        committed[row_idx, picks] = True
        conf_out[row_idx, picks] = full_conf[row_idx, picks]
    return committed, conf_out


def _same_count_groups(counts: list[int]) -> list[list[int]]:
    """Rows grouped by reveal count, so equal-count batches (the usual case) take one batched call."""
    groups: dict[int, list[int]] = {}
    for row, k in enumerate(counts):
        groups.setdefault(k, []).append(row)
    return list(groups.values())


def _check_canvas(canvas: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    if canvas.dim() != 2 or canvas.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"input ids must be a (batch, length) integer tensor, got {tuple(canvas.shape)} "
                         f"{canvas.dtype}")
    if attention_mask is None:
        return
    if attention_mask.shape != canvas.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match the ids "
                         f"{tuple(canvas.shape)}")
    am = attention_mask.long()
    if bool((am[:, 1:] < am[:, :-1]).any()):
        raise ValueError("prompts must be left-padded: attention_mask must be 0…0 1…1 in every row")
    if bool((am.sum(-1) == 0).any()):
        raise ValueError("every row needs at least one real token (attention_mask is all zero in a row)")


@torch.inference_mode()
def denoise_stream(model, canvas: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                   config: DecodeConfig, mask_token_id: int, generator: torch.Generator | None = None,
                   stop_ids: tuple[int, ...] = ()) -> Iterator[DecodeStep]:
    """Denoise every mask in ``canvas`` (B, T), yielding the canvas after each step.

    The caller's tensor is not modified. Pads (attention_mask == 0) are never masks to fill. ``stop_ids``
    are the end tokens ``config.stop_last`` holds back.
    """
    _check_canvas(canvas, attention_mask)
    x = canvas.to(model.device, dtype=torch.long).clone()
    real = None if attention_mask is None else attention_mask.to(model.device).bool()
    mask4 = None if real is None else padding_attention_mask(real)
    positions = None if real is None else positions_from_mask(real)
    if x.shape[1] > model.config.max_position_embeddings:
        log.warning("canvas length %d exceeds the model's max_position_embeddings %d", x.shape[1],
                    model.config.max_position_embeddings)
    timesteps = dream_timesteps(config.steps, config.eps, x.device)
    for step in range(config.steps):
        masked = x == mask_token_id
        if real is not None:
            masked &= real
        logits = shift_logits(model(x, attention_mask=mask4, position_ids=positions))  # (B, T, V)
        committed, conf = reference_step(logits, x, masked, step, timesteps, config, generator, mask_token_id,
                                         stop_ids)
        yield DecodeStep(step, x, committed, conf)


def denoise(model, canvas: torch.Tensor, attention_mask: torch.Tensor | None = None, *, config: DecodeConfig,
            mask_token_id: int, generator: torch.Generator | None = None, trace: bool = False,
            region_start: int = 0, on_step: Callable[[DecodeStep], None] | None = None,
            stop_ids: tuple[int, ...] = ()) -> DecodeResult:
    """Run ``denoise_stream`` to the end; optionally record a decode trace and call ``on_step`` after each
    step (e.g. a live view; its time counts in the stats)."""
    stats = DecodeStats()
    record = DecodeTrace.empty(canvas.shape[0], region_start) if trace else None
    start = time.perf_counter()
    final = canvas
    for event in denoise_stream(model, canvas, attention_mask, config=config, mask_token_id=mask_token_id,
                                generator=generator, stop_ids=stop_ids):
        stats.forward_passes += 1
        stats.tokens_committed += int(event.committed.sum())
        if record is not None:
            record.add_step(event.committed, event.canvas, event.confidence)
        if on_step is not None:
            on_step(event)
        final = event.canvas
    stats.seconds = time.perf_counter() - start
    return DecodeResult(final.clone(), region_start, stats, record)


def require_mask_id(model) -> int:
    """The model's mask id, or a ``ConfigError`` that says what to do with a model that has none."""
    mask_id = model.config.mask_token_id
    if mask_id is None:
        hint = (" (it is a causal qwen2 checkpoint: decode it left to right with "
                "unmask.autoregressive.generate_ar, or time it with bench/decode.py --ar-model)"
                if getattr(model, "causal", False) else "")
        raise ConfigError("the model's config has no mask_token_id, so it cannot be sampled as a diffusion model"
                          + hint)
    return int(mask_id)


def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
             config: DecodeConfig | None = None, generator: torch.Generator | None = None, seed: int | None = None,
             trace: bool = False, **params) -> DecodeResult:
    """Append ``max_new_tokens`` masks to the (left-padded) prompts and denoise them.

    Parameters not given fall back to the model's generation_config.json (when loaded with
    ``unmask.load``), then to ``DecodeConfig`` defaults. ``seed`` makes a generator when none is given.
    """
    base = config or getattr(model, "generation_defaults", None) or DecodeConfig()
    config = base.replace(**params) if params else base
    mask_id = require_mask_id(model)
    _check_canvas(input_ids, attention_mask)
    if generator is None:
        generator = torch.Generator(device=model.device)
        generator.manual_seed(0 if seed is None else seed)
    batch, prompt_len = input_ids.shape
    masks = torch.full((batch, config.max_new_tokens), mask_id, dtype=torch.long, device=input_ids.device)
    canvas = torch.cat([input_ids.long(), masks], dim=1)
    full_mask = None
    if attention_mask is not None and not bool(attention_mask.bool().all()):
        full_mask = torch.cat([attention_mask.long(), torch.ones_like(masks)], dim=1)
    return denoise(model, canvas, full_mask, config=config, mask_token_id=mask_id, generator=generator,
                   trace=trace, region_start=prompt_len, stop_ids=default_stop_ids(model.config))
