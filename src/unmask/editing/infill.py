"""Infilling: fill the holes of prefix + masks + suffix canvases (or any number of spans) with any decoder.

A request is a list of segments: literal text and ``Hole``s (``editing.placeholders``). Each text segment
is tokenised on its own and each hole becomes masks, so the canvas is ``ids(text_0) + [mask] * n_0 +
ids(text_1) + …``. The result text is built from the *original* text segments and the decoded middles, never
by re-decoding the fixed parts, so prefix and suffix are byte-exact whatever the tokenizer does. A middle's
text ends at its first eos/pad token (the model may end a span early with a stop token; the rest of that
span is dropped). When the canvas would start with a hole, a bos (or eos) token is put first: position 0
must be a real token (the shift).

How many tokens a hole gets (the length rule), for holes without an explicit ``<|mask:N|>`` length:
- ``length=N`` (fixed): every such hole gets N masks.
- ``length="auto"`` (default of ``unmask infill``): a small search. For each candidate length in
  ``auto_lengths`` (up to ``max_length``) the whole batch is decoded with that length, then each row is
  scored by the model itself — the mean log-probability of its filled middle tokens with every hole masked
  again (one extra forward, the same full-mask estimate diffu-GRPO uses) — and each row keeps its best
  candidate (ties: the shorter). Why this rule: our models are not trained with an end-of-span token, so
  the model cannot say "the span ends here" reliably; the full-mask score is cheap (one forward per
  candidate) and the mean (not the sum) does not favour short spans by construction. Cost: one decode
  per candidate. The stop-token cut above still lets a long candidate end early.
Steps: the decode config's tokens-per-step ratio is kept: ``steps = ceil(config.steps * masks /
config.max_new_tokens)`` for a canvas with ``masks`` masked tokens (the reference then commits one token per
step when steps == max_new_tokens, as for ``generate``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from unmask.config import DecodeConfig, DecoderConfig, GenerationDefaults
from unmask.decoding.canvas import left_pad
from unmask.decoding.dispatch import decode_canvas
from unmask.diffusion import shift_logits
from unmask.editing.placeholders import Hole, Segment

AUTO_LENGTHS = (4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Canvas:
    """One row's token layout: ``ids`` and, per hole, the [start, end) columns of its masks."""

    ids: tuple[int, ...]
    holes: tuple[tuple[int, int], ...]


@dataclass
class InfillResult:
    text: str  # the whole filled text: original text segments + decoded middles
    middles: list[str]  # one decoded text per hole
    middle_ids: list[list[int]]  # one id list per hole (the full span, stop tokens included)
    lengths: list[int]  # masks given to each hole
    score: float | None = None  # the auto rule's score of the kept length (None for fixed lengths)
    forwards: int = 0  # forward passes spent on the batch this row was in (decodes + scoring)
    candidates: dict[int, float] = field(default_factory=dict)  # auto: length -> score


def build_canvas(segments: Sequence[Segment], encode, *, default_length: int, mask_id: int,
                 bos_id: int) -> Canvas:
    """Pure layout: text segments tokenised with ``encode`` (str -> list[int]), holes as masks."""
    if not isinstance(default_length, int) or default_length <= 0:
        raise ValueError(f"the default hole length must be a positive integer, got {default_length!r}")
    ids: list[int] = []
    holes: list[tuple[int, int]] = []
    for seg in segments:
        if isinstance(seg, Hole):
            if not ids:
                ids.append(bos_id)  # position 0 must be a real token
            n = seg.length if seg.length is not None else default_length
            holes.append((len(ids), len(ids) + n))
            ids.extend([mask_id] * n)
        elif isinstance(seg, str):
            ids.extend(encode(seg))
        else:
            raise TypeError(f"a segment must be a str or a Hole, got {type(seg).__name__}")
    if not holes:
        raise ValueError("nothing to fill: the segments have no hole (use <|mask|> or <|mask:N|>)")
    return Canvas(tuple(ids), tuple(holes))


def scaled_steps(config: DecodeConfig, masks: int) -> int:
    """Steps for a canvas with ``masks`` masked tokens, keeping the config's tokens per step."""
    return max(1, math.ceil(config.steps * masks / config.max_new_tokens))


@torch.inference_mode()
def span_scores(model, canvas: torch.Tensor, attention_mask: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """(B,) mean log p(filled token) over ``span`` (B, S) bool, with every span position masked again.

    canvas: (B, S) filled ids; one forward. Rows with an empty span score 0.
    """
    masked = canvas.masked_fill(span, model.config.mask_token_id)
    padding = None if bool(attention_mask.bool().all()) else attention_mask
    logp = torch.log_softmax(shift_logits(model(masked, attention_mask=padding)).float(), dim=-1)  # (B, S, V)
    token_logp = logp.gather(-1, canvas[..., None]).squeeze(-1)  # (B, S)
    counts = span.sum(dim=1).clamp(min=1)
    return (token_logp * span).sum(dim=1) / counts


def _decode_rows(model, rows: list[Canvas], pad_id: int, mask_id: int, config: DecodeConfig,
                 decoder: DecoderConfig, generator: torch.Generator | None):
    """Decode left-padded canvases; returns (filled (B, W), attention mask, offsets, forwards)."""
    ids, mask, offsets = left_pad([r.ids for r in rows], pad_id)
    masks = int((ids == mask_id).logical_and(mask.bool()).sum(dim=1).max())
    step_config = config.replace(steps=scaled_steps(config, masks))
    out = decode_canvas(model, ids.to(model.device), mask.to(model.device), config=step_config, decoder=decoder,
                        generator=generator)
    return out.sequences, mask.to(model.device), offsets, out.stats.forward_passes


def infill(model, tokenizer, requests: Sequence[Sequence[Segment]], *, length: int | str = "auto",
           config: DecodeConfig | None = None, decoder: DecoderConfig | None = None,
           generator: torch.Generator | None = None, seed: int = 0,
           auto_lengths: Sequence[int] = AUTO_LENGTHS, max_length: int | None = None) -> list[InfillResult]:
    """Fill every hole of every request (one batch); see the module docstring for the length rule.

    requests: per row, segments (text and ``Hole``s); length: N or "auto" for holes without their own length;
    max_length: the longest auto candidate (default: ``config.max_new_tokens``).
    """
    if not requests:
        return []
    defaults = GenerationDefaults.of(model)  # for callers that pass no settings
    config, decoder = config or defaults.decode, decoder or defaults.decoder
    special = tokenizer.special
    mask_id, pad_id = special.mask, special.pad
    bos_id = special.bos if special.bos is not None else special.eos
    if generator is None:
        generator = torch.Generator(device=model.device).manual_seed(seed)
    if length == "auto":
        top = max_length or config.max_new_tokens
        grid = sorted({n for n in auto_lengths if 0 < n <= top}) or [top]
    elif isinstance(length, int) and not isinstance(length, bool) and length > 0:
        grid = [length]
    else:
        raise ValueError(f"length must be a positive integer or 'auto', got {length!r}")
    if all(seg.length is not None for r in requests for seg in r if isinstance(seg, Hole)):
        grid = grid[:1]  # every hole has its own length: the rule has nothing to choose, decode once

    best: list[InfillResult | None] = [None] * len(requests)
    tried: list[dict[int, float]] = [{} for _ in requests]
    forwards = 0
    for n in grid:
        rows = [build_canvas(r, tokenizer.encode, default_length=n, mask_id=mask_id, bos_id=bos_id) for r in requests]
        filled, attn, offsets, used = _decode_rows(model, rows, pad_id, mask_id, config, decoder, generator)
        forwards += used
        scores: list[float | None] = [None] * len(rows)
        if len(grid) > 1:
            span = torch.zeros_like(filled, dtype=torch.bool)
            for i, (row, off) in enumerate(zip(rows, offsets)):
                for a, b in row.holes:
                    span[i, off + a:off + b] = True
            scores = span_scores(model, filled, attn, span).tolist()
            forwards += 1
        for i, (row, off, request) in enumerate(zip(rows, offsets, requests)):
            line = filled[i].tolist()
            middle_ids = [line[off + a:off + b] for a, b in row.holes]
            middles = [tokenizer.decode(m) for m in middle_ids]
            result = InfillResult(text=_assemble(request, middles), middles=middles, middle_ids=middle_ids,
                                  lengths=[b - a for a, b in row.holes], score=scores[i])
            if scores[i] is not None:
                tried[i][n] = round(scores[i], 6)
            previous = best[i]
            # Strictly better only: on a tie the shorter candidate (tried first) stays.
            if previous is None or (scores[i] is not None and scores[i] > previous.score):
                best[i] = result
    final = [r for r in best if r is not None]
    for r, t in zip(final, tried):
        r.forwards = forwards
        r.candidates = t
    return final


def _assemble(segments: Sequence[Segment], middles: Sequence[str]) -> str:
    """The original text segments with each hole replaced by its middle (byte-exact outside the holes)."""
    out: list[str] = []
    it = iter(middles)
    for seg in segments:
        out.append(next(it) if isinstance(seg, Hole) else seg)
    return "".join(out)


def fim_segments(prefix: str, suffix: str, length: int | None = None) -> list[Segment]:
    """prefix + one hole + suffix (empty parts dropped)."""
    return [s for s in (prefix, Hole(length), suffix) if not (isinstance(s, str) and s == "")]
