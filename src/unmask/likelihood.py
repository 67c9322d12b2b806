"""log p(continuation | context) of a masked diffusion model: the Monte-Carlo ELBO estimate, and whether
one-shot greedy prediction reproduces the continuation. Ids in, numbers out; the lm-eval adapter
(``unmask.lm_eval``) turns text into ids and calls these.

A diffusion model has no exact likelihood, only the bound it was trained on (docs/training.md). For a context
c (P tokens, never masked) and a continuation x (L tokens), each of ``mc_num`` samples draws a time t, masks
each continuation token independently with probability p(t) = ``diffusion.mask_probability(t)``, runs one
forward over c + x_t and scores

    (1 / p(t)) · Σ_{i masked} log p_θ(x_i | c, x_t)

on the shifted logits (``diffusion.shift_logits``: the output at i − 1 predicts position i). The mean over the
samples estimates E_t E_{x_t}[…] ≤ log p(x | c): exactly minus the training loss of this row in its sum form
(``diffusion_loss`` before normalisation, weight ``inv_t``), so it scores with the same bound and the same
masking rates the model was trained on. Times come from ``diffusion.sample_t(method="stratified")``: one draw
in each of ``mc_num`` equal bins, so every t is still U(eps, 1) on its own (the mean is unbiased for the same
expectation) while the set covers the whole range, which lowers the variance over independent draws. A
sample that masks nothing scores 0; that is part of the estimator, not an edge case.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from unmask.decoding.reference import require_mask_id
from unmask.diffusion import mask_probability, sample_t, shift_logits, token_logprobs, uniform


def check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def elbo_plan(length: int, mc_num: int, *, generator: torch.Generator, eps: float = 1e-3
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The draws of one estimate: (t (N,), masked (N, L) bool), on the generator's device.

    Draw order, fixed so a seed fully determines the estimate: the N stratified times, then N × L uniforms
    (token n of sample k is masked when its uniform is below p(t_k)).
    """
    check_count("mc_num", mc_num)
    t = sample_t(mc_num, generator=generator, eps=eps, method="stratified")  # (N,)
    u = uniform((mc_num, length), generator)  # (N, L)
    return t, u < mask_probability(t, eps)[:, None]


@torch.inference_mode()
def continuation_elbo(model, context: Sequence[int], continuation: Sequence[int], *, generator: torch.Generator,
                      mc_num: int = 128, mc_batch_size: int = 32, eps: float = 1e-3) -> float:
    """The Monte-Carlo ELBO estimate of log p(continuation | context) (module docstring), in nats.

    ``mc_batch_size`` rows go through each forward; the draws are made up front, so the estimate does not
    depend on it. ``context`` must hold at least one token (position 0 is never masked: it has no
    predecessor to predict it from); an empty continuation scores 0.
    """
    check_count("mc_batch_size", mc_batch_size)
    if len(context) == 0:
        raise ValueError("the context must hold at least one token (prepend a bos or eos)")
    t, masked = elbo_plan(len(continuation), mc_num, generator=generator, eps=eps)
    if len(continuation) == 0:
        return 0.0
    device, start = model.device, len(context)
    x0 = torch.tensor([*context, *continuation], dtype=torch.long, device=device)  # (S,)
    weight = (1.0 / mask_probability(t, eps)).double()  # (N,)
    total = torch.zeros((), dtype=torch.float64)
    for lo in range(0, mc_num, mc_batch_size):
        m = masked[lo:lo + mc_batch_size].to(device)  # (n, L)
        rows = x0.repeat(m.shape[0], 1)  # (n, S)
        rows[:, start:] = rows[:, start:].masked_fill(m, require_mask_id(model))
        logp = token_logprobs(shift_logits(model(rows)), x0.expand_as(rows))[:, start:]  # (n, L)
        # where(), not a product: an impossible token's -inf must not turn an unmasked 0 into nan
        per_sample = torch.where(m, logp, torch.zeros_like(logp)).sum(dim=1).double().cpu()  # (n,)
        total += (per_sample * weight[lo:lo + mc_batch_size].cpu()).sum()
    return float(total) / mc_num


@torch.inference_mode()
def greedy_reproduces(model, context: Sequence[int], continuation: Sequence[int]) -> bool:
    """Whether one forward over context + L masks, argmax at every masked position, gives the continuation.

    This is lm-eval's ``is_greedy`` for a diffusion model: the one-shot (fully parallel) greedy answer, not
    the result of an iterative decoder, which depends on its steps and order. One forward.
    """
    if len(continuation) == 0:
        return True
    ids = [*context, *[require_mask_id(model)] * len(continuation)]
    canvas = torch.tensor([ids], dtype=torch.long, device=model.device)  # (1, S)
    predicted = shift_logits(model(canvas))[0, len(context):].argmax(dim=-1)  # (L,)
    return predicted.tolist() == list(continuation)
