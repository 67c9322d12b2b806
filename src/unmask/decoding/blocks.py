"""Semi-autoregressive block decoders (docs/sampler.md), optionally over an approximate KV cache.

Masks may sit anywhere in the canvas (a suffix region, or prefix + middle + suffix for infilling, or
several spans). Each row's masked positions, taken in canvas order, are cut into blocks of ``block_length``
*masked positions* decoded left to right; a step only commits masked positions of the current block. For
the usual prompt + masks canvas this is exactly "the generated region cut into blocks of block_length";
for an infill canvas a block may straddle fixed text between two spans, which is never touched.
Two rules choose what a step commits:

- ``blocks`` (LLaDA low-confidence remasking): a fixed number of tokens per step, the most confident ones
  by the ``alg`` confidence (or drawn by ``alg_temp`` as the reference does). ``steps`` is shared evenly
  by the blocks (at most one step per token); the first ``m mod steps_per_block`` steps take one extra.
- ``parallel`` (Fast-dLLM): every masked token of the block whose p(x0) ≥ ``threshold``, always at least
  the single most confident one; or, with ``factor``, the top n while (n + 1)(1 − c_n) < factor. The
  number of steps is not fixed: a block ends when it has no masks left. Confidences here are always
  probabilities p(x0) whatever ``alg`` says, so thresholds mean the same thing for every model.

KV cache (``cache``): at the start of each block (and every ``refresh_every`` steps inside it, if set) one
full forward computes the logits *and* stores every position's K/V. Later steps feed only
- ``prefix``: the block and everything after it, attending to the cached K/V before the block;
- ``dual``: the block alone, attending to the cached prefix and the cached (masked) suffix.
Fed positions start one before the block, because of the shift: the output at j − 1 predicts j. With
masks anywhere "the block" is the column window [lo, hi) covering the current block of every row. The fed
positions' fresh K/V overwrite their slots. Approximate, because with bidirectional attention committing a
token changes every other position's K/V; the drift is measured in tests and by ``bench/decode.py``.

The selection rules are pure functions; ``block_stream`` is the loop. Randomness only from ``generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from unmask.config import DecodeConfig, DecoderConfig
from unmask.decoding.eos import demote_early_stops
from unmask.decoding.sampling import gumbel_scores, sample_tokens
from unmask.decoding.steps import DecodeStep, commit_logprobs
from unmask.diffusion import shift_logits
from unmask.model import KVCache

# probe(canvas (B, S) before the step's commits, block_start, block_end, logits (B, n, V) the step used)
LogitsProbe = Callable[[torch.Tensor, int, int, torch.Tensor], None]


def block_spans(region_start: int, length: int, block_length: int) -> list[tuple[int, int]]:
    """Canvas index ranges [start, end) of the blocks of a region; the last block may be shorter."""
    return [(region_start + b, region_start + min(b + block_length, length)) for b in range(0, length, block_length)]


def block_schedule(masked: int, steps: int) -> list[int]:
    """Tokens to commit at each step of a block with ``masked`` masks in ``steps`` steps (LLaDA's rule).

    Every step commits ``masked // steps``; the first ``masked % steps`` steps one more. Steps are capped
    at ``masked``, so no step commits nothing (a forward that commits nothing is pure waste).
    """
    steps = max(1, min(steps, masked))
    base, extra = divmod(masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def select_topk(conf: torch.Tensor, k: int, alg_temp: float, generator: torch.Generator | None) -> torch.Tensor:
    """(B, n) bool: the k highest scores per row (non-candidates have score -inf), or — with ``alg_temp`` > 0 —
    k drawn without replacement from softmax(score / alg_temp) (Gumbel-top-k, as the reference sampler)."""
    pick = torch.zeros(conf.shape, dtype=torch.bool, device=conf.device)
    if k <= 0:
        return pick
    pick.scatter_(1, torch.topk(gumbel_scores(conf, alg_temp, generator), k, dim=-1).indices, True)
    return pick


def select_threshold(conf: torch.Tensor, candidates: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, n) bool: candidates with conf ≥ threshold, plus each row's most confident candidate."""
    best = torch.zeros_like(candidates)
    best.scatter_(1, conf.masked_fill(~candidates, float("-inf")).argmax(dim=1, keepdim=True), True)
    return candidates & ((conf >= threshold) | best)


def select_factor(conf: torch.Tensor, candidates: torch.Tensor, factor: float) -> torch.Tensor:
    """(B, n) bool: per row, sort candidates by confidence c_1 ≥ c_2 ≥ …; accept the top n for the largest n
    with (j + 1)(1 − c_j) < factor for every j ≤ n; always at least one."""
    scores = conf.masked_fill(~candidates, float("-inf"))
    ordered, order = torch.sort(scores, dim=1, descending=True)  # (B, n)
    rank = torch.arange(1, conf.shape[1] + 1, device=conf.device, dtype=conf.dtype)[None, :]
    ok = ((rank + 1) * (1 - ordered) < factor) & torch.isfinite(ordered)
    ok[:, 0] = torch.isfinite(ordered[:, 0])  # at least one (if the row has any candidate)
    accepted = ok.long().cumprod(dim=1).bool()  # stop at the first rank that fails
    return torch.zeros_like(candidates).scatter(1, order, accepted) & candidates


def mask_blocks(masked: torch.Tensor, block_length: int) -> torch.Tensor:
    """(B, S) long: the block index of every masked position (its rank among the row's masks, in canvas order,
    divided by ``block_length``), -1 for positions that are not masked. masked: (B, S) bool."""
    rank = masked.long().cumsum(dim=1) - 1  # (B, S): 0, 1, 2 … along each row's masks
    return torch.where(masked, torch.div(rank, block_length, rounding_mode="floor"), torch.full_like(rank, -1))


def select_topk_rows(conf: torch.Tensor, ks: list[int], alg_temp: float,
                     generator: torch.Generator | None) -> torch.Tensor:
    """``select_topk`` with a count per row (rows with different numbers of masks). With equal counts it is
    ``select_topk`` itself: the same noise draw, the same picks."""
    if len(set(ks)) <= 1:
        return select_topk(conf, ks[0] if ks else 0, alg_temp, generator)
    scores = gumbel_scores(conf, alg_temp, generator)
    pick = torch.zeros(conf.shape, dtype=torch.bool, device=conf.device)
    for row, k in enumerate(ks):
        if k > 0:
            pick[row, torch.topk(scores[row], k).indices] = True
    return pick


def propose(logits: torch.Tensor, candidates: torch.Tensor, config: DecodeConfig, *, mask_token_id: int,
            confidence: str, generator: torch.Generator | None, stop_ids: tuple[int, ...]
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block step's proposal from its aligned logits (B, n, V): (scores, tokens, ranking), each (B, n).

    Every candidate (a mask of the block) gets a sampled token and its confidence (-inf off the candidates); the
    mask token is never proposed. ``ranking`` is the scores with ``stop_last``'s demotion of early stop tokens:
    earlier blocks are fully committed, so "a mask to the left" can only be inside this window."""
    masked_logits = logits[candidates].float()  # (N, V)
    masked_logits[:, mask_token_id] = torch.finfo(masked_logits.dtype).min
    x0, conf = sample_tokens(masked_logits, confidence=confidence, temperature=config.temperature,
                             top_p=config.top_p, top_k=config.top_k, generator=generator)
    scores = torch.full(candidates.shape, float("-inf"), device=logits.device)  # (B, n)
    scores[candidates] = conf
    tokens = torch.zeros_like(candidates, dtype=torch.long)
    tokens[candidates] = x0
    ranking = demote_early_stops(scores, tokens, candidates, stop_ids) if config.stop_last and stop_ids else scores
    return scores, tokens, ranking


def select_commits(ranking: torch.Tensor, candidates: torch.Tensor, decoder: DecoderConfig,
                   schedules: list[list[int]], inner: int, alg_temp: float,
                   generator: torch.Generator | None) -> torch.Tensor:
    """(B, n) bool: what step ``inner`` of a block commits. ``blocks``: each row's scheduled count (all its masks
    left once its schedule is spent); ``parallel``: the factor or the threshold rule."""
    if decoder.decoder == "blocks":
        left = candidates.sum(dim=1).tolist()
        ks = [sched[inner] if inner < len(sched) else n for sched, n in zip(schedules, left)]
        return select_topk_rows(ranking, [min(k, n) for k, n in zip(ks, left)], alg_temp, generator) & candidates
    if decoder.factor is not None:
        return select_factor(ranking, candidates, decoder.factor)
    return select_threshold(ranking, candidates, decoder.threshold)


def commit_window(x: torch.Tensor, b0: int, pick: torch.Tensor, tokens: torch.Tensor, scores: torch.Tensor, *,
                  step: int, logits: torch.Tensor, config: DecodeConfig, mask_token_id: int,
                  logprobs: int | None) -> DecodeStep:
    """Write the picked tokens of the window starting at column ``b0`` into ``x`` (B, S) and describe the step:
    committed positions, their confidences, and (with ``logprobs``) their log-probabilities."""
    x[:, b0:b0 + pick.shape[1]][pick] = tokens[pick]
    committed = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    committed[:, b0:b0 + pick.shape[1]] = pick
    confidences = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    confidences[:, b0:b0 + pick.shape[1]] = torch.where(pick, scores, torch.zeros_like(scores))
    scored = None if logprobs is None else commit_logprobs(logits, pick, x, config, mask_token_id, logprobs, offset=b0)
    return DecodeStep(step, x, committed, confidences, logprobs=scored)


@torch.inference_mode()
def block_stream(model, canvas: torch.Tensor, attention_mask: torch.Tensor | None, *, config: DecodeConfig,
                 decoder: DecoderConfig, region_start: int, mask_token_id: int,
                 generator: torch.Generator | None = None, probe: LogitsProbe | None = None,
                 stop_ids: tuple[int, ...] = (), logprobs: int | None = None) -> Iterator[DecodeStep]:
    """Decode every mask of ``canvas`` (B, S) block by block, yielding after each step (with its commits'
    log-probabilities and ``logprobs`` alternatives when that is given: ``steps.commit_logprobs``).

    Masks may be anywhere except column 0 (position 0 must be a real token, because of the shift).
    ``region_start`` is kept for callers that build prompt + masks canvases: it must be in [1, S). Pads
    (``attention_mask`` (B, S) == 0, left padding) are never masks to fill. The caller's tensor is not modified.
    """
    if decoder.decoder not in ("blocks", "parallel"):
        raise ValueError(f"block_stream runs the blocks and parallel decoders, not {decoder.decoder!r}")
    if decoder.decoder == "blocks" and config.alg == "origin":
        raise ValueError("the blocks decoder ranks positions by confidence: use alg maskgit_plus, topk_margin or "
                         "entropy (origin has no confidence)")
    if not 1 <= region_start < canvas.shape[1]:
        raise ValueError(f"region_start must be in [1, {canvas.shape[1]}) (position 0 must be a real token), "
                         f"got {region_start}")
    x = canvas.to(model.device, dtype=torch.long).clone()
    batch, length = x.shape
    padding = None
    if attention_mask is not None and not bool(attention_mask.bool().all()):
        padding = attention_mask.to(model.device).long()  # (B, S): the model derives masks and positions
    masked = x == mask_token_id  # (B, S)
    if padding is not None:
        masked &= padding.bool()
    if bool(masked[:, 0].any()):
        raise ValueError("column 0 of the canvas is a mask: position 0 must be a real token (prepend a bos)")
    block_of = mask_blocks(masked, decoder.block_length)  # (B, S), -1 off the masks
    num_blocks = int(block_of.max()) + 1
    steps_per_block = max(1, config.steps // max(1, num_blocks))
    cache = None if decoder.cache == "none" else KVCache.empty(model.config, batch, length, dtype=model.dtype,
                                                               device=model.device)
    confidence = "maskgit_plus" if decoder.decoder == "parallel" else config.alg
    step = 0
    for block in range(num_blocks):
        in_block = block_of == block  # (B, S)
        cols = in_block.any(dim=0).nonzero(as_tuple=True)[0]
        b0, b1 = int(cols[0]), int(cols[-1]) + 1  # the column window holding this block in every row
        window = in_block[:, b0:b1]  # (B, n)
        schedules = [block_schedule(int(c), steps_per_block) if c else [] for c in window.sum(dim=1).tolist()]
        inner = 0
        while True:
            candidates = window & (x[:, b0:b1] == mask_token_id)  # (B, n)
            if not bool(candidates.any()):
                break
            refresh = cache is None or inner == 0 or (decoder.refresh_every > 0 and inner % decoder.refresh_every == 0)
            if refresh:
                logits = shift_logits(model(x, attention_mask=padding, kv_cache=cache))[:, b0:b1]  # (B, n, V)
            else:
                # Feed from b0 - 1: its output predicts b0. Raw output i (canvas b0 - 1 + i) predicts b0 + i.
                end = length if decoder.cache == "prefix" else b1
                raw = model(x[:, b0 - 1:end], attention_mask=padding, kv_cache=cache, cache_position=b0 - 1)
                logits = raw[:, :b1 - b0]  # (B, n, V)
            if probe is not None:
                probe(x, b0, b1, logits)
            scores, tokens, ranking = propose(logits, candidates, config, mask_token_id=mask_token_id,
                                              confidence=confidence, generator=generator, stop_ids=stop_ids)
            pick = select_commits(ranking, candidates, decoder, schedules, inner, config.alg_temp, generator)
            yield commit_window(x, b0, pick, tokens, scores, step=step, logits=logits, config=config,
                                mask_token_id=mask_token_id, logprobs=logprobs)
            step += 1
            inner += 1
