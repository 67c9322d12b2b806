"""Pure tensor math of masked diffusion: the shift convention, masking, schedules, losses.

Everything here is a function of tensors (and an explicit ``torch.Generator`` where randomness is
involved), so it can be tested alone and shared by training, sampling and RL (docs/model.md, docs/training.md).

The forward process of masked diffusion: draw a time ``t`` per sequence (:func:`sample_t`), mask
every *maskable* token independently with probability ``p(t) = (1 - eps) t + eps``
(:func:`mask_probability`, :func:`forward_mask`), and train the model to recover the masked tokens
with the ELBO-weighted cross-entropy (:func:`diffusion_loss`) computed on *shifted* logits
(:func:`shift_logits`). Supervised fine-tuning keeps the prompt clean (:func:`sft_maskable`,
:func:`sft_collate`); adapting an autoregressive checkpoint anneals attention from causal to full
(:func:`attention_anneal_fraction`, :func:`annealed_attention_mask`). Block diffusion trains on a noisy and a
clean copy of each row side by side (:func:`two_stream_mask`, :func:`two_stream_logits`).

Randomness: every random draw is made on the *generator's* device and then moved to the data's
device, so a CPU generator seeded identically gives identical masks whether the data lives on CPU or
GPU (RL needs the same masks for the old, reference and current policy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "LOSS_NORMALIZERS",
    "LOSS_WEIGHTS",
    "T_METHODS",
    "adaptation_spans",
    "annealed_attention_mask",
    "attention_anneal_fraction",
    "block_spans",
    "diffusion_loss",
    "forward_mask",
    "mask_probability",
    "sample_t",
    "sft_collate",
    "sft_maskable",
    "shift_logits",
    "token_logprobs",
    "two_stream_logits",
    "two_stream_mask",
    "uniform",
]

T_METHODS = ("antithetic", "stratified", "uniform")
LOSS_NORMALIZERS = ("tokens", "sequence", "batch")
LOSS_WEIGHTS = ("inv_t", "none")


def shift_logits(logits: torch.Tensor) -> torch.Tensor:
    """Re-align raw model outputs so that ``result[:, j]`` is the prediction for position ``j``.

    Dream-family models are adapted from autoregressive ones and keep their *shift*: the output at
    position ``i`` predicts the token at ``i + 1``. Every consumer (losses, samplers, RL log-probs)
    calls this one function, so the convention lives in exactly one place. Position 0 has no
    predecessor; it reuses the output at 0, which is harmless because position 0 is always a real
    (never masked) token.

    logits: (B, T, V) raw outputs -> (B, T, V) aligned predictions.
    """
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


# ----------------------------------------------------------------------------------------------
# Validation helpers (clear messages instead of deep tracebacks)


def _check_generator(generator: object) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


def _check_eps(eps: float) -> float:
    if not isinstance(eps, (int, float)) or not 0.0 <= float(eps) < 1.0:
        raise ValueError(f"eps must be a number in [0, 1), got {eps!r}")
    return float(eps)


def _check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return str(value)


def _check_bool_2d(name: str, x: object, shape: torch.Size | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (B, T), got {tuple(x.shape)}")
    if shape is not None and x.shape != shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(shape)}")
    return x


def _check_t(t: object, batch: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a torch.Tensor of shape (B,), got {type(t).__name__}")
    if t.shape != (batch,):
        raise ValueError(f"t must have shape ({batch},), got {tuple(t.shape)}")
    if not torch.is_floating_point(t):
        raise TypeError(f"t must be a floating-point tensor, got dtype {t.dtype}")
    if bool(((t <= 0) | (t > 1) | torch.isnan(t)).any()):
        raise ValueError(f"t must lie in (0, 1], got min {t.min().item():.4g}, max {t.max().item():.4g}")
    return t


def uniform(
    shape: Sequence[int], generator: torch.Generator, device: torch.device | str | None = None
) -> torch.Tensor:
    """U[0, 1) draws of ``shape`` from ``generator``, made on the generator's device, moved to ``device``.

    Drawing on the generator's device keeps masks identical across devices for a given seed.
    """
    _check_generator(generator)
    u = torch.rand(tuple(shape), generator=generator, device=generator.device)
    return u if device is None else u.to(device)


# ----------------------------------------------------------------------------------------------
# Forward process


def sample_t(
    batch: int,
    *,
    generator: torch.Generator,
    eps: float = 1e-3,
    method: str = "antithetic",
) -> torch.Tensor:
    """Draw one diffusion time per sequence: (B,) float32 on the generator's device, in [eps, 1].

    A base draw ``v`` in [0, 1] is mapped to ``t = eps + (1 - eps) * (1 - v)`` so ``t`` is never 0
    (the 1/p(t) loss weight stays bounded). Methods, all with uniform marginals:

    - ``"uniform"``: independent draws.
    - ``"antithetic"``: pairs ``(v, 1 - v)`` at positions ``(2k, 2k + 1)``; an odd batch gets one
      extra independent draw at the end. Negatively correlated pairs lower the loss variance.
    - ``"stratified"``: one draw in each of ``B`` equal bins ``[i/B, (i+1)/B)``, in shuffled order, so
      the batch covers the whole time range (lower variance than independent draws).
    """
    _check_generator(generator)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    eps = _check_eps(eps)
    method = _check_choice("method", method, T_METHODS)
    if method == "uniform":
        v = uniform((batch,), generator)
    elif method == "antithetic":
        half = uniform((batch // 2,), generator)  # (B//2,)
        pairs = torch.stack([half, 1.0 - half], dim=1).reshape(-1)  # (2*(B//2),): u0, 1-u0, u1, ...
        extra = uniform((batch % 2,), generator)  # (0,) or (1,)
        v = torch.cat([pairs, extra])
    else:  # stratified
        offsets = uniform((batch,), generator)  # position inside each bin
        bins = torch.randperm(batch, generator=generator, device=generator.device).to(offsets.dtype)
        v = (bins + offsets) / batch
    return eps + (1.0 - eps) * (1.0 - v)


def mask_probability(t: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Dream's masking probability ``p(t) = (1 - eps) * t + eps``; same shape as ``t``."""
    eps = _check_eps(eps)
    return (1.0 - eps) * t + eps


def forward_mask(
    input_ids: torch.Tensor,
    t: torch.Tensor,
    *,
    maskable: torch.Tensor,
    generator: torch.Generator,
    mask_token_id: int,
    eps: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each maskable token independently with probability ``p(t)`` (per sequence).

    input_ids: (B, T) long; t: (B,) in (0, 1]; maskable: (B, T) bool — False on positions that are
    never masked (the prompt in SFT, left padding). Returns ``(noisy_ids (B, T), masked (B, T) bool)``
    where ``noisy_ids`` holds ``mask_token_id`` exactly where ``masked`` is True, and
    ``masked`` implies ``maskable``.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a (B, T) tensor of token ids")
    if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or mask_token_id < 0:
        raise ValueError(f"mask_token_id must be a non-negative int, got {mask_token_id!r}")
    B, T = input_ids.shape
    _check_bool_2d("maskable", maskable, input_ids.shape)
    t = _check_t(t, B)
    p = mask_probability(t.to(input_ids.device, torch.float32), eps)  # (B,)
    u = uniform((B, T), generator, input_ids.device)  # (B, T)
    masked = (u < p[:, None]) & maskable.to(input_ids.device)  # (B, T)
    noisy = torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids)
    return noisy, masked


# ----------------------------------------------------------------------------------------------
# Loss


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per position, in float32: (B, T, V), (B, T) -> (B, T).

    Gathers the target logit and subtracts the log-partition, so no (B, T, V) log-softmax is kept.
    ``logits`` must already be aligned (see :func:`shift_logits`).
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be (B, T, V) and targets (B, T); "
            f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    logits = logits.float()
    picked = logits.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)


def diffusion_loss(
    logits_raw: torch.Tensor,
    targets: torch.Tensor,
    masked: torch.Tensor,
    t: torch.Tensor,
    *,
    maskable: torch.Tensor | None = None,
    normalizer: str = "tokens",
    weight: str = "inv_t",
    eps: float = 1e-3,
    row_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The masked-diffusion ELBO loss on raw (unshifted) logits.

    logits_raw: (B, T, V) model outputs (shift convention: output i predicts token i+1; re-aligned
    here with :func:`shift_logits`); targets: (B, T) clean tokens x0; masked: (B, T) bool, the
    positions replaced by MASK in the input; t: (B,) the times used by :func:`forward_mask`;
    maskable: (B, T) bool, the positions that *could* have been masked (default: all).

    Per sequence b: ``S_b = sum_n masked[b, n] * w_b * CE[b, n]`` with ``CE = -log p(x0 | xt)``.

    Weight (``weight="inv_t"``): ``w_b = 1 / p(t_b)`` with ``p(t) = (1 - eps) t + eps`` the *actual*
    masking probability, not the raw ``t``. Because ``E[masked / p] = 1`` per maskable token, this
    makes ``S_b`` an unbiased estimate of the sum of the CE over all maskable tokens — the ELBO's
    1/t weight for the masking rate actually used (LLaDA and Dream divide by ``p_mask`` too).
    It is also bounded by 1/eps. ``weight="none"`` gives the plain masked-token CE sum.
    ``row_weight`` (B,), optional, multiplies ``S_b`` (a semi-AR block row: the number of blocks, see
    :func:`block_spans`).

    Normaliser (all explicit; none divides by the *masked* count, which would be biased):

    - ``"tokens"`` (default): ``sum_b S_b / (number of maskable tokens in the batch)`` — the
      LLaDA/Dream convention; with all positions maskable it equals ``"batch"``.
    - ``"sequence"``: ``mean_b (S_b / maskable tokens of sequence b)`` — each sequence counts
      equally regardless of its response length (LLaDA's SFT per-answer-length normalisation).
    - ``"batch"``: ``sum_b S_b / (B * T)``.

    Returns ``(loss, stats)``; stats holds detached 0-d tensors: ``masked_tokens`` (count),
    ``maskable_tokens`` (count) and ``ce`` (unweighted mean CE over masked tokens; 0 if none).
    """
    if not isinstance(logits_raw, torch.Tensor) or logits_raw.dim() != 3:
        raise ValueError("logits_raw must be a (B, T, V) tensor")
    B, T, _ = logits_raw.shape
    if not isinstance(targets, torch.Tensor) or targets.shape != (B, T):
        raise ValueError(f"targets must have shape ({B}, {T})")
    _check_bool_2d("masked", masked, targets.shape)
    if maskable is None:
        maskable = torch.ones_like(masked)
    _check_bool_2d("maskable", maskable, targets.shape)
    if bool((masked & ~maskable).any()):
        raise ValueError("masked marks positions outside maskable")
    t = _check_t(t, B)
    normalizer = _check_choice("normalizer", normalizer, LOSS_NORMALIZERS)
    weight = _check_choice("weight", weight, LOSS_WEIGHTS)

    ce = -token_logprobs(shift_logits(logits_raw), targets)  # (B, T) float32
    m = masked.to(ce.dtype)  # (B, T)
    ce_masked = ce * m  # (B, T); zero off the masked positions
    if weight == "inv_t":
        w = 1.0 / mask_probability(t.to(ce.device, ce.dtype), eps)  # (B,)
    else:
        w = torch.ones(B, dtype=ce.dtype, device=ce.device)
    if row_weight is not None:
        if not isinstance(row_weight, torch.Tensor) or row_weight.shape != (B,):
            raise ValueError(f"row_weight must be a tensor of shape ({B},)")
        w = w * row_weight.to(ce.device, ce.dtype)
    per_seq = ce_masked.sum(dim=1) * w  # (B,) = S_b

    n_maskable_seq = maskable.sum(dim=1).to(ce.dtype)  # (B,)
    if normalizer == "tokens":
        loss = per_seq.sum() / n_maskable_seq.sum().clamp_min(1.0)
    elif normalizer == "sequence":
        loss = (per_seq / n_maskable_seq.clamp_min(1.0)).mean()
    else:  # batch
        loss = per_seq.sum() / float(B * T)

    n_masked = m.sum()
    stats = {
        "masked_tokens": n_masked.detach(),
        "maskable_tokens": n_maskable_seq.sum().detach(),
        "ce": (ce_masked.sum() / n_masked.clamp_min(1.0)).detach(),
    }
    return loss, stats


# ----------------------------------------------------------------------------------------------
# Supervised fine-tuning layout: [prompt][response][pad ...]


def sft_maskable(prompt_lengths: torch.Tensor | Sequence[int], total_length: int) -> torch.Tensor:
    """(B, total_length) bool: True from each row's prompt length on (response + trailing pads).

    In SFT the prompt is never masked; pad tokens after the response are maskable and trained like
    any other token so the model learns where to stop.
    """
    lengths = torch.as_tensor(prompt_lengths)
    if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError("prompt_lengths must be a 1-D sequence of ints")
    if isinstance(total_length, bool) or not isinstance(total_length, int) or total_length < 1:
        raise ValueError(f"total_length must be a positive int, got {total_length!r}")
    if bool(((lengths < 1) | (lengths >= total_length)).any()):
        raise ValueError(
            f"every prompt length must be in [1, total_length - 1] = [1, {total_length - 1}] "
            "(position 0 must be a real token and at least one response slot must remain); "
            f"got {lengths.tolist()}"
        )
    positions = torch.arange(total_length)  # (T,)
    return positions[None, :] >= lengths[:, None]  # (B, T)


def sft_collate(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    total_length: int,
    pad_id: int,
    truncate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay out SFT examples as ``[prompt][response][pad ...]`` rows of exactly ``total_length``.

    Prompts stay left-aligned (position 0 is the prompt's first token, as the shift convention
    needs). Responses are right-padded with ``pad_id``. A row that does not fit raises
    ``ValueError`` unless ``truncate=True``, which cuts the response's tail (the prompt is never cut).

    Returns ``(input_ids (B, T) long, maskable (B, T) bool, prompt_lengths (B,) long)``.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    if len(prompts) == 0:
        raise ValueError("sft_collate needs at least one example")
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
        raise ValueError(f"pad_id must be a non-negative int, got {pad_id!r}")
    if isinstance(total_length, bool) or not isinstance(total_length, int) or total_length < 2:
        raise ValueError(f"total_length must be an int >= 2, got {total_length!r}")
    rows: list[list[int]] = []
    lengths: list[int] = []
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        prompt, response = list(prompt), list(response)
        if not 1 <= len(prompt) < total_length:
            raise ValueError(
                f"example {i}: prompt length {len(prompt)} must be in [1, {total_length - 1}] "
                f"for total_length {total_length}"
            )
        room = total_length - len(prompt)
        if len(response) > room:
            if not truncate:
                raise ValueError(
                    f"example {i}: prompt ({len(prompt)}) + response ({len(response)}) tokens exceed "
                    f"total_length {total_length}; pass truncate=True to cut the response"
                )
            response = response[:room]
        rows.append(prompt + response + [pad_id] * (room - len(response)))
        lengths.append(len(prompt))
    prompt_lengths = torch.tensor(lengths, dtype=torch.long)
    return torch.tensor(rows, dtype=torch.long), sft_maskable(prompt_lengths, total_length), prompt_lengths


# ----------------------------------------------------------------------------------------------
# Causal -> full attention annealing (adapting an AR checkpoint, docs/training.md)


def attention_anneal_fraction(step: int, anneal_steps: int) -> float:
    """Fraction of the way from causal (0.0) to full (1.0) attention: ``min(1, step / anneal_steps)``.

    ``anneal_steps == 0`` means no annealing (full attention from step 0). DiffuLLaMA's ratio is
    ``(step + 1) / N``; starting at 0 instead keeps the first step exactly the parent's causal attention.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if isinstance(anneal_steps, bool) or not isinstance(anneal_steps, int) or anneal_steps < 0:
        raise ValueError(f"anneal_steps must be a non-negative int, got {anneal_steps!r}")
    if anneal_steps == 0:
        return 1.0
    return min(1.0, step / anneal_steps)


def annealed_attention_mask(
    T: int, fraction: float, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(T, T) bool mask on CPU, ``[query, key]`` True where the query may attend the key.

    Every query always sees itself and the past (the causal part). Future keys open up with
    ``fraction`` in [0, 1]:

    - deterministic (``generator=None``): query ``i`` sees keys ``j <= i + w`` with the look-ahead
      window ``w = ceil(fraction * (T - 1))`` — exactly causal at 0, full at 1, and growing
      monotonically in between (a band that widens linearly to the whole sequence).
    - stochastic (``generator`` given): each future key is visible independently with probability
      ``fraction``. For a fixed seed the same uniforms are compared with a rising threshold, so the
      mask is monotone in ``fraction`` too; it is exactly causal at 0 and full at 1.
    """
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive int, got {T!r}")
    if not isinstance(fraction, (int, float)) or not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    i = torch.arange(T)[:, None]  # (T, 1) queries
    j = torch.arange(T)[None, :]  # (1, T) keys
    causal = j <= i  # (T, T)
    if generator is None:
        window = math.ceil(float(fraction) * (T - 1))
        return j <= i + window
    u = uniform((T, T), generator)  # (T, T) in [0, 1): u < 1 always, u < 0 never
    return causal | (u.cpu() < float(fraction))


def block_spans(
    start: torch.Tensor, end: torch.Tensor, block_length: int, *, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One semi-autoregressive block per row, drawn uniformly: the training view of the blocks decoder.

    Row b's region ``[start[b], end[b])`` is cut into ``n_b = ceil((end - start) / block_length)`` blocks
    aligned at ``start`` (as the decoder aligns them at the prompt's end); block ``j ~ U{0, ..., n_b - 1}``
    is returned as ``[lo, hi)``. Training on it (docs/training.md, "semi-AR block rows") keeps positions
    before ``lo`` clean, noises the block at rate t and masks every later position without scoring it — the
    state the decoder is in while it fills block j. ``n_b`` times the block's ELBO is an unbiased estimate
    of the semi-AR factorisation's ELBO over the whole region, hence the returned row weight ``n``.

    start, end: (B,) long with ``start < end``. Returns ``(lo, hi, n)``, three (B,) long tensors on CPU.
    """
    _check_generator(generator)
    if isinstance(block_length, bool) or not isinstance(block_length, int) or block_length < 1:
        raise ValueError(f"block_length must be a positive int, got {block_length!r}")
    start, end = torch.as_tensor(start).long().cpu(), torch.as_tensor(end).long().cpu()
    if start.dim() != 1 or start.shape != end.shape or bool((end <= start).any()):
        raise ValueError("start and end must be (B,) tensors with start < end in every row")
    n = (end - start + block_length - 1) // block_length  # (B,)
    u = uniform(tuple(start.shape), generator).cpu()  # (B,)
    j = (u * n.double()).long().clamp(max=n - 1)  # (B,) uniform over the row's blocks
    lo = start + j * block_length
    return lo, torch.minimum(lo + block_length, end), n


def adaptation_spans(
    batch: int,
    length: int,
    *,
    generator: torch.Generator,
    prefix_prob: float = 0.01,
    truncate_prob: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DiffuCoder stage-1 data noise: per row, an optional clean prefix and an optional truncation.

    With probability ``prefix_prob`` a row gets an un-noised prefix of uniform length in [1, length - 1]
    (those positions are excluded from masking); independently, with probability ``truncate_prob`` it is
    cut to a uniform length in [2, length - 1] (a truncated row keeps at least one position after its
    prefix). Returns ``(prefix_len (B,), keep_len (B,))`` long on CPU; untouched rows have 0 and
    ``length``. The maskable region of row b is ``prefix_len[b] <= n < keep_len[b]``:
    ``maskable = (pos >= prefix_len[:, None]) & (pos < keep_len[:, None])``; the trainer treats positions
    from ``keep_len`` on as padding (attention mask off, no loss).
    """
    _check_generator(generator)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 3:
        raise ValueError(f"length must be an int >= 3, got {length!r}")
    for name, prob in (("prefix_prob", prefix_prob), ("truncate_prob", truncate_prob)):
        if not isinstance(prob, (int, float)) or not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {prob!r}")
    u = uniform((batch, 4), generator).cpu()  # (B, 4): [truncate?, keep len, prefix?, prefix len]
    truncated = u[:, 0] < truncate_prob
    keep = torch.where(truncated, 2 + (u[:, 1] * (length - 2)).long().clamp(max=length - 3), length)
    with_prefix = u[:, 2] < prefix_prob
    # Prefix length uniform in [1, keep - 1], so at least one position stays maskable.
    prefix = torch.where(with_prefix, 1 + (u[:, 3] * (keep - 1).float()).long().clamp(max=keep - 2), 0)
    return prefix, keep


# ----------------------------------------------------------------------------------------------
# Block diffusion: the two-stream layout (BD3-LM, Arriola et al. 2025; docs/training.md)


def two_stream_mask(
    blocks: torch.Tensor, key_valid: torch.Tensor | None = None, within: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, 1, 2T, 2T) bool mask for the input ``[x_t | x_0]``: a noisy copy of each row, then its clean copy.

    blocks: (B, T) block index of every position (``unmask.model.block_ids``). The clean stream is
    block-causal (a query sees its own block and all earlier ones); a noisy query sees its own noisy block
    (both ways) and the *clean* blocks before it, never another noisy block; no clean query sees a noisy key.
    So every noisy block is denoised in one forward exactly as the decoder meets it: earlier blocks final,
    later ones absent. ``key_valid`` (B, T): keys that exist (False: padding); ``within`` (T, T)
    [query, key]: which keys of a query's own block it may see in both streams (AR adaptation anneals this
    from causal to full; default all). Every query always sees itself, so a pad query stays finite.
    """
    if blocks.dim() != 2:
        raise ValueError(f"blocks must be (B, T), got shape {tuple(blocks.shape)}")
    B, T = blocks.shape
    same = blocks[:, :, None] == blocks[:, None, :]  # (B, Tq, Tk)
    if within is not None:
        same = same & within.to(blocks.device)[None]
    earlier = blocks[:, None, :] < blocks[:, :, None]  # (B, Tq, Tk): key's block before the query's
    if key_valid is not None:
        valid = key_valid.bool()[:, None, :]
        same, earlier = same & valid, earlier & valid
    top = torch.cat([same, earlier], dim=2)  # noisy queries: [noisy keys | clean keys]
    bottom = torch.cat([torch.zeros_like(same), earlier | same], dim=2)  # clean queries
    mask = torch.cat([top, bottom], dim=1) | torch.eye(2 * T, dtype=torch.bool, device=blocks.device)[None]
    return mask[:, None]


def two_stream_logits(logits_raw: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Raw logits (B, T, V) for the noisy row from a two-stream forward's raw logits (B, 2T, V).

    Because of the shift, raw output ``i`` predicts token ``i + 1``. Inside a block that output is the
    noisy stream's. The first token of a block is predicted by the last token of the block before, a clean
    token of a finished block — the clean stream's output there (the decoder's "feed from b0 - 1" rule). The
    result goes to :func:`diffusion_loss` like any raw logits.
    """
    B, T = blocks.shape
    if logits_raw.dim() != 3 or logits_raw.shape[:2] != (B, 2 * T):
        raise ValueError(f"logits_raw must be (B, 2T, V) = ({B}, {2 * T}, V), got {tuple(logits_raw.shape)}")
    noisy, clean = logits_raw[:, :T], logits_raw[:, T:]
    next_same = torch.ones_like(blocks, dtype=torch.bool)  # (B, T); the last output predicts nothing
    next_same[:, :-1] = blocks[:, 1:] == blocks[:, :-1]
    return torch.where(next_same[..., None], noisy, clean)
