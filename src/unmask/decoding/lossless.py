"""Lossless acceleration of the reference sampler: the same canvases, step for step, for the same seed.

Two exact tricks, both keeping every call to ``reference_step`` — the only consumer of the generator —
exactly as the reference makes it (same logits, same canvas, same generator state, same order):

1. **Skip forwards that cannot change the result.** A step whose decision does not read the logits needs
   no forward: at temperature 0 a non-``origin`` step with a reveal count of 0 in every row commits nothing
   and draws no random numbers; an ``origin`` step whose Bernoulli draws select no position commits nothing
   and (with nothing to sample) draws nothing more. For ``origin`` the draw is peeked with a copy of the
   generator, then made again on the real one, so the generator advances exactly as in the reference.
2. **Draft and verify.** From the latest exact logits (of an earlier canvas) and a *copy* of the generator,
   simulate the next few steps to guess the canvases they will produce; evaluate the real current canvas and
   those guesses in one batched forward; then run the real steps in order. A real step whose canvas equals a
   guess takes that guess's logits — they are the exact logits of that canvas — and the first miss ends the
   round. A wrong guess costs compute, never correctness. On a memory-bound accelerator a batch of a few
   canvases costs about one forward, so sequential forwards (``forward_passes``) fall; on a compute-bound
   CPU ``canvas_forwards`` (the compute) rises instead.

3. **Rows on their own clocks** (deterministic settings: temperature 0, alg_temp 0, not ``origin``). Then no
   step reads the generator and each row's step depends only on its own logits, so every row can advance as
   far as its own drafts verify, whatever the other rows do. In lockstep a batch round ends at the first row
   whose draft misses (acceptance falls with batch size, to 1.27 tokens per forward at batch 4 on the default
   model); on its own clock each row keeps its own acceptance. Steps are still yielded in order, for the whole
   batch, once every row has made them; the forwards are counted where they were spent.

Exactness assumes the model's per-row outputs do not depend on what else is in the batch, which holds for
this model on CPU (tested over many seeds and configurations); GPU kernels may differ in the last bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from unmask.config import DecodeConfig
from unmask.decoding.canvas import check_canvas
from unmask.decoding.reference import dream_timesteps, reference_step, reveal_counts
from unmask.decoding.steps import CommitLogprobs, DecodeStep, commit_logprobs
from unmask.diffusion import shift_logits
from unmask.model import padding_attention_mask, positions_from_mask


def _copy(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    if generator is None:
        return None
    clone = torch.Generator(device=device)
    clone.set_state(generator.get_state())
    return clone


def step_needs_logits(masked: torch.Tensor, step: int, timesteps: torch.Tensor, config: DecodeConfig,
                      generator: torch.Generator | None) -> bool:
    """Whether reference step ``step`` on a canvas with ``masked`` (B, T) positions can commit anything.

    Leaves ``generator`` untouched (``origin`` peeks with a copy). False means: the step commits nothing and
    consumes only what ``skip_step`` replays.
    """
    count = masked.sum(-1)  # (B,)
    if int(count.sum()) == 0:
        return False  # nothing to commit; origin's rand(0) is replayed by skip_step
    last = step == config.steps - 1
    if config.alg == "origin":
        if last:
            return True
        t, s = timesteps[step], timesteps[step + 1]
        draw = torch.rand(int(count.sum()), generator=_copy(generator, masked.device), device=masked.device)
        return bool((draw < float(1 - s / t)).any())
    if config.temperature > 0:
        return True  # sampling draws from the generator even when nothing is committed
    return bool(reveal_counts(count, timesteps[step], timesteps[step + 1], last).any())


def skip_step(masked: torch.Tensor, step: int, timesteps: torch.Tensor, config: DecodeConfig,
              generator: torch.Generator | None) -> None:
    """Advance ``generator`` exactly as reference step ``step`` would when it commits nothing."""
    if config.alg == "origin":
        torch.rand(int(masked.sum()), generator=generator, device=masked.device)


def rows_independent(config: DecodeConfig) -> bool:
    """Whether no step of ``config`` reads the generator and rows do not interact (``dream_compat``'s batch-mean
    count couples them), so rows of a batch may advance independently."""
    return config.temperature == 0 and config.alg_temp == 0 and config.alg != "origin" and not config.dream_compat


def _batched_logits(model, canvases: list[torch.Tensor], real: list[torch.Tensor] | None) -> torch.Tensor:
    """Exact aligned logits of canvases (each (b, T)) in one call, stacked along the batch; ``real``: their
    (b, T) attention masks."""
    stacked = torch.cat(canvases, dim=0)  # (N, T)
    mask4 = positions = None
    if real is not None:
        reps = torch.cat(real, dim=0)
        mask4, positions = padding_attention_mask(reps), positions_from_mask(reps)
    return shift_logits(model(stacked, attention_mask=mask4, position_ids=positions))


def _chain_drafts(x: torch.Tensor, stale: torch.Tensor | None, step: int, timesteps: torch.Tensor,
                  config: DecodeConfig, masked_of, draft: int, generator: torch.Generator | None,
                  mask_token_id: int, stop_ids: tuple[int, ...]) -> list[torch.Tensor]:
    """``x`` and up to ``draft - 1`` guesses of the canvases later steps will see, simulated with ``stale``
    logits and a copy of the generator (the real one is untouched)."""
    drafts = [x.clone()]
    if stale is None or draft == 1:
        return drafts
    guess, g = x.clone(), _copy(generator, x.device)
    for future in range(step, config.steps):
        m = masked_of(guess)
        needs = step_needs_logits(m, future, timesteps, config, g)
        if future > step and needs:
            drafts.append(guess.clone())  # the canvas step `future` will see, if guessed right
            if len(drafts) == draft:
                break
        if needs:
            reference_step(stale, guess, m, future, timesteps, config, g, mask_token_id, stop_ids)
        else:
            skip_step(m, future, timesteps, config, g)
    return drafts


@torch.inference_mode()
def lossless_stream(model, canvas: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                    config: DecodeConfig, mask_token_id: int, generator: torch.Generator | None = None,
                    draft: int = 4, stop_ids: tuple[int, ...] = (), logprobs: int | None = None
                    ) -> Iterator[DecodeStep]:
    """Same events (canvas, committed, confidence, ``logprobs``) as ``reference.denoise_stream``, fewer forwards."""
    check_canvas(canvas, attention_mask)
    if draft <= 0:
        raise ValueError(f"draft must be a positive integer, got {draft}")
    x = canvas.to(model.device, dtype=torch.long).clone()
    real = None if attention_mask is None else attention_mask.to(model.device).bool()
    if rows_independent(config):
        yield from _own_clocks(model, x, real, config=config, mask_token_id=mask_token_id, draft=draft,
                               stop_ids=stop_ids, logprobs=logprobs)
        return
    timesteps = dream_timesteps(config.steps, config.eps, x.device)

    def masked_of(c: torch.Tensor) -> torch.Tensor:
        m = c == mask_token_id
        return m if real is None else m & real

    known: list[tuple[torch.Tensor, torch.Tensor]] = []  # (canvas, its exact logits) from the last round
    stale: torch.Tensor | None = None  # the latest exact logits, of some earlier canvas: the drafts' guess
    for step in range(config.steps):
        masked = masked_of(x)
        if not step_needs_logits(masked, step, timesteps, config, generator):
            skip_step(masked, step, timesteps, config, generator)
            empty = torch.zeros_like(masked)
            yield DecodeStep(step, x, empty, torch.zeros(x.shape, device=x.device), forwards=0, canvases=0)
            continue
        logits = next((lg for c, lg in known if torch.equal(c, x)), None)
        forwards = canvases = 0
        if logits is None:
            drafts = _chain_drafts(x, stale, step, timesteps, config, masked_of, draft, generator, mask_token_id,
                                   stop_ids)
            out = _batched_logits(model, drafts, None if real is None else [real] * len(drafts))
            out = out.view(len(drafts), x.shape[0], *out.shape[1:])  # (D, B, T, V)
            known = [(c, out[i]) for i, c in enumerate(drafts)]
            logits, forwards, canvases = out[0], 1, len(drafts)
        stale = logits
        committed, conf = reference_step(logits, x, masked, step, timesteps, config, generator, mask_token_id,
                                         stop_ids)
        scores = None if logprobs is None else commit_logprobs(logits, committed, x, config, mask_token_id, logprobs)
        yield DecodeStep(step, x, committed, conf, forwards=forwards, canvases=canvases, logprobs=scores)


@dataclass
class _Row:
    """One row of a batch on its own clock (``_own_clocks``)."""

    canvas: torch.Tensor  # (1, T) ids, updated in place by reference_step
    real: torch.Tensor | None  # (1, T) bool, the row's real (non-pad) positions
    step: int = 0  # the next reference step this row makes
    stale: torch.Tensor | None = None  # (1, T, V) exact logits of the row's latest real canvas
    known: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (canvas, its exact logits)
    events: list[tuple | None] = field(default_factory=list)  # per step: canvas, committed, conf, log-probs

    def masked_of(self, c: torch.Tensor, mask_token_id: int) -> torch.Tensor:
        m = c == mask_token_id
        return m if self.real is None else m & self.real


def _advance(row: _Row, timesteps: torch.Tensor, config: DecodeConfig, mask_token_id: int,
             stop_ids: tuple[int, ...], logprobs: int | None) -> None:
    """Make the row's reference steps for as long as they need no new forward (deterministic settings)."""
    while row.step < config.steps:
        masked = row.masked_of(row.canvas, mask_token_id)
        if step_needs_logits(masked, row.step, timesteps, config, None):
            logits = next((lg for c, lg in row.known if torch.equal(c, row.canvas)), None)
            if logits is None:
                return  # the canvas was not drafted: it needs a forward
            row.stale = logits
            committed, conf = reference_step(logits, row.canvas, masked, row.step, timesteps, config, None,
                                             mask_token_id, stop_ids)
        else:
            logits = None
            committed = torch.zeros_like(masked)
            conf = torch.zeros(masked.shape, dtype=torch.float32, device=masked.device)
        scores = None if logprobs is None or logits is None else commit_logprobs(
            logits, committed, row.canvas, config, mask_token_id, logprobs)
        row.events.append((row.canvas[0].clone(), committed[0], conf[0], scores))
        row.step += 1


def _own_clocks(model, x: torch.Tensor, real: torch.Tensor | None, *, config: DecodeConfig, mask_token_id: int,
                draft: int, stop_ids: tuple[int, ...], logprobs: int | None) -> Iterator[DecodeStep]:
    """The lossless stream for deterministic settings, each row advancing as far as its own drafts verify."""
    timesteps = dream_timesteps(config.steps, config.eps, x.device)
    batch = x.shape[0]
    rows = [_Row(x[b:b + 1].clone(), None if real is None else real[b:b + 1]) for b in range(batch)]
    forwards = canvases = 0  # spent since the last yielded step
    for step in range(config.steps):
        for row in rows:
            _advance(row, timesteps, config, mask_token_id, stop_ids, logprobs)
        while any(row.step <= step for row in rows):  # one round: every unfinished row's canvas and drafts
            active = [row for row in rows if row.step < config.steps]
            drafts = [_chain_drafts(row.canvas, row.stale, row.step, timesteps, config,
                                    lambda c, row=row: row.masked_of(c, mask_token_id), draft, None, mask_token_id,
                                    stop_ids) for row in active]
            flat = [c for group in drafts for c in group]
            reals = None if real is None else [row.real for row, group in zip(active, drafts) for _ in group]
            out = _batched_logits(model, flat, reals)  # (N, T, V)
            i = 0
            for row, group in zip(active, drafts):
                row.known = [(c, out[i + j:i + j + 1]) for j, c in enumerate(group)]
                i += len(group)
                _advance(row, timesteps, config, mask_token_id, stop_ids, logprobs)
            forwards, canvases = forwards + 1, canvases + math.ceil(len(flat) / batch)
        made = [row.events[step] for row in rows]
        for row in rows:
            row.events[step] = None  # yielded: free it
        canvas, committed, conf = (torch.stack([m[i] for m in made]) for i in range(3))
        scores = None if logprobs is None else _stack_logprobs([m[3] for m in made])
        yield DecodeStep(step, canvas, committed, conf, forwards=forwards, canvases=canvases, logprobs=scores)
        forwards = canvases = 0


def _stack_logprobs(parts: list[CommitLogprobs | None]) -> CommitLogprobs | None:
    """One batch step's commit log-probs from each row's own (computed with row index 0; None where the row's
    step committed nothing without a forward). None when no row has any, as for a skipped lockstep step."""
    present = [(b, p) for b, p in enumerate(parts) if p is not None]
    if not present:
        return None
    rows = torch.cat([torch.full_like(p.rows, b) for b, p in present])
    rest = (torch.cat([getattr(p, name) for _, p in present]) for name in ("cols", "chosen", "top_ids", "top"))
    return CommitLogprobs(rows, *rest)
