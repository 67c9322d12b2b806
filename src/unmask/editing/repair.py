"""Test-guided repair: run the tests, re-mask the spans most likely wrong, re-denoise only those, repeat.

    unmask repair MODEL buggy.py --tests tests.py --rounds 3

One round: (1) run ``build(code)`` in the sandbox; stop if it passes. (2) Candidate spans are the lines of the
editable character range, each trimmed of surrounding whitespace (indentation and the newline stay fixed;
a span starts on a token boundary, see ``line_spans``).
(3) Lines named in the traceback (``File "program.py", line N`` mapped back into ``code``, innermost first)
are chosen first, then the lines the model is least sure of: a line's score is the mean log-probability of
its tokens when each is masked (``stride`` canvases, each masking every stride-th token: a strided
pseudo-likelihood, ``stride`` forwards). (4) The chosen spans become holes of the *same token count* as the
text they replace (a bug like a changed operator or constant rarely changes the length) and are filled by
``editing.infill`` with the chosen decoder; everything outside them is kept byte for byte. (5) The diff of the
round is recorded, and the tests run again. (6) If they still fail, the round is undone (``revert_failed``,
the default) and the next round tries the next most suspicious spans of the same code; a passing round ends
the repair. With ``revert_failed=False`` every round builds on the previous one.

Compute is counted in forwards (canvases evaluated per sample): scoring + decoding.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from unmask.config import DecodeConfig, DecoderConfig
from unmask.diffusion import shift_logits
from unmask.editing.infill import infill
from unmask.editing.placeholders import Hole, Segment

_TRACE_LINE = re.compile(r'File "program\.py", line (\d+)')


@dataclass(frozen=True)
class RepairConfig:
    """How a repair runs (rounds, spans per round, scoring, sandbox limits)."""

    rounds: int = 2
    spans_per_round: int = 1
    stride: int = 4
    use_traceback: bool = True
    # A round whose tests still fail is undone and the next most suspicious spans are tried instead: pass/fail
    # cannot tell a half-fix from a new bug, and keeping every failed rewrite compounds the damage.
    revert_failed: bool = True
    timeout: float = 5.0
    memory_mb: int = 1024

    def __post_init__(self) -> None:
        for name in ("rounds", "spans_per_round", "stride", "memory_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "rounds" else 1):
                raise ValueError(f"{name} must be an integer >= {0 if name == 'rounds' else 1}, got {value!r}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout!r}")


@dataclass
class RepairRound:
    spans: list[tuple[int, int]]  # character ranges of ``code`` (before the round) that were re-masked
    diff: str  # unified diff of the round
    code: str  # the code after the round
    passed: bool  # tests after the round
    error_kind: str
    forwards: int
    kept: bool = True  # False: the tests still failed and the round was undone (``revert_failed``)


@dataclass
class RepairResult:
    code: str  # the code after the last round
    passed_before: bool
    passed: bool
    rounds: list[RepairRound] = field(default_factory=list)

    @property
    def forwards(self) -> int:
        return sum(r.forwards for r in self.rounds)


def line_spans(code: str, editable: tuple[int, int] | None = None, tokenizer=None) -> list[tuple[int, int]]:
    """Character ranges of every line's content (stripped of surrounding whitespace) inside ``editable``.

    With a ``tokenizer`` a span starts at the last token boundary at or before the content, in the line's own
    tokenisation. Byte-level BPEs (GPT-2's, Qwen2's, ours) glue one space to the next word (``"    return"``
    is ``"   " + " return"``): a hole starting at ``return`` would be filled with ``" return"`` and shift the
    indentation by one, which Python rejects.
    """
    lo, hi = editable if editable is not None else (0, len(code))
    spans = []
    start = 0
    for line in code.splitlines(keepends=True):
        a, b = max(start, lo), min(start + len(line), hi)
        text = code[a:b]
        if text.strip():
            content = a + len(text) - len(text.lstrip())
            a = content if tokenizer is None else max(a, _token_boundary(code[start:start + len(line)],
                                                                          content - start, tokenizer) + start)
            b -= len(text) - len(text.rstrip())
            spans.append((a, b))
        start += len(line)
    return spans


def _token_boundary(line: str, offset: int, tokenizer) -> int:
    """The last token boundary <= ``offset`` in ``tokenizer.encode(line)``; ``offset`` if the pieces do not
    spell the line (a tokenizer that normalises text)."""
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode(line)]
    if "".join(pieces) != line:
        return offset
    best, pos = 0, 0
    for piece in pieces:
        if pos > offset:
            break
        best = pos
        pos += len(piece)
    return best


def traceback_lines(stderr: str, code_line_offset: int, num_lines: int) -> list[int]:
    """0-based lines of ``code`` named in a traceback of ``program.py``, innermost frame first.

    code_line_offset: program lines before the code's first line."""
    found = []
    for match in reversed(list(_TRACE_LINE.finditer(stderr))):
        line = int(match.group(1)) - 1 - code_line_offset
        if 0 <= line < num_lines and line not in found:
            found.append(line)
    return found


def choose_spans(spans: Sequence[tuple[int, int]], scores: Sequence[float], implicated_spans: Sequence[int],
                 k: int) -> list[tuple[int, int]]:
    """Pure choice: implicated span indices first (in the given order), then the lowest scores; sorted."""
    order = [i for i in implicated_spans if 0 <= i < len(spans)]
    order += sorted((i for i in range(len(spans)) if i not in order), key=lambda i: (scores[i], i))
    return sorted(spans[i] for i in order[:k])


@torch.inference_mode()
def token_scores(model, ids: Sequence[int], stride: int) -> tuple[list[float], int]:
    """log p(token) of every id but the first, each with its stride class masked; (scores, canvases run)."""
    mask_id = model.config.mask_token_id
    canvas = torch.tensor([list(ids)], device=model.device)  # (1, S)
    length = canvas.shape[1]
    stride = max(1, min(stride, length - 1))
    positions = torch.arange(length, device=model.device)
    batch = canvas.repeat(stride, 1)  # (stride, S): row j masks positions p >= 1 with p % stride == j
    masked = (positions[None, :] % stride == torch.arange(stride, device=model.device)[:, None]) & (positions >= 1)
    logits = shift_logits(model(batch.masked_fill(masked, mask_id))).float()  # (stride, S, V)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, batch[..., None]).squeeze(-1)  # (stride, S)
    per_position = (logp * masked).sum(dim=0)  # each position is masked in exactly one row
    return per_position.tolist()[1:], stride


def span_confidence(model, tokenizer, code: str, spans: Sequence[tuple[int, int]], stride: int
                    ) -> tuple[list[float], int]:
    """Mean token log-prob of each span (code tokenised piecewise at span borders); (scores, forwards)."""
    cuts = sorted({0, len(code), *(c for s in spans for c in s)})
    ids: list[int] = []
    owner: list[int] = []  # span index of each token, -1 outside spans
    start_of = {s[0]: i for i, s in enumerate(spans)}
    current = -1
    for a, b in zip(cuts, cuts[1:]):
        if a in start_of:
            current = start_of[a]
        elif current >= 0 and a >= spans[current][1]:
            current = -1
        piece = tokenizer.encode(code[a:b])
        ids.extend(piece)
        owner.extend([current] * len(piece))
    bos = tokenizer.special.bos if tokenizer.special.bos is not None else tokenizer.special.eos
    logp, forwards = token_scores(model, [bos, *ids], stride)
    sums = [0.0] * len(spans)
    counts = [0] * len(spans)
    for o, lp in zip(owner, logp):
        if o >= 0:
            sums[o] += lp
            counts[o] += 1
    return [s / c if c else 0.0 for s, c in zip(sums, counts)], forwards


def masked_segments(code: str, spans: Sequence[tuple[int, int]], encode) -> list[Segment]:
    """``code`` with each span replaced by a hole of the span's own token count."""
    segments: list[Segment] = []
    pos = 0
    for a, b in sorted(spans):
        if a > pos:
            segments.append(code[pos:a])
        segments.append(Hole(max(1, len(encode(code[a:b])))))
        pos = b
    if pos < len(code):
        segments.append(code[pos:])
    return segments


def unified(before: str, after: str, name: str = "code") -> str:
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        fromfile=f"a/{name}", tofile=f"b/{name}"))


def repair(model, tokenizer, code: str, build: Callable[[str], str], *, editable: tuple[int, int] | None = None,
           config: RepairConfig | None = None, decode: DecodeConfig | None = None,
           decoder: DecoderConfig | None = None, generator: torch.Generator | None = None, seed: int = 0,
           on_round: Callable[[int, RepairRound], None] | None = None) -> RepairResult:
    """Repair ``code`` until ``build(code)`` (the test program) passes in the sandbox, or ``rounds`` run out.

    editable: the character range [start, end) of ``code`` that may change (default: all of it).
    """
    from unmask.sandbox import run

    config = config or RepairConfig()
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    if editable is not None and not (0 <= editable[0] <= editable[1] <= len(code)):
        raise ValueError(f"editable range {editable} is outside the code (length {len(code)})")
    if generator is None:
        generator = torch.Generator(device=model.device).manual_seed(seed)

    def test(text: str):
        program = build(text)
        at = program.find(text)
        return run(program, timeout=config.timeout, memory_mb=config.memory_mb), program[:max(at, 0)].count("\n")

    outcome, offset = test(code)
    result = RepairResult(code, outcome.passed, outcome.passed)
    tried: set[tuple[int, int]] = set()  # spans of ``code`` already re-denoised without success (reverted)
    candidates: list[tuple[tuple[int, int], float]] | None = None  # (span, score) of ``code``; None = stale
    for index in range(config.rounds):
        if outcome.passed:
            break
        forwards = 0  # a reverted round leaves ``code`` and so its spans and scores unchanged
        if candidates is None:
            all_spans = line_spans(code, editable, tokenizer)
            all_scores, forwards = span_confidence(model, tokenizer, code, all_spans, config.stride)
            candidates = list(zip(all_spans, all_scores))
        spans = [span for span, _ in candidates if span not in tried]
        scores = [score for span, score in candidates if span not in tried]
        if not spans:
            break
        implicated: list[int] = []
        if config.use_traceback:
            line_starts = [0]
            for line in code.splitlines(keepends=True):
                line_starts.append(line_starts[-1] + len(line))
            for line in traceback_lines(outcome.stderr, offset, len(line_starts) - 1):
                implicated += [i for i, (a, _) in enumerate(spans) if line_starts[line] <= a < line_starts[line + 1]]
        chosen = choose_spans(spans, scores, implicated, config.spans_per_round)
        fill = infill(model, tokenizer, [masked_segments(code, chosen, tokenizer.encode)], length=1,
                      config=decode, decoder=decoder, generator=generator)[0]
        new_code = fill.text
        new_outcome, new_offset = test(new_code)
        kept = new_outcome.passed or not config.revert_failed
        record = RepairRound(chosen, unified(code, new_code), new_code, new_outcome.passed, new_outcome.error_kind,
                             forwards + fill.forwards, kept)
        result.rounds.append(record)
        if on_round is not None:
            on_round(index, record)
        if not kept:  # undo the round; its spans are not chosen again while the code stays the same
            tried.update(chosen)
            continue
        if editable is not None:
            # The span lengths may change: the editable range moves with them.
            editable = (editable[0], editable[1] + len(new_code) - len(code))
        if new_code != code:
            candidates = None
        code, outcome, offset = new_code, new_outcome, new_offset
        tried.clear()
    result.code, result.passed = code, outcome.passed
    return result
