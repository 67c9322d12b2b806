"""bench/mask_accuracy.py: the masked-token accuracy of a model that always knows, and of one that never does."""

from __future__ import annotations

import pytest
import torch
from conftest import load_bench

bench = load_bench("mask_accuracy")

MASK, PAD, V = 3, 4, 16


class Config:
    mask_token_id, pad_token_id = MASK, PAD


class Oracle(torch.nn.Module):
    """Raw output i puts all mass on the clean token i+1 (the shift convention), read from ``clean``."""

    config = Config()

    def __init__(self, clean: list[list[int]]) -> None:
        super().__init__()
        self.clean = clean

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        row = next(c for c in self.clean if all(a in (b, MASK) for a, b in zip(ids[0].tolist(), c)))
        target = torch.tensor(row[1:] + [0])
        return torch.nn.functional.one_hot(target, V).float()[None] * 10


class Constant(torch.nn.Module):
    """Always predicts token 7."""

    config = Config()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*ids.shape, V)
        out[..., 7] = 10.0
        return out


ROWS = [([5, 6], [7, 8, 7, 0]), ([9], [7, 7, 0])]  # (prompt, response + eos)


def layout(rows, seq_len):
    return [p + r + [PAD] * (seq_len - len(p) - len(r)) for p, r in rows]


@pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0])
def test_an_oracle_scores_one_and_the_masked_count_is_exact(ratio):
    correct, total = bench.accuracy(Oracle(layout(ROWS, 8)), ROWS, ratio, 8, torch.Generator().manual_seed(0))
    assert total == max(1, round(ratio * 4)) + max(1, round(ratio * 3))
    assert correct == total


def test_a_constant_model_scores_the_share_of_its_token_among_masked_responses():
    # ratio 1: every response token is masked; token 7 is 2 of 4 in row 0 and 2 of 3 in row 1
    correct, total = bench.accuracy(Constant(), ROWS, 1.0, 8, torch.Generator().manual_seed(0))
    assert (correct, total) == (4, 7)


def test_held_out_rows_keep_the_validation_split_or_everything(tmp_path):
    from unmask.tokenizer import train_bpe

    tok = train_bpe([f"def f{i}(): return {i}\n" for i in range(50)], 300)
    pairs = [(f"def f{i}():\n", f"    return {i}\n") for i in range(40)]
    every = bench.held_out_rows(tok, pairs, 64, 100, 0.0)
    val = bench.held_out_rows(tok, pairs, 64, 100, 0.1)
    assert len(every) == 40 and len(val) == 4  # round(40 * 0.1)
    assert all(r[-1] == tok.special.eos for _, r in every)
    assert bench.held_out_rows(tok, pairs, 64, 5, 0.0) == every[:5]
