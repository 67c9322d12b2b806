"""Decision margins: how far each decision of a temperature-0 decode was from flipping.

Several tests demand *exact* equality between two computations whose float arithmetic differs: a left-padded
batch against each row alone, a cached forward against an uncached one, a batched draft forward against a
single one, a vectorised sampler against a plain loop. Their logits agree only to ~1e-6 (padded vs unpadded
attention moves them by ~5e-7 on an AMD EPYC), so exact equality of the decoded tokens is a theorem only when
no decision sat on a near-tie, and luck otherwise. These helpers turn the luck into a checked premise:

    result = decode_with_margin(model, ids, config=..., decoder=...)   # asserts every margin >= MARGIN
    assert other_path(...) == result ...                                # now a consequence, not a coincidence

A decision is one row at one step: which candidate positions (the masked positions the step may commit) were
committed, and which token each got. Its margin is the smallest change that would alter it:
- the token: top-1 minus runner-up logit of every committed position (argmax at temperature 0);
- the commit set, in confidence units: top-k rules (reference, ``blocks``): the k-th minus the (k+1)-th
  confidence; ``threshold``: every candidate's distance to the threshold (and top-1 minus runner-up when none
  reaches it); ``factor``: the accepted ranks' distances to their cut-offs, and the boundary gap.
A record the logits do not explain (a position committed over a more confident one) gives a negative margin,
so a misaligned recording fails instead of passing silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from conftest import MASK_ID

from unmask.config import DecodeConfig, DecoderConfig
from unmask.decoding import decode, decode_canvas
from unmask.decoding.blocks import mask_blocks
from unmask.decoding.reference import DecodeResult
from unmask.decoding.sampling import sample_tokens
from unmask.diffusion import shift_logits

# The default bound: two orders of magnitude above the ~1e-6 by which the paths compared in the tests move
# logits and confidences (padded vs unpadded, batched vs single, cached vs uncached, on CPU).
MARGIN = 1e-4


@dataclass(frozen=True)
class Decision:
    """One row at one step. logits: (n, V) aligned logits of the step's n candidate positions;
    committed: (n,) bool, the candidates it committed; tokens: (n,) the ids it gave them (others: anything)."""

    logits: torch.Tensor
    committed: torch.Tensor
    tokens: torch.Tensor
    step: int = 0
    row: int = 0


@dataclass(frozen=True)
class Rule:
    """How a decoder turns candidate logits into commits (temperature 0, no alg_temp)."""

    confidence: str = "maskgit_plus"  # the score the commit rule reads (parallel: always maskgit_plus)
    select: str = "topk"  # "topk" (reference, blocks), "threshold", "factor" (parallel), "random" (origin)
    threshold: float = 0.9
    factor: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    mask_token_id: int | None = MASK_ID  # the decoders never commit the mask token

    @classmethod
    def of(cls, config: DecodeConfig, decoder: DecoderConfig | None = None, *, mask_token_id: int = MASK_ID) -> Rule:
        decoder = decoder or DecoderConfig()
        if config.temperature > 0 or config.alg_temp > 0:
            raise ValueError("sampled decisions have no margin: use temperature 0 and alg_temp 0")
        common = dict(top_p=config.top_p, top_k=config.top_k, mask_token_id=mask_token_id)
        if decoder.decoder == "parallel":
            select = "threshold" if decoder.factor is None else "factor"
            return cls("maskgit_plus", select, decoder.threshold, decoder.factor or 1.0, **common)
        return cls(config.alg if config.alg != "origin" else "maskgit_plus",
                   "random" if config.alg == "origin" else "topk", **common)


def token_margins(logits: torch.Tensor, mask_token_id: int | None = None) -> torch.Tensor:
    """(N, V) logits -> (N,) top-1 minus runner-up logit, the mask token excluded (it is never committed)."""
    logits = logits.float().clone()
    if mask_token_id is not None:
        logits[:, mask_token_id] = float("-inf")
    top2 = logits.topk(2, dim=-1).values
    return top2[:, 0] - top2[:, 1]


def commit_margin(conf: torch.Tensor, committed: torch.Tensor, rule: Rule) -> float:
    """Signed margin of the commit set ``committed`` (n,) given confidences ``conf`` (n,) under ``rule``."""
    if rule.select == "random" or not bool(committed.any()):
        return math.inf  # origin draws its commits; a step that commits nothing decided nothing
    chosen, others = conf[committed], conf[~committed]
    boundary = float(chosen.min() - others.max()) if others.numel() else math.inf
    if rule.select == "topk":
        return boundary
    if rule.select == "threshold":
        if bool((conf >= rule.threshold).any()):  # commits exactly the candidates at or above the threshold
            signed = torch.where(committed, conf - rule.threshold, rule.threshold - conf)
            return float(signed.min())
        # none reaches it: the single most confident one, and none may get close to the threshold
        return min(boundary, float((rule.threshold - conf).min())) if int(committed.sum()) == 1 else -math.inf
    if rule.select == "factor":
        ordered = conf.sort(descending=True).values
        accepted = int(committed.sum())
        margins = [boundary]  # the top `accepted` by confidence, and each rank's test on the right side
        for rank in range(2, min(accepted + 1, len(ordered)) + 1):  # rank 1 is always accepted
            cutoff = 1 - rule.factor / (rank + 1)  # (rank + 1)(1 - c) < factor  <=>  c > cutoff
            c = float(ordered[rank - 1])
            margins.append(c - cutoff if rank <= accepted else cutoff - c)
        return min(margins)
    raise ValueError(f"unknown selection rule {rule.select!r}")


@dataclass(frozen=True)
class Margin:
    value: float
    kind: str  # "token" or "commit"
    step: int
    row: int

    def __str__(self) -> str:
        return f"{self.kind} margin {self.value:.3g} at step {self.step}, row {self.row}"


def decision_margins(decision: Decision, rule: Rule) -> tuple[Margin, Margin]:
    """(token margin, commit margin) of one decision; either is inf when the step decided no such thing."""
    logits, committed = decision.logits.float().clone(), decision.committed.bool()
    if rule.mask_token_id is not None:
        logits[:, rule.mask_token_id] = torch.finfo(logits.dtype).min
    x0, conf = sample_tokens(logits, temperature=0.0, top_p=rule.top_p, top_k=rule.top_k,
                             confidence=rule.confidence)
    token = math.inf
    if bool(committed.any()):
        token = float(token_margins(logits[committed]).min())
        if not torch.equal(x0[committed], decision.tokens[committed].to(x0.device)):
            token = -math.inf  # a committed token that is not the argmax: the logits do not explain the record
    return (Margin(token, "token", decision.step, decision.row),
            Margin(commit_margin(conf, committed, rule), "commit", decision.step, decision.row))


def smallest_margin(decisions: Iterable[Decision], rule: Rule) -> Margin:
    """The smallest token or commit margin over ``decisions`` (inf if they decided nothing)."""
    found = Margin(math.inf, "none", -1, -1)
    for decision in decisions:
        for m in decision_margins(decision, rule):
            if m.value < found.value:
                found = m
    return found


def assert_margin(decisions: Iterable[Decision], rule: Rule, bound: float = MARGIN) -> Margin:
    """Every decision had a margin ≥ ``bound``; returns the smallest. Fails on a near-tie or a record the
    logits do not explain."""
    decisions = list(decisions)
    assert decisions, "no decisions recorded"
    found = smallest_margin(decisions, rule)
    assert found.value >= bound, (
        f"{found} < {bound:g}: a near-tie, so exact equality with a numerically different computation of the "
        f"same decode would be luck (choose inputs with a margin, or compare within a tolerance)")
    return found


# -- recording a decode -------------------------------------------------------------------------------------


def record_decisions(model, run: Callable[..., DecodeResult], ids: torch.Tensor, attention_mask=None, *,
                     config: DecodeConfig, decoder: DecoderConfig | None = None, mask_token_id: int = MASK_ID,
                     **kwargs) -> tuple[DecodeResult, list[Decision]]:
    """Run ``run`` (``decode`` or ``decode_canvas``) and return its result and the decisions of its steps.

    Every step of the reference decoder, and of the block decoders without a KV cache, is one full forward
    whose (shifted) logits the step reads: a forward hook records them. With a cache a step reads partial
    forwards, so the block decoders' ``probe`` records the logits instead (``decode`` only). Candidates are
    the masks of the step's canvas (for the block decoders: of the current block, the lowest one that still
    has masks in some row, as ``block_stream`` walks them).
    """
    decoder = decoder or DecoderConfig()
    if decoder.lossless:
        raise ValueError("lossless makes exactly the reference decoder's decisions: record DecoderConfig()")
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # per step: (canvas before it, aligned logits (B, S, V))
    after: list[tuple[torch.Tensor, torch.Tensor]] = []  # per step: (committed (B, S), canvas after it)

    def hook(module, args, output):
        seen.append((args[0].clone(), shift_logits(output).float()))

    def probe(x, b0, b1, logits):
        full = torch.zeros(*x.shape, logits.shape[-1])
        full[:, b0:b1] = logits.float()
        seen.append((x.clone(), full))

    def on_step(event):
        after.append((event.committed.clone(), event.canvas.clone()))

    extra = {}
    handle = None
    if decoder.decoder != "reference" and decoder.cache != "none":
        if run is not decode:
            raise ValueError("a cached block decoder is recorded through decode's probe")
        extra["probe"] = probe
    else:
        handle = model.register_forward_hook(hook)
    try:
        result = run(model, ids, attention_mask, config=config, decoder=decoder, on_step=on_step, **extra, **kwargs)
    finally:
        if handle is not None:
            handle.remove()
    assert len(seen) == len(after), "one recorded forward per step"
    real = None
    if attention_mask is not None:
        real = attention_mask.bool()
        if real.shape[1] < seen[0][0].shape[1]:  # decode appends the region's masks (all real)
            width = seen[0][0].shape[1] - real.shape[1]
            real = torch.cat([real, torch.ones(real.shape[0], width, dtype=torch.bool)], 1)
    blocks = None
    if decoder.decoder != "reference":
        first = seen[0][0] == mask_token_id
        blocks = mask_blocks(first if real is None else first & real, decoder.block_length)  # (B, S)
    decisions = []
    for step, ((canvas, logits), (committed, canvas_after)) in enumerate(zip(seen, after)):
        candidates = canvas == mask_token_id
        if real is not None:
            candidates &= real
        if not bool(candidates.any()):
            continue  # a reference step after the last mask (steps > masks) decides nothing
        if blocks is not None:  # only the current block's masks are candidates
            current = int(blocks[candidates].min())
            candidates &= blocks == current
        for row in range(canvas.shape[0]):
            c = candidates[row]
            if bool(c.any()):
                decisions.append(Decision(logits[row][c], committed[row][c], canvas_after[row][c], step, row))
    return result, decisions


def decode_with_margin(model, ids: torch.Tensor, attention_mask=None, *, canvas: bool = False,
                       bound: float = MARGIN, config: DecodeConfig | None = None,
                       decoder: DecoderConfig | None = None, trace: bool = False, stop_ids=None,
                       **params) -> DecodeResult:
    """``decode`` (``decode_canvas`` with canvas=True) that asserts each decision had a margin ≥ ``bound``.

    Parameters resolve as the decoders resolve them: the model's generation defaults (or ``DecodeConfig()``)
    updated by ``params``. ``trace`` and ``stop_ids`` (``decode`` only) go to the decoder.
    """
    base = config or getattr(model, "generation_defaults", None) or DecodeConfig()
    config = base.replace(**params) if params else base
    mask_id = model.config.mask_token_id
    extra = {"trace": trace} if stop_ids is None else {"trace": trace, "stop_ids": stop_ids}
    result, decisions = record_decisions(model, decode_canvas if canvas else decode, ids, attention_mask,
                                         config=config, decoder=decoder, mask_token_id=mask_id, **extra)
    assert_margin(decisions, Rule.of(config, decoder, mask_token_id=mask_id), bound)
    return result
