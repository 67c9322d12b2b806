"""bench/blind_repair.py: revising a complete canvas without tests touches only the body, spends its budget, and
each remask round fills its masks with the model's greedy choice (checked against a direct forward)."""

from __future__ import annotations

import pytest
import torch
from conftest import load_bench, make_model

from unmask.diffusion import shift_logits


@pytest.fixture(scope="module")
def bench():
    return load_bench("blind_repair")


def test_remask_revises_only_the_body_within_budget(bench):
    model = make_model(3, sharpen=6.0).eval()
    mask_id = model.config.mask_token_id
    ids = torch.tensor([5, 9, 14, 2, 7, 8, 11, 6, 10, 12])
    out, forwards = bench.revise_body(model, ids, 4, mode="remask", budget=3, per_step=2, low=0.1, high=0.9,
                                      mask_id=mask_id)
    assert forwards == 4  # two rounds (2 + 1 tokens), a read and a fill each
    assert torch.equal(out[:4], ids[:4]) and mask_id not in out.tolist()
    assert int((out != ids).sum()) <= 3
    # round one by hand: the two least likely body tokens under the visible read, filled greedily
    with torch.no_grad():
        logits = shift_logits(model(ids[None])).float()[0]
        logits[:, mask_id] = float("-inf")
        p = logits.softmax(-1).gather(-1, ids[:, None]).squeeze(-1)
        first = sorted(range(4, 10), key=lambda i: (float(p[i]), i))[:2]
        x = ids.clone()
        x[first] = mask_id
        fill = shift_logits(model(x[None])).float()[0]
        fill[:, mask_id] = float("-inf")
        x[first] = fill[first].argmax(-1)
    again, _ = bench.revise_body(model, ids, 4, mode="remask", budget=2, per_step=2, low=0.1, high=0.9,
                                 mask_id=mask_id)
    assert torch.equal(again, x)


def test_edit_with_unreachable_thresholds_changes_nothing(bench):
    model = make_model(3, sharpen=6.0).eval()
    ids = torch.tensor([5, 9, 14, 2, 7, 8, 11, 6])
    out, forwards = bench.revise_body(model, ids, 2, mode="edit", budget=8, per_step=2, low=0.0, high=1.0,
                                      mask_id=model.config.mask_token_id)
    assert torch.equal(out, ids) and forwards == 1  # one read, nothing to edit: stop


def test_canvas_body_starts_at_the_first_token_that_is_not_the_prompts(bench, tokenizer):
    ids, start = bench.canvas(tokenizer, "def f(x):\n", "    return x\n")
    assert ids.tolist() == tokenizer.encode("def f(x):\n    return x\n")
    assert ids[:start].tolist() == tokenizer.encode("def f(x):\n")[:start]
    assert start <= len(tokenizer.encode("def f(x):\n"))
