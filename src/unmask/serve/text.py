"""Append-only text from a denoising canvas, so per-step streaming concatenates to the final text.

A diffusion decode commits tokens anywhere, but an OpenAI stream only appends. After each step the
streamer decodes the *committed prefix* of the generated region (tokens up to the first mask), cuts it at
the first stop token and the first stop sequence, and emits what is new. Text that could still change is
held back: a trailing U+FFFD (an incomplete UTF-8 character whose remaining bytes are in later tokens) and
the last ``len(longest stop) - 1`` characters (they may be the start of a stop sequence). At the end the
same function runs on the whole region with nothing held back, so ``"".join(deltas) == final text``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

REPLACEMENT = "\ufffd"


def committed_prefix(region: Sequence[int], mask_token_id: int) -> list[int]:
    """The ids before the first mask (all of them when nothing is masked)."""
    out = []
    for token in region:
        if token == mask_token_id:
            break
        out.append(int(token))
    return out


def cut_at_stop_ids(ids: Sequence[int], stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """(ids before the first stop id, whether one was found)."""
    stops = set(stop_ids)
    for n, token in enumerate(ids):
        if token in stops:
            return list(ids[:n]), True
    return list(ids), False


def cut_at_stop_text(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """(text before the earliest stop sequence, whether one was found)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@dataclass
class Settled:
    text: str  # text that will not change any more
    finished: bool  # a stop token or stop sequence ended the generation


def settled_text(region: Sequence[int], *, decode: Callable[[list[int]], str], mask_token_id: int,
                 stop_ids: Sequence[int], stops: Sequence[str], final: bool) -> Settled:
    """The part of the region's text that later steps cannot change (everything, when ``final``)."""
    prefix = committed_prefix(region, mask_token_id)
    complete = final or len(prefix) == len(region)
    ids, hit_id = cut_at_stop_ids(prefix, stop_ids)
    text, hit_text = cut_at_stop_text(decode(ids), stops)
    if hit_text or hit_id or complete:
        # A stop (or the end) fixes everything before it: committed tokens never change.
        return Settled(text, hit_id or hit_text)
    text = text.rstrip(REPLACEMENT)
    hold = max((len(s) for s in stops), default=1) - 1
    return Settled(text[:len(text) - hold] if hold > 0 else text, False)


class TextStreamer:
    """Turns successive canvases of one row into text deltas (one instance per choice)."""

    def __init__(self, *, decode: Callable[[list[int]], str], mask_token_id: int, stop_ids: Sequence[int],
                 stops: Sequence[str]) -> None:
        self._settle = dict(decode=decode, mask_token_id=mask_token_id, stop_ids=tuple(stop_ids),
                            stops=tuple(stops))
        self.sent = ""
        self.finished = False
        self.stopped = False  # ended by a stop token or stop sequence (finish_reason "stop", not "length")

    def feed(self, region: Sequence[int], *, final: bool = False) -> str:
        """The new text after this canvas ('' when nothing settled); once finished, always ''."""
        if self.finished:
            return ""
        settled = settled_text(region, final=final, **self._settle)
        if settled.finished or final:
            self.finished = True
            self.stopped = settled.finished
        if not settled.text.startswith(self.sent):
            # Cannot happen for byte-level BPE (decoding is concatenation); never emit a contradiction.
            return ""
        delta = settled.text[len(self.sent):]
        self.sent = settled.text
        return delta
