"""The exact decoder of block-diffusion models (``model.config.block_size`` set; docs/sampler.md "Block diffusion").

A block-diffusion model (BD3-LM, Arriola et al. 2025; SDAR; Fast-dLLM v2) attends causally across blocks and
bidirectionally inside one (``model.block_causal_mask``), so a finished block's keys and values never change
again: a KV cache over them is *exact*, not the approximation of ``blocks.py``'s prefix/dual caches. The
canvas is prompt + masks; the masks start at ``region_start``, which is also the model's block origin (the
prompt is one bidirectional prefix block), and are decoded one block of ``block_size`` at a time with the
``blocks`` rule (a fixed count per step, ``block_schedule`` / ``select_topk_rows``) or the ``parallel`` rule
(``select_threshold`` / ``select_factor``), the same pure functions the full-attention block decoders use.

What each forward feeds (S = canvas length; block b is columns [b0, b1)):
- the first step of block b feeds [c, b1), where c is the start of the previous block (the prompt's start for
  the first block): the previous block, now fully committed, gets its clean K/V written into the cache in
  the same forward that runs the first step of block b (the commit forward is fused with the next step, so
  a block costs exactly its steps). Its output at b0 − 1 predicts b0 (the shift) and is kept: column b0 − 1
  belongs to a finished block, so nothing later can change what it predicts;
- every later step of block b feeds [b0, b1) alone against the cached prefix [0, b0).
The cache is viewed to its first b1 slots, so attention never scans the empty tail. Early EOS needs nothing
here: ``steps.run_steps`` stops once every row is finished, and blocks after that are never computed.

The selection rules are pure functions (``blocks.py``); ``exact_block_stream`` is the loop. Randomness only
from ``generator``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from unmask.config import DecodeConfig, DecoderConfig
from unmask.decoding.blocks import LogitsProbe, block_schedule, block_spans, commit_window, propose, select_commits
from unmask.decoding.steps import DecodeStep
from unmask.errors import ConfigError
from unmask.model import KVCache


def check_block_decoder(model_config, decoder: DecoderConfig) -> None:
    """A ``ConfigError`` for a decoder a block-diffusion model cannot run: only the block decoders (blocks,
    parallel) at the model's own block size, with no approximate cache (the exact one is always on)."""
    size = model_config.block_size
    if decoder.decoder not in ("blocks", "parallel"):
        raise ConfigError(f"this is a block-diffusion model (block_size {size}): it decodes block by block with "
                          f"an exact KV cache; use --decoder blocks or parallel with --block-length {size}, not "
                          f"{decoder.decoder}")
    if decoder.block_length != size:
        raise ConfigError(f"block_length {decoder.block_length} differs from the model's block_size {size}: a "
                          f"block-diffusion model decodes the blocks it was trained on (--block-length {size})")
    if decoder.cache != "none":
        raise ConfigError(f"--cache {decoder.cache} is the approximate cache of full-attention models; a "
                          "block-diffusion model's cache is exact and always on (leave --cache none)")


def check_suffix(canvas: torch.Tensor, real: torch.Tensor, mask_token_id: int) -> int:
    """The column where the masks of ``canvas`` (B, S) start, checked to be a suffix: every real column from
    there on is a mask in every row and none before. A block-causal model fills blocks left to right after a
    clean prefix; masks between fixed text (infilling) do not fit that shape."""
    masked = (canvas == mask_token_id) & real  # (B, S)
    columns = masked.any(dim=0).nonzero(as_tuple=True)[0]
    if len(columns) == 0:
        raise ValueError("the canvas has no masks to fill")
    start = int(columns[0])
    if bool((real[:, start:] & ~masked[:, start:]).any()) or start < 1:
        raise ValueError("a block-diffusion model fills a suffix of masks after a clean prompt: masks between fixed "
                         "text (infilling) or in column 0 do not fit its block-causal attention")
    return start


def _window_logits(model, x: torch.Tensor, padding: torch.Tensor | None, cache: KVCache, feed_from: int, b0: int,
                   b1: int, origin: int) -> torch.Tensor:
    """Raw logits of canvas columns [feed_from, b1) over the cache viewed to its first b1 slots (B, b1 - feed_from,
    V); the fed columns' K/V are written into their slots."""
    view = KVCache([k[:, :, :b1] for k in cache.keys], [v[:, :, :b1] for v in cache.values])  # views: writes land
    return model(x[:, feed_from:b1], attention_mask=None if padding is None else padding[:, :b1], kv_cache=view,
                 cache_position=feed_from, block_origin=origin)


@torch.inference_mode()
def exact_block_stream(model, canvas: torch.Tensor, attention_mask: torch.Tensor | None, *, config: DecodeConfig,
                       decoder: DecoderConfig, region_start: int, mask_token_id: int,
                       generator: torch.Generator | None = None, probe: LogitsProbe | None = None,
                       stop_ids: tuple[int, ...] = (), logprobs: int | None = None) -> Iterator[DecodeStep]:
    """Decode the masks of ``canvas`` (B, S) — all of columns [region_start, S) — block by block over an exact
    KV cache, yielding after each step. ``attention_mask`` (B, S): left padding (0), never masks to fill."""
    check_block_decoder(model.config, decoder)
    x = canvas.to(model.device, dtype=torch.long).clone()
    batch, length = x.shape
    padding = None if attention_mask is None else attention_mask.to(model.device).long()  # (B, S)
    real = torch.ones_like(x, dtype=torch.bool) if padding is None else padding.bool()
    if check_suffix(x, real, mask_token_id) != region_start:
        raise ValueError(f"the masks must start at region_start ({region_start})")
    spans = block_spans(region_start, length - region_start, model.config.block_size)
    steps_per_block = max(1, config.steps // len(spans))
    cache = KVCache.empty(model.config, batch, length, dtype=model.dtype, device=model.device)
    confidence = "maskgit_plus" if decoder.decoder == "parallel" else config.alg
    step, feed_from = 0, 0  # slots [0, feed_from) hold final (clean) K/V
    for b0, b1 in spans:
        schedule = block_schedule(b1 - b0, steps_per_block)
        inner, head = 0, None
        while bool((candidates := x[:, b0:b1] == mask_token_id).any()):  # (B, n)
            if head is None:  # the previous block's clean K/V, fused with the first step of this one
                raw = _window_logits(model, x, padding, cache, feed_from, b0, b1, region_start)
                head, body = raw[:, b0 - 1 - feed_from], raw[:, b0 - feed_from:b1 - 1 - feed_from]
                feed_from = b0
            else:
                body = _window_logits(model, x, padding, cache, b0, b0, b1, region_start)[:, :b1 - 1 - b0]
            logits = torch.cat([head[:, None], body], dim=1)  # (B, n, V): aligned, logits[:, i] predicts b0 + i
            if probe is not None:
                probe(x, b0, b1, logits)
            scores, tokens, ranking = propose(logits, candidates, config, mask_token_id=mask_token_id,
                                              confidence=confidence, generator=generator, stop_ids=stop_ids)
            pick = select_commits(ranking, candidates, decoder, [schedule] * batch, inner, config.alg_temp,
                                  generator)
            yield commit_window(x, b0, pick, tokens, scores, step=step, logits=logits, config=config,
                                mask_token_id=mask_token_id, logprobs=logprobs)
            step += 1
            inner += 1
