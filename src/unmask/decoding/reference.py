"""The reference sampler: Dream's ``diffusion_generate`` semantics (docs/sampler.md). Ids in, ids out.

A canvas is a (B, T) id tensor in which some positions hold the mask token, anywhere (``dispatch.decode``
builds prompt + ``max_new_tokens`` masks; infilling puts them between texts). ``reference_step`` is one step of
Dream's sampler, ``denoise_stream`` the loop over the steps; each step is one full forward pass over the canvas;
committed positions never change again (but see ``dream_positions``).

Schedule: ``ts = linspace(1, eps, steps + 1)`` in float32, as Dream. At step i (t = ts[i], s = ts[i+1]):
- ``origin``: each masked position is committed independently with probability 1 - s/t (all at the last
  step), its token drawn from the filtered distribution.
- otherwise: every masked position gets a candidate x0 and a confidence (``maskgit_plus`` p(x0),
  ``topk_margin`` p1 - p2, ``entropy`` sum p log p); ``k = int(m * (1 - s/t))`` of them (all at the last
  step) are committed: the k most confident, or — with ``alg_temp`` > 0 — k drawn without replacement
  from softmax(confidence / alg_temp).

Exactly Dream's arithmetic, so with steps == max_new_tokens the first step commits int(0.999 L / L) = 0
tokens and the last step two. Deliberate differences, each only where Dream misbehaves or where exact float
behaviour is unattainable anyway (docs/sampler.md):
- ``m`` is each row's own masked count. Dream uses the batch mean, which equals it whenever rows have the
  same number of masks (always, for ``generate``); with unequal counts Dream could pick an already
  committed position (and overwrite it with a mask) or leave masks after the last step.
- Probabilities and confidences are computed in float32 even for bf16 models (see ``sampling``).
- The mask token itself is never sampled (committing it would leave the position masked).
- ``alg_temp`` > 0 draws the order by Gumbel-top-k rather than ``torch.multinomial``.
``config.dream_compat`` drops all four and, with the top-k Dream's call inherits, reproduces its output ids
(``dream_positions``; tests/test_dream_compat.py checks them against ids Dream's own code produced).

Randomness comes only from the explicit ``generator``: same seed, same output.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch

from unmask.config import DecodeConfig
from unmask.decoding.canvas import check_canvas
from unmask.decoding.eos import demote_early_stops
from unmask.decoding.sampling import gumbel_scores, sample_tokens
from unmask.decoding.steps import DecodeResult, DecodeStep, commit_logprobs, run_steps
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


def reference_step(logits: torch.Tensor, canvas: torch.Tensor, masked: torch.Tensor, step: int,
                   timesteps: torch.Tensor, config: DecodeConfig, generator: torch.Generator | None,
                   mask_token_id: int, stop_ids: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Commit tokens for one step. Pure apart from the generator; returns (committed (B,T) bool, conf (B,T)).

    logits: (B, T, V) ALIGNED predictions; canvas: (B, T) ids, updated in place; masked: (B, T) bool.
    With ``config.stop_last``, candidates in ``stop_ids`` that have a mask to their left are ranked last
    (``eos.demote_early_stops``); the reported confidence stays the model's. With ``config.dream_compat`` the
    step is Dream's to the bit (``dream_positions``): a position that receives the mask token stays masked and
    does not count as committed.
    """
    t, s = timesteps[step], timesteps[step + 1]
    last = step == config.steps - 1
    dream = config.dream_compat
    mask_logits = logits[masked]  # (N, V), a copy, in row-major order of the masked positions
    if not dream:
        # The mask token is never a valid output: committing it would leave the position masked. Trained models
        # give it ~0 probability anyway, so excluding it changes nothing for them and guarantees progress.
        mask_logits = mask_logits.float()
        mask_logits[:, mask_token_id] = torch.finfo(mask_logits.dtype).min
    top_p, top_k = config.token_filters
    sample = dict(temperature=config.temperature, top_p=top_p, top_k=top_k, generator=generator, dream=dream)

    if config.alg == "origin":
        p_transfer = 1.0 if last else float(1 - s / t)
        draw = torch.rand(mask_logits.shape[0], generator=generator, device=canvas.device) < p_transfer
        x0, conf = sample_tokens(mask_logits[draw], **sample)
        flat = masked.nonzero(as_tuple=True)
        rows, cols = flat[0][draw], flat[1][draw]
        canvas[rows, cols] = x0
        committed = torch.zeros_like(masked)
        committed[rows, cols] = x0 != mask_token_id
        conf_out = torch.zeros(canvas.shape, dtype=torch.float32, device=canvas.device)
        conf_out[rows, cols] = conf.float()
        return committed, conf_out.masked_fill_(~committed, 0)

    x0, conf = sample_tokens(mask_logits, confidence=config.alg, **sample)
    full_conf = torch.full(canvas.shape, float("-inf"), dtype=conf.dtype, device=canvas.device)
    full_conf[masked] = conf
    candidates = torch.full_like(canvas, mask_token_id)  # what a pick writes: the mask itself off the masked set
    candidates[masked] = x0
    if dream:
        picks = dream_positions(full_conf, masked, t, s, last, config.alg_temp, generator)
        groups = [] if picks is None else [(torch.arange(canvas.shape[0], device=canvas.device), picks)]
    else:
        ranking = full_conf
        if config.stop_last and stop_ids:
            ranking = demote_early_stops(full_conf, candidates, masked, stop_ids)
        groups = confident_positions(ranking, reveal_counts(masked.sum(-1), t, s, last), config.alg_temp, generator)
    picked = torch.zeros_like(masked)
    for rows, cols in groups:
        row_idx = rows[:, None].expand_as(cols)
        canvas[row_idx, cols] = candidates[row_idx, cols]
        picked[row_idx, cols] = True
    committed = picked & (canvas != mask_token_id)
    return committed, torch.where(committed, full_conf.float(), 0.0)


def confident_positions(ranking: torch.Tensor, counts: torch.Tensor, alg_temp: float,
                        generator: torch.Generator | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """unmask's choice of positions: each row's ``counts`` (B,) highest of ``ranking`` (B, T), or with ``alg_temp``
    > 0 as many draws without replacement from softmax(ranking / alg_temp) (Gumbel-top-k). Returns (rows (b,),
    columns (b, k)) per group of rows with the same count, so equal-count batches (the usual case) take one call."""
    groups: dict[int, list[int]] = {}
    for row, k in enumerate(counts.tolist()):
        groups.setdefault(k, []).append(row)
    picks = []
    for k, members in groups.items():
        if k == 0:
            continue
        rows = torch.tensor(members, device=ranking.device)
        picks.append((rows, torch.topk(gumbel_scores(ranking[rows], alg_temp, generator), k, dim=-1).indices))
    return picks


def dream_positions(confidence: torch.Tensor, masked: torch.Tensor, t: torch.Tensor, s: torch.Tensor, last: bool,
                    alg_temp: float, generator: torch.Generator | None) -> torch.Tensor | None:
    """Dream's choice of positions, (B, k) columns, or None when k is 0: the same k for every row, from the
    *batch-mean* masked count m (float32): int(m * (1 - s/t)), int(m) at the last step; the k highest of
    ``confidence`` (B, T) (-inf off the masked set), or with ``alg_temp`` > 0 ``torch.multinomial`` without
    replacement from softmax(confidence / alg_temp). A row with fewer than k masks thus gets positions off its
    masked set (Dream writes the mask token there), and one with more keeps some after the last step."""
    mean = masked.sum() / masked.shape[0]  # 0-dim float32, as Dream's mask_index.sum() / batch
    k = int(mean) if last else int(mean * (1 - s / t))
    if k == 0:
        return None
    if alg_temp == 0:
        return torch.topk(confidence, k).indices
    return torch.multinomial((confidence / alg_temp).softmax(-1), k, generator=generator)


@torch.inference_mode()
def denoise_stream(model, canvas: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                   config: DecodeConfig, mask_token_id: int, generator: torch.Generator | None = None,
                   stop_ids: tuple[int, ...] = (), logprobs: int | None = None) -> Iterator[DecodeStep]:
    """Denoise every mask in ``canvas`` (B, T), yielding the canvas after each step.

    The caller's tensor is not modified. Pads (attention_mask == 0) are never masks to fill. ``stop_ids``
    are the end tokens ``config.stop_last`` holds back. ``logprobs`` = k: each step also carries its commits'
    log-probabilities and k alternatives (``steps.commit_logprobs``).
    """
    check_canvas(canvas, attention_mask)
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
        scores = None if logprobs is None else commit_logprobs(logits, committed, x, config, mask_token_id, logprobs)
        yield DecodeStep(step, x, committed, conf, logprobs=scores)


def denoise(model, canvas: torch.Tensor, attention_mask: torch.Tensor | None = None, *, config: DecodeConfig,
            mask_token_id: int, generator: torch.Generator | None = None, trace: bool = False,
            region_start: int = 0, on_step: Callable[[DecodeStep], None] | None = None,
            stop_ids: tuple[int, ...] = ()) -> DecodeResult:
    """Run ``denoise_stream`` to the end (``steps.run_steps``: stats, an optional decode trace, ``on_step`` after
    each step, e.g. a live view; its time counts in the stats)."""
    stream = denoise_stream(model, canvas, attention_mask, config=config, mask_token_id=mask_token_id,
                            generator=generator, stop_ids=stop_ids)
    return run_steps(stream, canvas, region_start=region_start, trace=trace, on_step=on_step)


def require_mask_id(model) -> int:
    """The model's mask id, or a ``ConfigError`` that says what to do with a model that has none."""
    mask_id = model.config.mask_token_id
    if mask_id is None:
        hint = (" (it is a causal qwen2 checkpoint: unmask.generate / decode run it left to right, but it cannot "
                "fill masks inside a canvas)"
                if getattr(model, "causal", False) else "")
        raise ConfigError("the model's config has no mask_token_id, so it cannot be sampled as a diffusion model"
                          + hint)
    return int(mask_id)
