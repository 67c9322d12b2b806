"""bench/lossless_acceptance.py: rounds and misses read from step events, against a hand-made sequence."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from conftest import load_bench


def test_rounds_count_acceptance_lengths_and_classify_misses():
    bench = load_bench("lossless_acceptance")
    canvas = torch.tensor([[7, 8, 9, 0, 0]])  # 0 is the end token

    def step(position: int | None, forwards: int):
        committed = torch.zeros(1, 5, dtype=torch.bool)
        if position is not None:
            committed[0, position] = True
        return SimpleNamespace(canvas=canvas, committed=committed, forwards=forwards)

    # round 1 covers 3 committing steps (a step that commits nothing is skipped), round 2 starts at a miss on
    # an end token and covers 1, round 3 starts at a miss in the code and covers 2
    events = [step(0, 1), step(None, 0), step(1, 0), step(2, 0), step(4, 1), step(3, 1), step(None, 0)]
    events.insert(6, step(3, 0))
    lengths, misses = bench.rounds(events, {0})
    assert lengths == [3, 1, 2]
    assert misses == {"end token": 2}  # positions 4 and 3 both hold the end token
    events[5] = step(1, 1)  # the third round now starts on a code token
    lengths, misses = bench.rounds(events, {0})
    assert lengths == [3, 1, 2] and misses == {"end token": 1, "code": 1}
