"""File helpers: atomic writes (a crash mid-write leaves the old file or the new one), JSONL parsing, and the
append-only record files of resumable runs (a kill mid-write leaves a torn last line, ignored and repaired)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from unmask.errors import ConfigError

T = TypeVar("T")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a unique temp file beside ``path``, fsync it, then ``os.replace`` it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would (0666 minus the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_jsonl(lines: Iterable[str], source: str | os.PathLike, *, error: type[Exception] = ValueError
                ) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) for each non-blank line; bad JSON raises ``error`` naming the line."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise error(f"{source}:{number}: not valid JSON ({err.msg})") from None


def read_records(path: Path, parse: Callable[[Any], T], what: str) -> list[T]:
    """Each complete line of an append-only JSONL file through ``parse``; a torn final line (a kill mid-write)
    is dropped, any other line ``parse`` cannot read is a ``ConfigError`` (``what``: "a result record")."""
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        try:
            records.append(parse(json.loads(line)))
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError):
            if n == len(lines) - 1:
                break
            raise ConfigError(f"{path}: line {n + 1} is not {what}; remove the file to start over") from None
    return records


def append_records(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append one JSON line per row and fsync; a torn last line left by an earlier crash is cut off first, so it
    cannot glue onto the new rows."""
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        text = path.read_text(encoding="utf-8")
        atomic_write_text(path, text[: text.rfind("\n") + 1])
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
