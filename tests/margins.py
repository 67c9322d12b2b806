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
  reaches it); ``factor``: the accepted ranks' distances to their cut-offs, and the boundary gap;
- the filters, where confidences were compared: how close top-p / top-k came to keeping another token.
A record the logits do not explain (a position committed over a more confident one) gives a negative margin,
so a misaligned recording fails instead of passing silently.

Where no input has a margin everywhere (random models crowd their confidences), ``assert_same_decisions`` is
the tolerance instead: the two decodes agree decision by decision, except that a row may part at a near-tie.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from conftest import MASK_ID

from unmask.config import DecodeConfig, DecoderConfig
from unmask.decoding import decode, decode_canvas
from unmask.decoding.blocks import mask_blocks
from unmask.decoding.reference import DecodeResult
from unmask.decoding.sampling import sample_tokens
from unmask.diffusion import shift_logits

# The default bound: 50-100x the ~1e-6 by which the paths compared in the tests move logits and confidences
# (padded vs unpadded, batched vs single, cached vs uncached, on CPU). The gap grows with the logits' size
# (~1e-7 of the largest logit: 2e-6 for the test preset with lm_head x 40), so sharper models need more.
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


def filter_margin(logits: torch.Tensor, rule: Rule) -> float:
    """How far the top-p / top-k filters were from keeping or dropping another token, for logits (n, V).

    top-p keeps a token while the mass before it is ≤ top_p: the margin is the closest any token's preceding
    mass came to top_p (probability units); top-k keeps logits ≥ the k-th largest: the k-th minus the
    (k+1)-th logit. The filtered distribution is what the confidences are computed on.
    """
    found = math.inf
    if rule.top_p is not None and rule.top_p < 1:
        probs = logits.sort(dim=-1, descending=True).values.softmax(-1)
        before = probs.cumsum(-1) - probs  # (n, V) mass of the more likely tokens
        found = min(found, float((before[:, 1:] - rule.top_p).abs().min()))
    if rule.top_k is not None and rule.top_k < logits.shape[-1]:
        top = logits.topk(rule.top_k + 1, dim=-1).values
        found = min(found, float((top[:, -2] - top[:, -1]).min()))
    return found


@dataclass(frozen=True)
class Margin:
    value: float
    kind: str  # "token", "commit" or "filter"
    step: int
    row: int

    def __str__(self) -> str:
        return f"{self.kind} margin {self.value:.3g} at step {self.step}, row {self.row}"


def decision_margins(decision: Decision, rule: Rule) -> tuple[Margin, Margin, Margin]:
    """(token, commit, filter) margins of one decision; inf where the step decided no such thing (the filters
    matter only where confidences are compared: when the commit set was a choice)."""
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
    commit = commit_margin(conf, committed, rule)
    filtered = filter_margin(logits, rule) if commit < math.inf else math.inf
    return tuple(Margin(v, kind, decision.step, decision.row)
                 for v, kind in ((token, "token"), (commit, "commit"), (filtered, "filter")))


def smallest_margin(decisions: Iterable[Decision], rule: Rule) -> Margin:
    """The smallest token, commit or filter margin over ``decisions`` (inf if they decided nothing)."""
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


class StepLog:
    """What each step of a decode committed: pass ``on_step=log.on_step``; ``events``: (committed (B, S),
    canvas after the step) per step."""

    def __init__(self) -> None:
        self.events: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_step(self, event) -> None:
        self.events.append((event.committed.clone(), event.canvas.clone()))


class Recorder(StepLog):
    """Records the decisions of the decodes run inside it (one decode per recorder).

        with Recorder(model, decoder) as rec:
            result = unmask.generate(model, ids, ...)       # or decode(..., on_step=rec.on_step, probe=rec.probe)
        assert_margin(rec.decisions(result.sequences), Rule.of(config, decoder))

    Every step of the reference decoder, and of the block decoders without a KV cache, is one full forward
    whose (shifted) logits the step reads: a forward hook records them. With a cache a step reads partial
    forwards; pass ``probe=rec.probe`` to ``decode`` and the logits the step used are recorded instead. What
    a step committed is read from ``on_step`` events when given, else from the next step's canvas (and the
    final one). Candidates are the canvas's masks (block decoders: those of the current block, the lowest
    block that still has masks in some row, as ``block_stream`` walks them). Not for ``lossless``: its
    forwards are not its steps (it makes exactly the reference decoder's decisions: record that one).
    """

    def __init__(self, model, decoder: DecoderConfig | None = None, *, attention_mask: torch.Tensor | None = None,
                 mask_token_id: int = MASK_ID) -> None:
        super().__init__()
        self.model, self.decoder = model, decoder or DecoderConfig()
        if self.decoder.lossless:
            raise ValueError("lossless makes exactly the reference decoder's decisions: record DecoderConfig()")
        self.attention_mask, self.mask_token_id = attention_mask, mask_token_id
        self.forwards: list[tuple[torch.Tensor, torch.Tensor]] = []  # (canvas, aligned logits (B, S, V))
        self.probed: list[tuple[torch.Tensor, torch.Tensor]] = []  # the same, from the probe (cached decoders)
        self._handle = None

    def __enter__(self) -> Recorder:
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _hook(self, module, args, output) -> None:
        self.forwards.append((args[0].clone(), shift_logits(output).float()))

    def probe(self, x: torch.Tensor, b0: int, b1: int, logits: torch.Tensor) -> None:
        full = torch.zeros(*x.shape, logits.shape[-1])
        full[:, b0:b1] = logits.float()
        self.probed.append((x.clone(), full))

    def steps(self, final: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(committed (B, S), canvas after) per step: the ``on_step`` events, or else read off the canvas each
        forward saw and ``final``, the canvas the last step left (before any early-stop padding)."""
        if self.events:
            return self.events
        if final is None:
            raise ValueError("without on_step events, give the final canvas")
        seen = self._seen()
        after = [canvas for canvas, _ in seen[1:]] + [final.to(seen[0][0].device)]
        return [((before == self.mask_token_id) & (nxt != self.mask_token_id), nxt)
                for (before, _), nxt in zip(seen, after)]

    def _seen(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        seen = self.probed or self.forwards
        if self.decoder.decoder != "reference" and self.decoder.cache != "none" and not self.probed:
            raise ValueError("a cached block decoder's steps read partial forwards: pass probe=rec.probe")
        if any(canvas.shape != seen[0][0].shape for canvas, _ in seen):
            raise ValueError("forwards of different shapes: one forward per step was expected (not lossless)")
        if self.events and len(self.events) != len(seen):
            raise ValueError(f"{len(seen)} forwards for {len(self.events)} steps: one per step was expected")
        return seen

    def decisions(self, final: torch.Tensor | None = None) -> list[Decision]:
        """Each step's decisions, per row; ``final``: the decoded canvas (needed without ``on_step``)."""
        seen, commits = self._seen(), self.steps(final)
        real = None
        if self.attention_mask is not None:
            real = self.attention_mask.bool()
            if real.shape[1] < seen[0][0].shape[1]:  # decode appends the region's masks (all real)
                width = seen[0][0].shape[1] - real.shape[1]
                real = torch.cat([real, torch.ones(real.shape[0], width, dtype=torch.bool)], 1)
        blocks = None
        if self.decoder.decoder != "reference":
            first = seen[0][0] == self.mask_token_id
            blocks = mask_blocks(first if real is None else first & real, self.decoder.block_length)  # (B, S)
        decisions = []
        for step, ((canvas, logits), (committed, canvas_after)) in enumerate(zip(seen, commits)):
            candidates = canvas == self.mask_token_id
            if real is not None:
                candidates &= real
            if not bool(candidates.any()):
                continue  # a reference step after the last mask (steps > masks) decides nothing
            if blocks is not None:  # only the current block's masks are candidates
                candidates &= blocks == int(blocks[candidates].min())
            for row in range(canvas.shape[0]):
                c = candidates[row]
                if bool(c.any()):
                    decisions.append(Decision(logits[row][c], committed[row][c], canvas_after[row][c], step, row))
        return decisions


def decode_with_margin(model, ids: torch.Tensor, attention_mask=None, *, canvas: bool = False,
                       bound: float = MARGIN, config: DecodeConfig | None = None,
                       decoder: DecoderConfig | None = None, **kwargs) -> DecodeResult:
    """``decode`` (``decode_canvas`` with canvas=True) that asserts each decision had a margin ≥ ``bound``.

    ``kwargs``: the decoders' own (seed, trace, stop_ids) and sampler parameters, resolved as the decoders
    resolve them (the model's generation defaults, or ``DecodeConfig()``, updated by them). A lossless
    decoder's margin is measured on the reference decoder, whose decisions it makes; its own result is
    returned.
    """
    own = {k: kwargs.pop(k) for k in ("seed", "trace", "stop_ids") if k in kwargs}
    base = config or getattr(model, "generation_defaults", None) or DecodeConfig()
    config = base.replace(**kwargs) if kwargs else base
    decoder = decoder or DecoderConfig()
    run = decode_canvas if canvas else decode
    recorded = decoder.replace(lossless=False)
    mask_id = model.config.mask_token_id
    with Recorder(model, recorded, attention_mask=attention_mask, mask_token_id=mask_id) as rec:
        probe = {"probe": rec.probe} if recorded.cache != "none" else {}
        result = run(model, ids, attention_mask, config=config, decoder=recorded, on_step=rec.on_step, **probe,
                     **own)
    assert_margin(rec.decisions(), Rule.of(config, recorded, mask_token_id=mask_id), bound)
    if decoder.lossless:
        result = run(model, ids, attention_mask, config=config, decoder=decoder, **own)
    return result


def assert_same_decisions(rec: Recorder, other: StepLog, rule: Rule, bound: float = MARGIN,
                          final: torch.Tensor | None = None) -> bool:
    """Another decode of the same canvas made the recorded decode's decisions, within a tolerance.

    Step by step and row by row, ``other`` (the other decode's ``on_step`` log) must commit the same positions
    with the same tokens as ``rec`` (``final``: its decoded canvas, when it ran without ``on_step``), except
    that a row may part ways at a decision whose margin on the recorded decode was below ``bound``: a near-tie,
    which a numerically different computation may resolve the other way. From there on that row is not
    compared. Returns whether every row agreed to the end (then the two results are equal).
    """
    steps = rec.steps(final)
    margins = {(d.step, d.row): min(m.value for m in decision_margins(d, rule)) for d in rec.decisions(final)}
    live = set(range(steps[0][0].shape[0]))
    for step, ((committed, canvas), (other_committed, other_canvas)) in enumerate(zip(steps, other.events)):
        for row in sorted(live):
            if torch.equal(committed[row], other_committed[row]) and torch.equal(canvas[row], other_canvas[row]):
                continue
            margin = margins.get((step, row), math.inf)
            assert margin < bound, (f"step {step}, row {row}: the decodes differ at a decision whose margin was "
                                    f"{margin:.3g} >= {bound:g}: not a near-tie, a real difference")
            live.discard(row)
    assert not live or len(steps) == len(other.events), "rows that agreed throughout took different step counts"
    return len(live) == steps[0][0].shape[0]
