"""Source-code corpora available offline: the Python standard library of the running interpreter."""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from pathlib import Path


def stdlib_files() -> list[Path]:
    """The interpreter's own ``.py`` files (tests and site-packages excluded), sorted for determinism."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def stdlib_texts(max_bytes: int | None = None) -> Iterator[str]:
    """Yield stdlib sources in a fixed order until ``max_bytes`` have been produced."""
    total = 0
    for path in stdlib_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield text
        total += len(text.encode("utf-8"))
        if max_bytes is not None and total >= max_bytes:
            return
