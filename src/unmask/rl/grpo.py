"""GRPO math for masked diffusion LMs (docs/rl.md): group advantages, reproducible masks, per-token
log-prob estimators (coupled / decoupled / diffu-GRPO) and the clipped policy loss with k3 KL.

A dLLM has no exact per-token log-probability, so the policy ratio is built from *estimates* made with
masked forward passes. Every estimator here is linear in the per-pass token log-probs: it is described by
a set of noisy inputs (one per pass) and one coefficient tensor per pass, and the estimate is
``sum_p coef_p * log p_theta(x0 | noisy_p)`` (:class:`LogprobPasses`). The plan is drawn once from a
seeded generator and reused for the old, reference and current policy, so the three see identical masks.

Seeds come from :func:`mask_seed` (a stable hash of step / prompt / sample / pass indices), so masks can
be reproduced in any process and after resuming.

Shapes: B sequences, T positions (prompt then the generated tokens), V vocabulary, P passes.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unmask.diffusion import shift_logits, token_logprobs
from unmask.rl.config import BASELINES, ESTIMATORS

__all__ = [
    "ESTIMATORS",
    "LogprobPasses",
    "build_logprob_passes",
    "clipped_policy_loss",
    "combine_pass_logprobs",
    "coupled_masks",
    "decoupled_masks",
    "diffu_grpo_mask",
    "full_mask",
    "group_advantages",
    "mask_seed",
    "sample_coupled_t",
    "seeded_generator",
    "sequence_logprob_estimates",
]


# One torch.Generator for the whole batch, or one per row (row b draws only from generators[b], so a
# row's masks do not depend on which other rows share its micro-batch).
GeneratorLike = torch.Generator | Sequence[torch.Generator]


# ----------------------------------------------------------------------------------------------
# Advantages


def group_advantages(
    rewards: torch.Tensor | Sequence[float | None],
    *,
    baseline: str = "mean",
    scale_std: bool = False,
    std_eps: float = 1e-4,
) -> torch.Tensor:
    """Group-relative advantages over the last dimension: rewards (..., G) -> advantages (..., G) float32.

    Missing rewards (``None`` or NaN: a failed execution) get advantage 0 and are left out of the baseline
    and of the standard deviation. ``baseline="mean"``: ``A_i = r_i - mean(r)`` (zero-mean over the valid
    members of each group); ``"leave_one_out"``: ``A_i = r_i - mean_{j != i} r_j`` (0 when a group has a
    single valid member). ``scale_std=True`` divides by the sample standard deviation of the valid rewards
    plus ``std_eps`` (a group with identical rewards stays exactly 0).
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if isinstance(rewards, torch.Tensor):
        r = rewards.detach().to(torch.float64)
    else:
        try:
            r = torch.tensor([math.nan if x is None else float(x) for x in rewards], dtype=torch.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"rewards must be numbers or None, got {list(rewards)!r}") from exc
    if r.dim() == 0 or r.shape[-1] == 0:
        raise ValueError(f"rewards must have a non-empty group dimension, got shape {tuple(r.shape)}")
    if bool(torch.isinf(r).any()):
        raise ValueError("rewards must be finite (use None/NaN for a missing reward)")
    valid = ~torch.isnan(r)  # (..., G)
    r0 = torch.where(valid, r, torch.zeros_like(r))
    n = valid.sum(dim=-1, keepdim=True).to(r.dtype)  # (..., 1)
    total = r0.sum(dim=-1, keepdim=True)  # (..., 1)
    if baseline == "mean":
        base = total / n.clamp_min(1.0)
        usable = valid
    else:
        base = (total - r0) / (n - 1.0).clamp_min(1.0)  # mean of the *other* valid members
        usable = valid & (n > 1.0)
    adv = torch.where(usable, r0 - base, torch.zeros_like(r))
    if scale_std:
        mean = total / n.clamp_min(1.0)
        sq = torch.where(valid, (r0 - mean) ** 2, torch.zeros_like(r)).sum(dim=-1, keepdim=True)
        std = torch.sqrt(sq / (n - 1.0).clamp_min(1.0))  # sample std; 0 for n <= 1
        adv = adv / (std + std_eps)
    # Float64 sums can still leave a rounding residue on identical rewards, which std scaling would blow up:
    # a group whose valid rewards are all equal carries no signal, so its advantages are exactly 0.
    hi = torch.where(valid, r0, torch.full_like(r, -math.inf)).amax(dim=-1, keepdim=True)
    lo = torch.where(valid, r0, torch.full_like(r, math.inf)).amin(dim=-1, keepdim=True)
    adv = torch.where(hi == lo, torch.zeros_like(adv), adv)
    return adv.to(torch.float32)


# ----------------------------------------------------------------------------------------------
# Seeds and generators


def mask_seed(step: int, prompt_index: int, sample_index: int, pass_index: int, base_seed: int) -> int:
    """A stable 63-bit seed from the indices (BLAKE2b; unlike ``hash`` it is the same in every process).

    Use one seed per (step, prompt, sample, estimator pass) and build the generator with
    :func:`seeded_generator`; old, reference and current policy then draw identical masks.
    """
    values = (step, prompt_index, sample_index, pass_index, base_seed)
    names = ("step", "prompt_index", "sample_index", "pass_index", "base_seed")
    for name, v in zip(names, values):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
            raise ValueError(f"{name} must be an int in [0, 2**63), got {v!r}")
    digest = hashlib.blake2b(struct.pack(">5Q", *values), digest_size=8, person=b"unmask-mask").digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(int(seed))


def _uniform_rows(B: int, T: int, generator: GeneratorLike, device: torch.device) -> torch.Tensor:
    """(B, T) U[0,1) draws: from one generator, or row b from ``generator[b]``; drawn on the generator's
    device (identical masks on CPU and GPU for a CPU generator) and moved to ``device``."""
    if isinstance(generator, torch.Generator):
        u = torch.rand((B, T), generator=generator, device=generator.device)
        return u.to(device)
    gens = list(generator)
    if len(gens) != B or not all(isinstance(g, torch.Generator) for g in gens):
        raise TypeError(f"generator must be a torch.Generator or a list of {B} of them (one per row)")
    rows = [torch.rand((T,), generator=g, device=g.device).to(device) for g in gens]
    return torch.stack(rows)


def _check_mask(name: str, x: object, shape: torch.Size | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.bool or x.dim() != 2:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a (B, T) bool tensor, got {got}")
    if shape is not None and x.shape != shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)}")
    return x


def _check_rate(t: object, B: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.shape != (B,) or not torch.is_floating_point(t):
        raise ValueError(f"t must be a float tensor of shape ({B},)")
    if bool(((t <= 0) | (t >= 1) | torch.isnan(t)).any()):
        raise ValueError("t must lie strictly inside (0, 1) so that both 1/t and 1/(1 - t) are finite")
    return t


# ----------------------------------------------------------------------------------------------
# Masks


def sample_coupled_t(
    batch: int, *, generator: GeneratorLike, t_range: tuple[float, float] = (0.2, 0.8)
) -> torch.Tensor:
    """(B,) masking rates ``t ~ U(t_range)`` (one per sequence), on CPU."""
    lo, hi = _check_t_range(t_range)
    u = _uniform_rows(batch, 1, generator, torch.device("cpu"))[:, 0]  # (B,)
    return lo + (hi - lo) * u


def _check_t_range(t_range: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in t_range)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"t_range must be a pair (low, high), got {t_range!r}") from exc
    if not 0.0 < lo <= hi < 1.0:
        raise ValueError(f"t_range must satisfy 0 < low <= high < 1, got {t_range!r}")
    return lo, hi


def coupled_masks(
    generated_mask: torch.Tensor, t: torch.Tensor, generator: GeneratorLike
) -> tuple[torch.Tensor, torch.Tensor]:
    """Complementary masks over the noised region: m1 masks each position of ``generated_mask`` with
    probability ``t[b]``, m2 = generated & ~m1.

    Every generated position is masked in exactly one of the two passes; the prompt (and anything outside
    ``generated_mask``) in neither. Their estimator weights are ``1/t`` (m1) and ``1/(1 - t)`` (m2).
    generated_mask: (B, T) bool; t: (B,) in (0, 1). Returns two (B, T) bool tensors.
    """
    _check_mask("generated_mask", generated_mask)
    B, T = generated_mask.shape
    t = _check_rate(t, B)
    u = _uniform_rows(B, T, generator, generated_mask.device)  # (B, T)
    m1 = generated_mask & (u < t.to(u.device)[:, None])
    return m1, generated_mask & ~m1


def decoupled_masks(
    generated_mask: torch.Tensor, t: torch.Tensor, generator: GeneratorLike
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ablation of :func:`coupled_masks`: two *independent* masks with rates ``t`` and ``1 - t``.

    Same marginal rates (hence the same weights and the same expectation of the estimate) as the coupled
    pair, but a position may be masked in both passes or in neither.
    """
    _check_mask("generated_mask", generated_mask)
    B, T = generated_mask.shape
    t = _check_rate(t, B)
    u1 = _uniform_rows(B, T, generator, generated_mask.device)  # (B, T)
    u2 = _uniform_rows(B, T, generator, generated_mask.device)  # (B, T)
    tt = t.to(u1.device)[:, None]
    return generated_mask & (u1 < tt), generated_mask & (u2 < 1.0 - tt)


def full_mask(generated_mask: torch.Tensor) -> torch.Tensor:
    """The whole generated region masked (prompt untouched): a copy of ``generated_mask`` (B, T) bool."""
    return _check_mask("generated_mask", generated_mask).clone()


def diffu_grpo_mask(
    prompt_mask: torch.Tensor,
    generated_mask: torch.Tensor,
    *,
    generator: GeneratorLike,
    prompt_mask_ratio: float = 0.0,
) -> torch.Tensor:
    """The diffu-GRPO mask: the whole generated region plus each prompt token w.p. ``prompt_mask_ratio``.

    0 (the default) is the paper's fully-masked-completion row; d1's 0.15 is the prompt-masking variant
    (docs/rl.md). The first real token of each prompt is never masked (under the shift convention it
    anchors the prediction of the next position). Returns (B, T) bool.
    """
    _check_mask("prompt_mask", prompt_mask)
    _check_mask("generated_mask", generated_mask, prompt_mask.shape)
    if not isinstance(prompt_mask_ratio, (int, float)) or not 0.0 <= float(prompt_mask_ratio) <= 1.0:
        raise ValueError(f"prompt_mask_ratio must be in [0, 1], got {prompt_mask_ratio!r}")
    B, T = prompt_mask.shape
    u = _uniform_rows(B, T, generator, prompt_mask.device)  # (B, T)
    first_real = prompt_mask & (prompt_mask.long().cumsum(dim=1) == 1)  # (B, T) first prompt token per row
    prompt_part = prompt_mask & ~first_real & (u < float(prompt_mask_ratio))
    return generated_mask | prompt_part


# ----------------------------------------------------------------------------------------------
# Per-token log-prob estimators


@dataclass(frozen=True)
class LogprobPasses:
    """A drawn estimator plan: P masked copies of a batch and their per-token coefficients.

    noisy_ids: (P * B, T) long, pass p of row b at index ``p * B + b``; coefficients: (P, B, T) float32.
    The estimate is ``sum_p coefficients[p] * log p_theta(x0 | noisy_ids[p])`` (B, T). Reuse one plan for
    the old, reference and current policy so all three see the same masks. ``t`` is (B,) (NaN for
    diffu-grpo, which has no rate).
    """

    estimator: str
    noisy_ids: torch.Tensor
    coefficients: torch.Tensor
    t: torch.Tensor

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        P, B, T = self.coefficients.shape
        if self.noisy_ids.shape != (P * B, T):
            raise ValueError(f"noisy_ids must have shape ({P * B}, {T}), got {tuple(self.noisy_ids.shape)}")

    @property
    def num_passes(self) -> int:
        return self.coefficients.shape[0]


def build_logprob_passes(
    input_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    generated_mask: torch.Tensor | None = None,
    estimator: str = "coupled",
    t_range: tuple[float, float] = (0.2, 0.8),
    generator: GeneratorLike,
    mask_id: int,
    prompt_mask_ratio: float = 0.0,
) -> LogprobPasses:
    """Draw the masks of one estimate (see :func:`sequence_logprob_estimates` for the formulas).

    input_ids: (B, T) long; prompt_mask: (B, T) bool; generated_mask: (B, T) bool, the region the passes
    noise (every generated token, also those after the first stop; default ``completion_mask``);
    completion_mask: (B, T) bool, the tokens scored (a subset of generated_mask). Only the scored tokens
    get non-zero coefficients, but the masks cover the whole generated region, as in DiffuCoder's coupled
    sampling and d1 (everything after the prompt is noised): otherwise the tokens after the stop would be
    clean context in every pass, the fully masked one included, and the estimate would be conditioned on
    the completion's length. Draw order from the generator(s): t, then the mask(s) — fixed, so a seed fully
    determines the plan.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or mask_id < 0:
        raise ValueError(f"mask_id must be a non-negative int, got {mask_id!r}")
    generated_mask = _check_regions(input_ids, prompt_mask, completion_mask, generated_mask)
    B, _ = input_ids.shape
    c = completion_mask.float()  # (B, T) the scored tokens

    if estimator == "diffu-grpo":
        m = diffu_grpo_mask(prompt_mask, generated_mask, generator=generator, prompt_mask_ratio=prompt_mask_ratio)
        masks, coefs = [m], [c]
        t = torch.full((B,), math.nan)
    else:
        t = sample_coupled_t(B, generator=generator, t_range=t_range)  # (B,) CPU
        draw = coupled_masks if estimator == "coupled" else decoupled_masks
        m1, m2 = draw(generated_mask, t, generator)
        tt = t.to(c.device)[:, None]  # (B, 1)
        # DiffuCoder's coupled-sampling estimate with lambda = 1 (docs/rl.md): (logp_full + w * logp_masked_pass) / 2,
        # scored on the completion only (a masked position after the stop is context, not a target).
        masks = [full_mask(generated_mask), m1, m2]
        coefs = [0.5 * c, 0.5 * (m1.float() * c) / tt, 0.5 * (m2.float() * c) / (1.0 - tt)]

    noisy = [torch.where(m, torch.full_like(input_ids, mask_id), input_ids) for m in masks]
    return LogprobPasses(estimator, torch.cat(noisy, dim=0), torch.stack(coefs), t)


def _check_regions(
    input_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    generated_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Validate the three regions of a batch; returns the generated region (``completion_mask`` if None)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a (B, T) tensor of token ids")
    _check_mask("prompt_mask", prompt_mask, input_ids.shape)
    _check_mask("completion_mask", completion_mask, input_ids.shape)
    generated = completion_mask if generated_mask is None else generated_mask
    _check_mask("generated_mask", generated, input_ids.shape)
    if bool((prompt_mask & generated).any()):
        raise ValueError("prompt_mask and generated_mask overlap; a position is either prompt or generated")
    if bool((completion_mask & ~generated).any()):
        raise ValueError("completion_mask must be a subset of generated_mask (the scored tokens were generated)")
    return generated


def combine_pass_logprobs(
    passes: LogprobPasses, logits_raw: torch.Tensor, input_ids: torch.Tensor
) -> torch.Tensor:
    """Per-token estimates (B, T) from the raw logits (P * B, T, V) of ``passes.noisy_ids``.

    Re-aligns with :func:`unmask.diffusion.shift_logits`; zero outside the completion.
    """
    P, B, T = passes.coefficients.shape
    if logits_raw.dim() != 3 or logits_raw.shape[:2] != (P * B, T):
        raise ValueError(f"logits_raw must have shape ({P * B}, {T}, V), got {tuple(logits_raw.shape)}")
    targets = input_ids.repeat(P, 1)  # (P * B, T): pass p of row b at p * B + b
    logp = token_logprobs(shift_logits(logits_raw), targets).view(P, B, T)  # (P, B, T)
    coef = passes.coefficients.to(logp.device)
    # Only positions with a non-zero coefficient contribute (avoids 0 * -inf from an unseen token).
    return torch.where(coef != 0, coef * logp, torch.zeros_like(logp)).sum(dim=0)  # (B, T)


def sequence_logprob_estimates(
    model_fn: Callable[..., torch.Tensor],
    input_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    mask_id: int,
    attention_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    passes: LogprobPasses | None = None,
    **draw: Any,
) -> torch.Tensor:
    """Per-token log-prob estimates (B, T) of the true tokens on completion positions (0 elsewhere).

    ``model_fn(ids) -> raw logits`` (or ``model_fn(ids, attention_mask=...)`` when ``attention_mask`` is
    given; it is repeated for every pass). All passes go through one batched forward (P * B rows), or
    ``chunk_size`` rows at a time. Pass a ready ``passes`` plan (from :func:`build_logprob_passes`) to
    reuse exactly the same masks for another policy; otherwise one is drawn with ``draw``, the keywords of
    :func:`build_logprob_passes` (``generator``, required then; ``generated_mask``, ``estimator``, ``t_range``,
    ``prompt_mask_ratio``).

    With ``l_X[n] = log p_theta(x0_n | x0 with the positions in X masked)``, generated region D
    (``generated_mask``, default the completion) and scored completion C (a subset of D):

    - ``"coupled"``: t ~ U(t_range) per sequence, M1 ~ Bernoulli(t) over D, M2 = D \\ M1, and for n in C
      ``est[n] = (l_D[n] + w[n] * l_{M(n)}[n]) / 2`` with ``M(n)`` the one pass that masked n and
      ``w = 1/t`` (n in M1) or ``1/(1 - t)`` (n in M2) — DiffuCoder's coupled-sampling estimate
      (docs/rl.md) with one pair, the fully masked pass entering with weight 1. Three forwards per sequence.
    - ``"decoupled"``: the same formula with M1 ~ Bernoulli(t) and M2 ~ Bernoulli(1 - t) over D drawn
      independently (a token may be in both, contributing both terms, or in neither). Three forwards.
    - ``"diffu-grpo"``: ``est[n] = l_{D + a prompt_mask_ratio share of the prompt}[n]``. One forward.

    Note on scale: ``E[w[n]] = 2`` over the mask draw, so when context matters little the coupled
    estimate is about 1.5x the fully-masked log-prob; it is a consistent surrogate used on both sides of
    the policy ratio, not a calibrated log-probability.
    """
    if passes is None:
        if draw.get("generator") is None:
            raise ValueError("pass a generator (or a ready `passes` plan) to draw the masks")
        passes = build_logprob_passes(input_ids, prompt_mask, completion_mask, mask_id=mask_id, **draw)
    elif passes.coefficients.shape[1:] != input_ids.shape:
        raise ValueError("passes were built for a batch of a different shape than input_ids")
    P = passes.num_passes
    rep_attn = None if attention_mask is None else attention_mask.repeat(P, 1)  # (P * B, T)
    rows = passes.noisy_ids.to(input_ids.device)
    step = rows.shape[0] if chunk_size is None else int(chunk_size)
    if step < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    outputs = []
    for start in range(0, rows.shape[0], step):
        ids = rows[start : start + step]
        if rep_attn is None:
            outputs.append(model_fn(ids))
        else:
            outputs.append(model_fn(ids, attention_mask=rep_attn[start : start + step]))
    logits = torch.cat(outputs, dim=0)  # (P * B, T, V)
    return combine_pass_logprobs(passes, logits, input_ids)


# ----------------------------------------------------------------------------------------------
# Loss


def clipped_policy_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor | None,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    eps_clip: float = 0.5,
    logp_ref: torch.Tensor | None = None,
    beta: float = 0.01,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clipped GRPO loss with the k3 KL penalty, token-mean over all completion tokens of the batch.

    logp_new, logp_old, logp_ref: (B, T) per-token (estimated) log-probs; advantages: (B,); completion_mask:
    (B, T) bool (the tokens that count). Per token, with ``r = exp(new - old)``:

        loss_tok = -min(r * A, clip(r, 1 - eps, 1 + eps) * A) + beta * (exp(ref - new) - (ref - new) - 1)

    ``loss = sum(loss_tok * mask) / sum(mask)`` over the whole batch (TRL's/DiffuCoder's token mean: long
    completions weigh more). ``logp_old`` and ``logp_ref`` are treated as constants (detached);
    ``logp_old=None`` means on-policy (old = new detached). The KL term is dropped when ``logp_ref`` is
    None or ``beta == 0``. Stats (detached 0-d tensors): ``clip_fraction`` (share of completion tokens
    whose clipped branch is active, i.e. the gradient is cut), ``kl`` (mean k3 KL, 0 without a
    reference), ``ratio`` (mean ratio).

    ``num_tokens`` replaces the denominator ``sum(mask)`` (the stats too): pass the completion-token count
    of the *whole* batch when this call sees one micro-batch, so the micro-batch losses add up to the
    token mean of the whole batch.
    """
    if not isinstance(logp_new, torch.Tensor) or logp_new.dim() != 2:
        raise ValueError("logp_new must be a (B, T) tensor")
    B, T = logp_new.shape
    _check_mask("completion_mask", completion_mask, logp_new.shape)
    if logp_old is None:
        logp_old = logp_new.detach()
    for name, x in (("logp_old", logp_old), ("logp_ref", logp_ref)):
        if x is not None and (not isinstance(x, torch.Tensor) or x.shape != logp_new.shape):
            raise ValueError(f"{name} must have the shape of logp_new {tuple(logp_new.shape)}")
    if not isinstance(advantages, torch.Tensor) or advantages.shape != (B,):
        raise ValueError(f"advantages must be a tensor of shape ({B},)")
    if not isinstance(eps_clip, (int, float)) or not 0.0 < float(eps_clip) < 1.0:
        raise ValueError(f"eps_clip must be in (0, 1), got {eps_clip!r}")
    if not isinstance(beta, (int, float)) or float(beta) < 0.0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")

    if num_tokens is not None and (isinstance(num_tokens, bool) or not float(num_tokens) > 0):
        raise ValueError(f"num_tokens must be a positive count, got {num_tokens!r}")
    m = completion_mask.to(logp_new.dtype)  # (B, T)
    if num_tokens is None:
        count = m.sum().clamp_min(1.0)
    else:
        count = torch.tensor(float(num_tokens), dtype=m.dtype, device=m.device)
    adv = advantages.detach().to(logp_new.dtype)[:, None]  # (B, 1)
    ratio = torch.exp(logp_new - logp_old.detach())  # (B, T)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_clip, 1.0 + eps_clip) * adv
    per_token = -torch.minimum(unclipped, clipped)  # (B, T)
    kl = torch.zeros_like(per_token)
    if logp_ref is not None and beta > 0:
        diff = logp_ref.detach() - logp_new  # (B, T)
        kl = torch.exp(diff) - diff - 1.0  # k3: unbiased, always >= 0
        per_token = per_token + beta * kl
    loss = (per_token * m).sum() / count
    cut = (clipped < unclipped).to(m.dtype)  # the min picks the clipped (constant) branch
    stats = {
        "clip_fraction": ((cut * m).sum() / count).detach(),
        "kl": ((kl * m).sum() / count).detach(),
        "ratio": ((ratio * m).sum() / count).detach(),
    }
    return loss, stats
