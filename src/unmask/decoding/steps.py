"""What every decoder shares after the canvas is built: the step event each stream yields, the statistics, the
result, and ``run_steps``, the one driver that runs a stream and owns the statistics, the decode trace, the
``on_step`` hook and early EOS (docs/sampler.md).

Early EOS ends the loop only once *every* row is finished (``eos.rows_finished``); it never changes a decision,
so each row's text equals the text of the same decode run to the end. Finished rows get pad after their first
stop token. ``stats.useful_tokens`` counts tokens before the first stop, per row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from unmask.config import DecodeConfig
from unmask.decoding.eos import pad_after_stop, rows_finished, useful_lengths
from unmask.decoding.sampling import sampled_logprobs
from unmask.decoding.trace import DecodeTrace


@dataclass(frozen=True)
class CommitLogprobs:
    """Log-probabilities of one step's committed tokens (M of them, row-major) under the distribution the step
    drew them from (``sampling.sampled_logprobs``), with the ``k`` most likely tokens of that distribution."""

    rows: torch.Tensor  # (M,) long
    cols: torch.Tensor  # (M,) long, canvas columns
    chosen: torch.Tensor  # (M,) float32, log p of the committed token
    top_ids: torch.Tensor  # (M, k) long, most likely first
    top: torch.Tensor  # (M, k) float32


def commit_logprobs(logits: torch.Tensor, committed: torch.Tensor, canvas: torch.Tensor, config: DecodeConfig,
                    mask_token_id: int, top: int, offset: int = 0) -> CommitLogprobs:
    """The log-probabilities of a step's commits. logits: (B, n, V), the aligned logits the step sampled from,
    of canvas columns [offset, offset + n); committed: (B, n) bool; canvas: (B, S) after the step's commits.

    Reads only: the decoded tokens and the generator are untouched, so asking for log-probs changes nothing."""
    rows, cols = committed.nonzero(as_tuple=True)
    scores = logits[rows, cols].float()  # (M, V), a copy (advanced indexing)
    if not config.dream_compat:  # the samplers never draw the mask token (Dream's does)
        scores[:, mask_token_id] = torch.finfo(scores.dtype).min
    top_p, top_k = config.token_filters
    chosen, top_ids, top_values = sampled_logprobs(scores, canvas[rows, cols + offset],
                                                   temperature=config.temperature, top_p=top_p, top_k=top_k,
                                                   top=top)
    return CommitLogprobs(rows, cols + offset, chosen, top_ids, top_values)


@dataclass
class DecodeStep:
    """One step of a streaming decode: the canvas after the step and what it committed."""

    step: int
    canvas: torch.Tensor  # (B, T) ids after this step (a view of the working canvas: clone to keep)
    committed: torch.Tensor  # (B, T) bool, positions committed at this step
    confidence: torch.Tensor  # (B, T) float32, confidence of committed positions (0 elsewhere)
    forwards: int = 1  # model calls this step made (0: a step skipped losslessly; the draft round's call is 1)
    canvases: int = 1  # canvases those calls evaluated per row (a draft-and-verify round evaluates several)
    logprobs: CommitLogprobs | None = None  # only when the stream was asked for them (``logprobs=k``)
    # revising decoders (``revise``) only: (B, T) bool, committed tokens this step took back — re-masked or edited,
    # before its commits — and (B, T) the tokens they held before (the canvas holds what replaced them)
    revised: torch.Tensor | None = None
    revised_from: torch.Tensor | None = None


@dataclass
class DecodeStats:
    forward_passes: int = 0  # sequential model calls (the latency unit: tokens per forward uses it)
    tokens_committed: int = 0
    seconds: float = 0.0
    canvas_forwards: int = 0  # canvases evaluated (compute); > forward_passes when drafts are batched
    useful_tokens: int | None = None  # tokens before the first eos/pad, summed over rows (when known)
    tokens_revised: int = 0  # committed tokens taken back (re-masked or edited) by a revising decoder

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_committed / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens_committed / self.forward_passes if self.forward_passes else 0.0

    def to_json(self) -> dict:
        return {"forward_passes": self.forward_passes, "tokens_committed": self.tokens_committed,
                "seconds": round(self.seconds, 4), "tokens_per_second": round(self.tokens_per_second, 2),
                "tokens_per_forward": round(self.tokens_per_forward, 3),
                **({"canvas_forwards": self.canvas_forwards} if self.canvas_forwards else {}),
                **({"tokens_revised": self.tokens_revised} if self.tokens_revised else {}),
                **({} if self.useful_tokens is None else {
                    "useful_tokens": self.useful_tokens,
                    "useful_tokens_per_second": round(self.useful_tokens / self.seconds, 2) if self.seconds else 0.0})}


@dataclass
class DecodeResult:
    sequences: torch.Tensor  # (B, T) final canvas
    region_start: int  # canvas index where the generated region starts (= padded prompt length)
    stats: DecodeStats = field(default_factory=DecodeStats)
    trace: DecodeTrace | None = None

    @property
    def generated(self) -> torch.Tensor:
        return self.sequences[:, self.region_start:]


def run_steps(steps: Iterable[DecodeStep], canvas: torch.Tensor, *, region_start: int, trace: bool = False,
              on_step: Callable[[DecodeStep], None] | None = None, stop_ids: tuple[int, ...] = (),
              early_stop: tuple[int, int] | None = None, mask_token_id: int | None = None) -> DecodeResult:
    """Run a decoder's stream over ``canvas`` (B, T) to its end; count, trace and call ``on_step`` (its time
    counts in the stats) after every step.

    ``early_stop`` = (mask id, pad id): stop once every row of the region (from ``region_start``) is finished,
    then pad each row after its first stop token. ``stop_ids`` (eos/pad) end rows and give ``useful_tokens``.
    ``mask_token_id`` lets the trace tell a re-masked token from an edited one (revising decoders, which refuse
    ``early_stop``: a revision can change a row that looks finished).
    """
    stats = DecodeStats()
    record = DecodeTrace.empty(canvas.shape[0], region_start) if trace else None
    start = time.perf_counter()
    final = canvas
    for event in steps:
        stats.forward_passes += event.forwards
        stats.canvas_forwards += event.canvases
        stats.tokens_committed += int(event.committed.sum())
        if event.revised is not None:
            stats.tokens_revised += int(event.revised.sum())
        if record is not None:
            record.add_step(event.committed, event.canvas, event.confidence, event.revised, event.revised_from,
                            mask_token_id)
        if on_step is not None:
            on_step(event)
        final = event.canvas
        if early_stop is not None and bool(rows_finished(final[:, region_start:], stop_ids, early_stop[0]).all()):
            break
    final = final.clone()
    if early_stop is not None:
        final[:, region_start:] = pad_after_stop(final[:, region_start:], stop_ids, early_stop[1])
    stats.seconds = time.perf_counter() - start
    stats.useful_tokens = sum(useful_lengths(final[:, region_start:], stop_ids)) if stop_ids else None
    return DecodeResult(final, region_start, stats, record)
