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

Exactness assumes the model's per-row outputs do not depend on what else is in the batch, which holds for
this model on CPU (tested over many seeds and configurations); GPU kernels may differ in the last bit.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from unmask.config import DecodeConfig
from unmask.decoding.canvas import check_canvas
from unmask.decoding.reference import dream_timesteps, reference_step, reveal_counts
from unmask.decoding.steps import DecodeStep, commit_logprobs
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
    batch = x.shape[0]
    real = None if attention_mask is None else attention_mask.to(model.device).bool()
    timesteps = dream_timesteps(config.steps, config.eps, x.device)

    def masked_of(c: torch.Tensor) -> torch.Tensor:
        m = c == mask_token_id
        return m if real is None else m & real

    def forward(canvases: list[torch.Tensor]) -> torch.Tensor:
        """Exact aligned logits (D, B, T, V) of D canvases in one batched call."""
        stacked = torch.cat(canvases, dim=0)  # (D·B, T)
        mask4 = positions = None
        if real is not None:
            reps = real.repeat(len(canvases), 1)
            mask4, positions = padding_attention_mask(reps), positions_from_mask(reps)
        logits = shift_logits(model(stacked, attention_mask=mask4, position_ids=positions))
        return logits.view(len(canvases), batch, *logits.shape[1:])

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
            drafts = [x.clone()]
            if stale is not None and draft > 1:
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
            out = forward(drafts)
            known = [(c, out[i]) for i, c in enumerate(drafts)]
            logits, forwards, canvases = out[0], 1, len(drafts)
        stale = logits
        committed, conf = reference_step(logits, x, masked, step, timesteps, config, generator, mask_token_id,
                                         stop_ids)
        scores = None if logprobs is None else commit_logprobs(logits, committed, x, config, mask_token_id, logprobs)
        yield DecodeStep(step, x, committed, conf, forwards=forwards, canvases=canvases, logprobs=scores)
