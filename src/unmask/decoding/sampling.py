"""Pure functions for per-position token sampling and confidence scores (Dream's ``sample_tokens``).

Order of operations, as in Dream: divide by temperature (when > 0) -> top-p filter -> top-k filter ->
softmax -> sample (temperature > 0) or argmax (temperature 0). Confidences are computed on the *filtered*
distribution, so top-p/top-k change them even at temperature 0, exactly as in Dream.

Everything runs in float32 whatever the model's dtype: in bf16, many confidences tie and the commit order
would then depend on tie-breaking rather than on the model. With ``dream=True`` (``DecodeConfig.dream_compat``)
it runs as Dream's code does instead: in the logits' own dtype, and drawing as ``torch.distributions.Categorical``.
"""

from __future__ import annotations

import torch

CONFIDENCES = ("maskgit_plus", "topk_margin", "entropy")


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p`` (always >= 1 token).

    logits: (N, V). Removed entries get the dtype's minimum (not -inf, so softmax never sees a row of -inf).
    """
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    remove_sorted = cumulative > top_p
    # Shift right: a token is removed only if the mass *before* it already exceeds top_p.
    remove_sorted[..., 1:] = remove_sorted[..., :-1].clone()
    remove_sorted[..., 0] = False
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, torch.finfo(logits.dtype).min)


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep tokens whose logit is at least the k-th largest (ties at the boundary are kept)."""
    k = min(top_k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def filtered_logits(logits: torch.Tensor, temperature: float, top_p: float | None, top_k: int | None, *,
                    upcast: bool = True) -> torch.Tensor:
    """(N, V) logits -> (N, V) logits after temperature, top-p and top-k (removed: the dtype's minimum), in
    float32, or with ``upcast=False`` in the logits' own dtype (as Dream computes them)."""
    if upcast:
        logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    return logits


def filtered_probs(logits: torch.Tensor, temperature: float, top_p: float | None, top_k: int | None, *,
                   upcast: bool = True) -> torch.Tensor:
    """(N, V) logits -> (N, V) probabilities after temperature, top-p and top-k (float32 unless not ``upcast``)."""
    return filtered_logits(logits, temperature, top_p, top_k, upcast=upcast).softmax(-1)


def sampled_logprobs(logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float, top_p: float | None = None,
                     top_k: int | None = None, top: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p of ``tokens`` (N,) under the distribution ``sample_tokens`` uses for ``logits`` (N, V) — after
    temperature, top-p and top-k; at temperature 0 the softmax whose argmax is taken — and the ``top`` most
    likely tokens. Returns (chosen (N,), top ids (N, k), top log-probs (N, k)), all float32 but the ids.

    Filtered-out tokens get about -3.4e38 (the dtype's minimum, never -inf, so the caller can clamp)."""
    logp = filtered_logits(logits, temperature, top_p, top_k).log_softmax(-1)  # (N, V)
    chosen = logp.gather(-1, tokens[:, None].long()).squeeze(-1)
    values, ids = logp.topk(min(top, logp.shape[-1]), dim=-1)
    return chosen, ids, values


def categorical_draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
    """One token per row of ``probs`` (N, V), drawn as ``torch.distributions.Categorical(probs=probs).sample()``
    draws it (Dream's draw) but from ``generator``: the rows renormalised, then one multinomial draw each. None
    where that class refuses the rows (its check, on by default, that each is a probability vector to within
    1e-6; a NaN fails it): Dream then takes the argmax of every row instead."""
    normalised = probs / probs.sum(-1, keepdim=True)
    if not bool(((normalised >= 0).all(-1) & ((normalised.sum(-1) - 1).abs() < 1e-6)).all()):
        return None
    return torch.multinomial(normalised, 1, replacement=True, generator=generator).squeeze(-1)


def sample_tokens(logits: torch.Tensor, *, temperature: float, top_p: float | None = None,
                  top_k: int | None = None, confidence: str = "maskgit_plus",
                  generator: torch.Generator | None = None, dream: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row and score it. logits (N, V) -> (x0 (N,) long, confidence (N,) float32).

    confidence: ``maskgit_plus`` p(x0); ``topk_margin`` p(top1) - p(top2); ``entropy`` sum p log p
    (negative entropy: higher = more certain). ``dream``: Dream's arithmetic exactly (the logits' dtype, and its
    ``Categorical`` draw, ``categorical_draw``), so the confidences have the logits' dtype.
    """
    if confidence not in CONFIDENCES:
        raise ValueError(f"confidence must be one of {CONFIDENCES}, got {confidence!r}")
    probs = filtered_probs(logits, temperature, top_p, top_k, upcast=not dream)  # (N, V)
    if logits.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=logits.device), probs.new_zeros(0)
    x0 = None
    if temperature > 0:
        x0 = (categorical_draw(probs, generator) if dream
              else torch.multinomial(probs, 1, generator=generator).squeeze(-1))
    if x0 is None:
        score, x0 = probs.max(dim=-1)
    else:
        score = probs.gather(-1, x0[:, None]).squeeze(-1)
    if confidence == "topk_margin":
        top2 = torch.topk(probs, 2, dim=-1).values
        score = top2[:, 0] - top2[:, 1]
    elif confidence == "entropy":
        score = (probs * torch.log(probs + 1e-10)).sum(-1)
    return x0, score


def gumbel_scores(scores: torch.Tensor, alg_temp: float, generator: torch.Generator | None) -> torch.Tensor:
    """``scores`` / ``alg_temp`` plus Gumbel(0, 1) noise (``scores`` itself when ``alg_temp`` is 0), one draw
    per entry from ``generator``: the top k of the result are k draws without replacement from
    softmax(scores / alg_temp) (Gumbel-top-k). That is the (Plackett-Luce) distribution of torch.multinomial,
    but it cannot fail when softmax underflows to zero for some masked positions."""
    if alg_temp <= 0:
        return scores
    exp1 = torch.empty(scores.shape, device=scores.device).exponential_(generator=generator)
    return scores / alg_temp - torch.log(exp1)  # -log(Exp(1)) ~ Gumbel(0, 1)
