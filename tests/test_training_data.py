"""Training data: packing, dedup, hash split, SFT rows, corpus readers and the resumable epoch sampler."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unmask.errors import ConfigError
from unmask.training_data import (
    EpochSampler,
    dedup_texts,
    pack_rows,
    read_sft_pairs,
    read_texts,
    sft_rows,
    split_by_hash,
)


def test_pack_rows_concatenates_with_eos_and_drops_the_tail():
    rows = pack_rows([[1, 2, 3], [4], [5, 6, 7, 8]], 4, eos_id=0)
    # stream: 1 2 3 0 4 0 5 6 7 8 0  -> two full rows, tail "7 8 0"... (11 tokens -> 2 rows of 4, 3 dropped)
    assert rows.ids.tolist() == [[1, 2, 3, 0], [4, 0, 5, 6]]
    assert rows.prompt_lengths.tolist() == [1, 1]


def test_dedup_keeps_first_occurrences_in_order():
    assert dedup_texts(["a", "b", "a", "c", "b"]) == ["a", "b", "c"]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=8), min_size=2, max_size=30, unique=True),
    st.floats(0.05, 0.5),
    st.randoms(use_true_random=False),
)
def test_split_is_disjoint_complete_and_independent_of_order(items, fraction, rnd):
    train, val = split_by_hash(items, fraction)
    assert sorted(train + val) == sorted(items) and not set(train) & set(val)
    assert 1 <= len(val) <= len(items) - 1
    shuffled = list(items)
    rnd.shuffle(shuffled)
    _, val2 = split_by_hash(shuffled, fraction)
    assert set(val2) == set(val)


def test_sft_rows_keep_prompt_first_and_pad_the_response():
    rows = sft_rows([([5, 6], [7, 8, 9]), ([5, 6, 7, 8, 9, 10], [1]), ([3], [4, 4, 4, 4, 4, 4])], 6, pad_id=0)
    # the second example's prompt fills the row (no response room) and is skipped; the third is cut
    assert rows.ids.tolist() == [[5, 6, 7, 8, 9, 0], [3, 4, 4, 4, 4, 4]]
    assert rows.prompt_lengths.tolist() == [2, 1]


def test_read_texts_from_directory_and_jsonl(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "b.py").write_text("y = 2\n")
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "blank.py").write_text("  \n")
    (tmp_path / "notes.txt").write_text("ignored")
    assert read_texts(tmp_path) == ["x = 1\n", "y = 2\n"]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two", "id": 3}) + "\n")
    assert read_texts(corpus) == ["one", "two"]


def test_corpus_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_texts(tmp_path / "missing")
    with pytest.raises(ConfigError, match="is empty"):
        read_texts(tmp_path)
    bad = tmp_path / "bad.py"
    bad.write_bytes(b"\xff\xfe\x00 not utf-8")
    with pytest.raises(ConfigError, match="cannot read .*bad.py"):
        read_texts(tmp_path)
    lines = tmp_path / "x.jsonl"
    lines.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(ConfigError, match=r"x.jsonl:2: missing string field 'text'"):
        read_texts(lines)
    lines.write_text('{"prompt": "p"}\n')
    with pytest.raises(ConfigError, match="missing string field 'response'"):
        read_sft_pairs(lines)


def test_sampler_gives_permutations_and_resumes_exactly():
    sampler = EpochSampler(5, seed=3)
    first = sampler.next(5).tolist()
    second = sampler.next(5).tolist()
    assert sorted(first) == sorted(second) == list(range(5)) and sampler.epoch == 1
    state = sampler.state_dict()
    expected = sampler.next(12).tolist()
    other = EpochSampler(5, seed=99)
    other.load_state_dict(state)
    assert other.next(12).tolist() == expected
    with pytest.raises(ConfigError, match="covered 5 rows"):
        EpochSampler(6, seed=0).load_state_dict(state)


def test_sampler_crosses_epoch_boundaries_without_repeats_inside_an_epoch():
    sampler = EpochSampler(4, seed=0)
    drawn = sampler.next(10)  # epochs 0, 1 complete + half of epoch 2
    assert sorted(drawn[:4].tolist()) == sorted(drawn[4:8].tolist()) == [0, 1, 2, 3]
    assert len(set(drawn[8:].tolist())) == 2 and sampler.epochs_done == pytest.approx(2.5)
    assert torch.equal(EpochSampler(4, seed=0).next(10), drawn)
