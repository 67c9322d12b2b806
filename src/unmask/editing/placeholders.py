"""Mask placeholders in prompt text, one grammar for the CLI and the server: ``<|mask|>`` (one span of the
default length) and ``<|mask:N|>`` (exactly N masked tokens). ``unmask generate`` / ``unmask infill`` read
``<|mask|>`` as a span whose length the infill rule chooses; the server as one masked token (its
``default_length``). Text becomes segments before tokenising, so the literal placeholder never reaches the
tokenizer; ``editing.infill.build_canvas`` turns segments into ids.

    parse_placeholders("def f(x):\\n    return <|mask:3|>\\n")  ->  ["def f(x):\\n    return ", Hole(3), "\\n"]
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# `<|mask` followed by anything up to `|>`: the tail is validated below, so typos are errors, not text.
_PLACEHOLDER = re.compile(r"<\|mask(:[^|<>]*)?\|>")
# Longer counts are refused without converting them (a 10,000-digit count must not cost a bignum).
_MAX_DIGITS = 9


@dataclass(frozen=True)
class Hole:
    """A masked span in a canvas; ``length`` None = chosen by the length rule (see ``editing.infill``)."""

    length: int | None = None

    def __post_init__(self) -> None:
        if self.length is not None and (isinstance(self.length, bool) or not isinstance(self.length, int)
                                        or self.length <= 0):
            raise ValueError(f"a hole's length must be a positive integer or None, got {self.length!r}")


Segment = str | Hole


def parse_placeholders(text: str, *, default_length: int | None = None, max_masks: int | None = None
                       ) -> list[Segment]:
    """Split ``text`` into literal strings and ``Hole``s; empty strings between placeholders are dropped.

    ``<|mask|>`` is ``Hole(default_length)``, ``<|mask:N|>`` is ``Hole(N)``. A malformed placeholder
    (``<|mask:0|>``, ``<|mask:x|>``) is a ValueError, and so are more than ``max_masks`` masked tokens in all
    (None: no limit). The messages never repeat the text (the server sends them back to its client).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    segments: list[Segment] = []
    pos = total = 0
    for match in _PLACEHOLDER.finditer(text):
        if match.start() > pos:
            segments.append(text[pos:match.start()])
        hole = Hole(default_length) if match.group(1) is None else Hole(_count(match.group(1)[1:], match.start()))
        total += hole.length or 0
        if max_masks is not None and total > max_masks:
            raise ValueError(f"the prompt asks for more than {max_masks} masked tokens")
        segments.append(hole)
        pos = match.end()
    if pos < len(text):
        segments.append(text[pos:])
    return segments


def _count(digits: str, offset: int) -> int:
    significant = digits.lstrip("0")
    if not (digits.isascii() and digits.isdigit() and significant):
        raise ValueError(f"bad mask placeholder at offset {offset}: use <|mask|> or <|mask:N|> with N >= 1")
    return int(significant) if len(significant) <= _MAX_DIGITS else 10**_MAX_DIGITS


def has_holes(segments: list[Segment]) -> bool:
    return any(isinstance(s, Hole) for s in segments)
