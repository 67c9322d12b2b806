"""Decode traces: which canvas positions each step committed, with their tokens and confidences.

A trace is the raw material of the AR-ness analysis (docs/arness.md): ``order(row)`` gives, per step, the
positions committed at that step relative to the start of the generated region.

A revising decoder (``decoding.revise``) may take a committed token back: a step's ``revisions`` list
(position, old token, new token), the new token None where the position was re-masked. Within a step the
revisions come before the step's commits, so a position re-masked at a step may be committed again by that same
step. A position thus gets a token more than once; the *final* assignment — the commit or edit that gave it the
token it ends with — is the one ``order``, ``commit_steps`` and ``final_tokens`` report, so each position appears
once in an order, as the AR-ness analysis requires (docs/sampler.md, "Revising committed tokens").
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
    # (position, old token, new token or None = re-masked), applied before this step's commits
    revisions: tuple[tuple[int, int, int | None], ...] = ()


@dataclass
class DecodeTrace:
    """Per row, one ``StepRecord`` per forward pass, plus where each row's generated region starts."""

    region_start: list[int]
    steps: list[list[StepRecord]] = field(default_factory=list)  # steps[row][step]

    @classmethod
    def empty(cls, batch: int, region_start: int) -> DecodeTrace:
        return cls(region_start=[region_start] * batch, steps=[[] for _ in range(batch)])

    def add_step(self, committed, canvas, confidence, revised=None, revised_from=None, mask_token_id=None) -> None:
        """Record one decoding step: ``committed`` (B, T) bool, the canvas (B, T) after it and the
        confidences (B, T) of the committed positions; ``revised`` (B, T) bool, the committed tokens the step
        took back, which held ``revised_from`` (B, T) before it and now hold the canvas's token (``mask_token_id``:
        re-masked, unless the step committed the position again)."""
        for row in range(canvas.shape[0]):
            cols = committed[row].nonzero(as_tuple=True)[0]
            revisions = ()
            if revised is not None:
                revisions = tuple(_revision(c, int(revised_from[row, c]), int(canvas[row, c]), bool(committed[row, c]),
                                            mask_token_id) for c in revised[row].nonzero(as_tuple=True)[0].tolist())
            self.steps[row].append(StepRecord(tuple(cols.tolist()), tuple(canvas[row, cols].tolist()),
                                              tuple(confidence[row, cols].tolist()), revisions))

    def final_assignments(self, row: int) -> dict[int, tuple[int, int]]:
        """Canvas position -> (step, token) of the assignment each position ends with: its last commit or edit
        (a re-masked position counts from its next commit; one still masked at the end is absent)."""
        final: dict[int, tuple[int, int]] = {}
        for step, rec in enumerate(self.steps[row]):
            for p, _, new in rec.revisions:  # revisions come before the step's commits
                if new is None:
                    final.pop(p, None)
                else:
                    final[p] = (step, new)
            for p, token in zip(rec.positions, rec.tokens):
                final[p] = (step, token)
        return final

    def order(self, row: int = 0, *, drop_empty: bool = True) -> list[list[int]]:
        """Positions per step, relative to the region start, each at the step of its final assignment (input of
        ``analysis.arness``; without revisions: exactly the positions each step committed, in its order)."""
        start = self.region_start[row]
        final = self.final_assignments(row)
        steps: list[list[int]] = [[] for _ in self.steps[row]]
        for step, rec in enumerate(self.steps[row]):
            for p in [*rec.positions, *(p for p, _, new in rec.revisions if new is not None)]:
                if final.get(p, (None,))[0] == step and p - start not in steps[step]:
                    steps[step].append(p - start)
        return [s for s in steps if s] if drop_empty else steps

    def commit_steps(self, row: int, length: int) -> list[int]:
        """For each canvas position in [0, length), the step of its final assignment (-1 = never, e.g. prompt)."""
        out = [-1] * length
        for p, (step, _) in self.final_assignments(row).items():
            if p < length:
                out[p] = step
        return out

    def revisions(self, row: int = 0) -> list[tuple[int, int, int, int | None]]:
        """Every revision of a row: (step, position relative to the region start, old token, new token or None)."""
        start = self.region_start[row]
        return [(step, p - start, old, new) for step, rec in enumerate(self.steps[row])
                for p, old, new in rec.revisions]

    def to_json(self) -> dict:
        """Steps as objects; ``revisions`` ([position, old, new or null] lists) only on steps that have some."""
        return {"region_start": self.region_start,
                "steps": [[{"positions": list(r.positions), "tokens": list(r.tokens),
                            "confidences": [round(c, 6) for c in r.confidences],
                            **({"revisions": [list(v) for v in r.revisions]} if r.revisions else {})}
                           for r in row] for row in self.steps]}

    @classmethod
    def from_json(cls, data: dict) -> DecodeTrace:
        try:
            return cls(region_start=[int(s) for s in data["region_start"]],
                       steps=[[StepRecord(tuple(r["positions"]), tuple(r["tokens"]), tuple(r["confidences"]),
                                          tuple((int(p), int(old), None if new is None else int(new))
                                                for p, old, new in r.get("revisions", ())))
                               for r in row] for row in data["steps"]])
        except (KeyError, TypeError, ValueError) as err:
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


def _revision(position: int, old: int, now: int, recommitted: bool, mask_token_id: int | None
              ) -> tuple[int, int, int | None]:
    """(position, old, new) of one revision; new is None where the position was re-masked — it holds the mask
    after the step, or a token the same step committed again (which the step's commits record)."""
    remasked = recommitted or (mask_token_id is not None and now == mask_token_id)
    return position, old, None if remasked else now
