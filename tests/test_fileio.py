"""Atomic writes and JSONL parsing."""

from __future__ import annotations

import os
import stat

import pytest

from unmask.fileio import atomic_write_text, parse_jsonl


def test_atomic_write_replaces_and_uses_plain_open_permissions(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    old_umask = os.umask(0o022)
    try:
        atomic_write_text(path, "new")
    finally:
        os.umask(old_umask)
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_parse_jsonl_names_the_bad_line():
    assert list(parse_jsonl(['{"a": 1}', "", "[2]"], "x.jsonl")) == [(1, {"a": 1}), (3, [2])]
    with pytest.raises(ValueError, match="x.jsonl:2"):
        list(parse_jsonl(['{"a": 1}', "{oops"], "x.jsonl"))
