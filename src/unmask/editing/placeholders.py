"""Mask placeholders in prompt text: ``<|mask|>`` (one span of the default length) and ``<|mask:N|>``
(exactly N masked tokens). ``unmask generate`` and ``unmask infill`` turn text into segments with
``parse_placeholders`` before tokenising, so the literal placeholder never reaches the tokenizer.

    parse_placeholders("def f(x):\\n    return <|mask:3|>\\n")  ->  ["def f(x):\\n    return ", Hole(3), "\\n"]
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# `<|mask` followed by anything up to `|>`: the tail is validated below, so typos are errors, not text.
_PLACEHOLDER = re.compile(r"<\|mask(:[^|<>]*)?\|>")


@dataclass(frozen=True)
class Hole:
    """A masked span in a canvas; ``length`` None = chosen by the length rule (see ``editing.infill``)."""

    length: int | None = None

    def __post_init__(self) -> None:
        if self.length is not None and (isinstance(self.length, bool) or not isinstance(self.length, int)
                                        or self.length <= 0):
            raise ValueError(f"a hole's length must be a positive integer or None, got {self.length!r}")


Segment = str | Hole


def parse_placeholders(text: str) -> list[Segment]:
    """Split ``text`` into literal strings and ``Hole``s; empty strings between placeholders are dropped."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    segments: list[Segment] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(text):
        if match.start() > pos:
            segments.append(text[pos:match.start()])
        tail = match.group(1)
        if tail is None:
            segments.append(Hole())
        else:
            digits = tail[1:]
            if not digits.isdigit() or int(digits) <= 0:
                raise ValueError(f"bad mask placeholder {match.group(0)!r} at offset {match.start()}: "
                                 "use <|mask|> or <|mask:N|> with N a positive integer")
            segments.append(Hole(int(digits)))
        pos = match.end()
    if pos < len(text):
        segments.append(text[pos:])
    return segments


def has_holes(segments: list[Segment]) -> bool:
    return any(isinstance(s, Hole) for s in segments)
