"""The server's mask placeholder: ``<|mask|>`` is one masked token, ``<|mask:N|>`` is N of them.

A prompt such as ``"def add(a, b):\n    return <|mask:6|>\n"`` asks the model to fill 6 tokens in place
(masks anywhere: infilling, docs/sampler.md). Parsing is a pure function so it can later be unified with the CLI's
placeholder (``unmask.editing``).
"""

from __future__ import annotations

import re

PLACEHOLDER = re.compile(r"<\|mask(?::([0-9]+))?\|>")


def split_placeholders(text: str, max_masks: int) -> list[str | int]:
    """Split ``text`` into literal pieces (str) and mask runs (int counts), in order; empty pieces dropped.

    Raises ValueError when a count is 0 or the total number of masks exceeds ``max_masks``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    parts: list[str | int] = []
    total = 0
    cursor = 0
    for match in PLACEHOLDER.finditer(text):
        if match.start() > cursor:
            parts.append(text[cursor:match.start()])
        digits = match.group(1)
        # Cap the digit string before int(): a 10,000-digit count must not cost a bignum conversion.
        count = 1 if digits is None else (int(digits) if len(digits) <= 9 else max_masks + 1)
        if count == 0:
            raise ValueError("a <|mask:N|> placeholder needs N >= 1")
        total += count
        if total > max_masks:
            raise ValueError(f"the prompt asks for more than {max_masks} masked tokens")
        parts.append(count)
        cursor = match.end()
    if cursor < len(text):
        parts.append(text[cursor:])
    return parts


def mask_count(parts: list[str | int]) -> int:
    """Total masked tokens in a split prompt."""
    return sum(p for p in parts if isinstance(p, int))
