"""Revising decoders: masked diffusion that takes back its own commits (docs/sampler.md, "Revising committed
tokens"). Ids in, ids out; randomness only from the explicit ``generator`` (the reference sampler's draws).

Both spend exactly the reference sampler's ``steps`` forwards. With R = ceil(``revise_budget`` /
``revise_per_step``), the first ``steps - R`` steps are the reference sampler run for ``steps - R`` steps (its
schedule, so each commits a little more) and leave no mask; each of the last R steps revises, then commits:

- ``remask`` (ReMDM, Wang et al. 2025, "Remasking Discrete Diffusion Models with Inference-Time Scaling"): before
  its forward the step re-masks the ``revise_per_step`` generated tokens the model is least confident in (the
  last step what is left of the budget); the forward then predicts them from the whole canvas and the step
  commits them all, as the reference sampler's last step commits every mask.
- ``edit`` (LLaDA2.1's token-to-token editing): the step's forward reads the full canvas; a generated token whose
  probability there fell below ``edit_low`` while another token's rose above ``edit_high`` is replaced by that
  token (at most ``revise_per_step`` per step, the most confident replacements first).

The confidence of a committed token is the probability the latest forward gave it: at a position it saw
unmasked, its read there; at a position it filled, the probability of the token committed. Dream's shift makes
the read at a visible position the prediction of output i - 1, which sees token i itself — not a trained
quantity; on the shipped model it nevertheless tracks a leave-one-out read (docs/sampler.md has the numbers).

Only positions that were masks in the input canvas are ever revised (the prompt, and the fixed text of an
infill canvas, never change), and each at most once: on the shipped model both mechanisms otherwise spend their
budget flipping the same positions back and forth (a re-masked token comes back the same and is again the least
confident; an edit A -> B is undone at the next forward, B -> A). The selection rules are pure functions.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from unmask.config import DecodeConfig, DecoderConfig, revision_steps
from unmask.decoding.canvas import check_canvas
from unmask.decoding.reference import dream_timesteps, reference_step
from unmask.decoding.steps import DecodeStep, commit_logprobs
from unmask.diffusion import shift_logits
from unmask.model import padding_attention_mask, positions_from_mask


def remask_schedule(budget: int, per_step: int) -> list[int]:
    """Tokens re-masked at each revision step: ``per_step`` each, the last step the rest of ``budget``
    ((5, 2) -> [2, 2, 1]; a budget of 0 -> no revision step)."""
    full, rest = divmod(budget, per_step)
    return [per_step] * full + ([rest] if rest else [])


def token_probs(logits: torch.Tensor, tokens: torch.Tensor, mask_token_id: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's own distribution at each position (float32, mask token excluded, no filters): (p of ``tokens``
    (...), p of the likeliest *other* token (...), that token (...)). logits: (..., V) aligned, e.g. (B, T, V)."""
    mask_column = torch.tensor([mask_token_id], device=logits.device)
    logp = logits.float().index_fill(-1, mask_column, torch.finfo(torch.float32).min).log_softmax(-1)  # a copy
    own = logp.gather(-1, tokens[..., None]).squeeze(-1)
    logp.scatter_(-1, tokens[..., None], torch.finfo(logp.dtype).min)  # the best token other than the current one
    best_logp, best = logp.max(-1)
    return own.exp(), best_logp.exp(), best


def ranked_first(key: torch.Tensor, eligible: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: in each row the ``counts`` (B,) eligible positions of smallest ``key`` (B, T), ties to the
    leftmost; fewer where a row has fewer eligible positions."""
    ordered = torch.sort(key.float().masked_fill(~eligible, float("inf")), dim=-1, stable=True).indices
    rank = torch.empty_like(ordered)
    rank.scatter_(-1, ordered, torch.arange(key.shape[-1], device=key.device).expand_as(ordered))
    return eligible & (rank < counts[:, None])


def least_confident(confidence: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the ``counts`` (B,) candidates of each row with the lowest ``confidence`` (B, T): what a
    remasking step takes back."""
    return ranked_first(confidence, candidates, counts)


def edit_choices(p_token: torch.Tensor, p_best: torch.Tensor, candidates: torch.Tensor, low: float, high: float,
                 budget_left: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: candidates whose token has p < ``low`` while another token has p > ``high`` (``token_probs``);
    where a row has more than its ``budget_left`` (B,), the ones with the most confident alternative."""
    wanted = candidates & (p_token < low) & (p_best > high)
    return ranked_first(-p_best, wanted, budget_left)


@torch.inference_mode()  # on a generator: entered around each step, not left on while the caller runs
def revise_stream(model, canvas: torch.Tensor, attention_mask: torch.Tensor | None = None, *, config: DecodeConfig,
                  decoder: DecoderConfig, mask_token_id: int, generator: torch.Generator | None = None,
                  stop_ids: tuple[int, ...] = (), logprobs: int | None = None) -> Iterator[DecodeStep]:
    """Denoise every mask of ``canvas`` (B, T) in ``config.steps`` forwards, revising as ``decoder.revise`` says;
    yields a ``DecodeStep`` per forward whose ``revised`` / ``revised_from`` say what it took back."""
    check_canvas(canvas, attention_mask)
    x = canvas.to(model.device, dtype=torch.long).clone()
    real = None if attention_mask is None else attention_mask.to(model.device).bool()
    forward = _forward(model, real)
    open_ = x == mask_token_id  # (B, T) what the decode fills: the only positions a revision may touch
    if real is not None:
        open_ &= real
    draft = config.replace(steps=config.steps - revision_steps(decoder))
    timesteps = dream_timesteps(draft.steps, config.eps, x.device)
    quotas = remask_schedule(decoder.revise_budget, decoder.revise_per_step)  # per revision step
    confidence = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # of each committed token
    fresh = open_.clone()  # positions not revised yet: each is revised at most once (no A -> B -> A)
    for step in range(config.steps):
        quota = torch.full((x.shape[0],), quotas[step - draft.steps], device=x.device) \
            if step >= draft.steps else None  # (B,)
        before = x.clone() if quota is not None else None
        revised = None
        if quota is not None and decoder.revise == "remask":
            revised = least_confident(confidence, fresh & (x != mask_token_id), quota)
            x[revised] = mask_token_id
        masked = (x == mask_token_id) & open_
        logits = forward(x)  # (B, T, V) aligned
        if step >= draft.steps - 1:  # the draft's last forward is the first whose reads a revision uses
            p_token, p_best, best = _reads(logits, x, open_, mask_token_id)
            confidence = torch.where(open_ & ~masked, p_token, confidence)
            if quota is not None and decoder.revise == "edit":
                revised = edit_choices(p_token, p_best, fresh & ~masked, decoder.edit_low, decoder.edit_high,
                                       quota)
                x[revised] = best[revised]
                confidence = torch.where(revised, p_best, confidence)
        committed, conf = reference_step(logits, x, masked, min(step, draft.steps - 1), timesteps, draft,
                                         generator, mask_token_id, stop_ids)
        if step >= draft.steps - 1:
            confidence = torch.where(committed, _reads(logits, x, committed, mask_token_id)[0], confidence)
        if revised is not None:
            fresh &= ~revised
        assigned = committed if revised is None else committed | (revised & (x != mask_token_id))  # + edits
        scores = None if logprobs is None else commit_logprobs(logits, assigned, x, config, mask_token_id,
                                                               logprobs)
        yield DecodeStep(step, x, committed, conf, logprobs=scores, revised=revised, revised_from=before)


def _reads(logits: torch.Tensor, x: torch.Tensor, where: torch.Tensor, mask_token_id: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``token_probs`` at the positions ``where`` (B, T) only (zeros elsewhere), so the float32 softmax copy grows
    with the generated tokens, not with the prompt."""
    own, best_p = (torch.zeros(x.shape, dtype=torch.float32, device=x.device) for _ in range(2))
    best = torch.zeros_like(x)
    own[where], best_p[where], best[where] = token_probs(logits[where], x[where], mask_token_id)
    return own, best_p, best


def _forward(model, real: torch.Tensor | None):
    """canvas (B, T) -> aligned logits (B, T, V) of ``model`` with the rows' left padding ``real`` (B, T) bool."""
    mask4 = None if real is None else padding_attention_mask(real)
    positions = None if real is None else positions_from_mask(real)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return shift_logits(model(x, attention_mask=mask4, position_ids=positions))

    return forward
