"""Decode traces: which canvas positions each step committed, with their tokens and confidences.

A trace is the raw material of the AR-ness analysis (docs/arness.md): ``order(row)`` gives, per step, the
positions committed at that step relative to the start of the generated region.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from unmask.fileio import atomic_write_text


@dataclass(frozen=True)
class StepRecord:
    """What one step committed in one row (canvas indices; empty lists if nothing was committed)."""

    positions: tuple[int, ...]
    tokens: tuple[int, ...]
    confidences: tuple[float, ...]


@dataclass
class DecodeTrace:
    """Per row, one ``StepRecord`` per forward pass, plus where each row's generated region starts."""

    region_start: list[int]
    steps: list[list[StepRecord]] = field(default_factory=list)  # steps[row][step]

    @classmethod
    def empty(cls, batch: int, region_start: int) -> DecodeTrace:
        return cls(region_start=[region_start] * batch, steps=[[] for _ in range(batch)])

    def add_step(self, committed, canvas, confidence) -> None:
        """Record one decoding step: ``committed`` (B, T) bool, the canvas (B, T) after it and the
        confidences (B, T) of the committed positions."""
        for row in range(canvas.shape[0]):
            cols = committed[row].nonzero(as_tuple=True)[0]
            self.steps[row].append(StepRecord(tuple(cols.tolist()), tuple(canvas[row, cols].tolist()),
                                              tuple(confidence[row, cols].tolist())))

    def order(self, row: int = 0, *, drop_empty: bool = True) -> list[list[int]]:
        """Committed positions per step, relative to the region start (input of ``analysis.arness``)."""
        start = self.region_start[row]
        steps = [[p - start for p in rec.positions] for rec in self.steps[row]]
        return [s for s in steps if s] if drop_empty else steps

    def commit_steps(self, row: int, length: int) -> list[int]:
        """For each canvas position in [0, length), the step that committed it (-1 = never, e.g. prompt)."""
        out = [-1] * length
        for step, rec in enumerate(self.steps[row]):
            for p in rec.positions:
                out[p] = step
        return out

    def to_json(self) -> dict:
        return {"region_start": self.region_start,
                "steps": [[{"positions": list(r.positions), "tokens": list(r.tokens),
                            "confidences": [round(c, 6) for c in r.confidences]} for r in row]
                          for row in self.steps]}

    @classmethod
    def from_json(cls, data: dict) -> DecodeTrace:
        try:
            return cls(region_start=[int(s) for s in data["region_start"]],
                       steps=[[StepRecord(tuple(r["positions"]), tuple(r["tokens"]), tuple(r["confidences"]))
                               for r in row] for row in data["steps"]])
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a decode trace: missing or malformed field ({err})") from None

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_json()) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> DecodeTrace:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{path}: trace file not found") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        return cls.from_json(data.get("trace", data) if isinstance(data, dict) else data)
