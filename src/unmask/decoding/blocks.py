"""Semi-autoregressive block decoders (SPEC §3.2), optionally over an approximate KV cache.

The generated region is cut into blocks of ``block_length`` decoded left to right; a step only commits
masked positions of the current block. Two rules choose what a step commits:

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
Fed positions start one before the block, because of the shift: the output at j − 1 predicts j. The fed
positions' fresh K/V overwrite their slots. Approximate, because with bidirectional attention committing a
token changes every other position's K/V; the drift is measured in tests and by ``bench/decode.py``.

The selection rules are pure functions; ``block_stream`` is the loop. Randomness only from ``generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from unmask.config import DecodeConfig, DecoderConfig
from unmask.decoding.reference import DecodeStep
from unmask.decoding.sampling import sample_tokens
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
    scores = conf
    if alg_temp > 0:
        exp1 = torch.empty(conf.shape, device=conf.device).exponential_(generator=generator)
        scores = conf / alg_temp - torch.log(exp1)
    pick.scatter_(1, torch.topk(scores, k, dim=-1).indices, True)
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


@torch.inference_mode()
def block_stream(model, canvas: torch.Tensor, attention_mask: torch.Tensor | None, *, config: DecodeConfig,
                 decoder: DecoderConfig, region_start: int, mask_token_id: int,
                 generator: torch.Generator | None = None, probe: LogitsProbe | None = None) -> Iterator[DecodeStep]:
    """Decode the masks of ``canvas[:, region_start:]`` (B, S) block by block, yielding after each step.

    ``attention_mask`` (B, S) marks real tokens (left padding), or None. The caller's tensor is not modified.
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
    spans = block_spans(region_start, length - region_start, decoder.block_length)
    steps_per_block = max(1, config.steps // len(spans))
    cache = None if decoder.cache == "none" else KVCache.empty(model.config, batch, length, dtype=model.dtype,
                                                               device=model.device)
    sample = dict(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k, generator=generator)
    confidence = "maskgit_plus" if decoder.decoder == "parallel" else config.alg
    step = 0
    for b0, b1 in spans:
        schedule = block_schedule(int((x[0, b0:b1] == mask_token_id).sum()), steps_per_block)
        inner = 0
        while True:
            candidates = x[:, b0:b1] == mask_token_id  # (B, n)
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
            masked_logits = logits[candidates].float()  # (N, V)
            masked_logits[:, mask_token_id] = torch.finfo(masked_logits.dtype).min
            x0, conf = sample_tokens(masked_logits, confidence=confidence, **sample)
            scores = torch.full(candidates.shape, float("-inf"), device=x.device)  # (B, n)
            scores[candidates] = conf
            tokens = torch.zeros_like(candidates, dtype=torch.long)
            tokens[candidates] = x0
            if decoder.decoder == "blocks":
                k = schedule[inner] if inner < len(schedule) else int(candidates.sum(1).max())
                pick = select_topk(scores, k, config.alg_temp, generator) & candidates
            elif decoder.factor is not None:
                pick = select_factor(scores, candidates, decoder.factor)
            else:
                pick = select_threshold(scores, candidates, decoder.threshold)
            block = x[:, b0:b1]
            block[pick] = tokens[pick]
            committed = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
            committed[:, b0:b1] = pick
            confidences = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
            confidences[:, b0:b1] = torch.where(pick, scores, torch.zeros_like(scores))
            yield DecodeStep(step, x, committed, confidences)
            step += 1
            inner += 1
