"""Editing: placeholders parse by hand and round-trip; every decoder fills masks anywhere and touches nothing
else; a model that prefers one token fills exactly the holes with it; infilled text keeps prefix and suffix
byte-exact; the infilling benchmarks pass canonical middles and fail empty ones through the harness; repair
only edits the chosen spans and leaves passing code alone; the CLI verbs."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import MASK_ID, make_model
from hypothesis import given, settings
from hypothesis import strategies as st
from margins import decode_with_margin

from unmask.config import DecodeConfig, DecoderConfig
from unmask.decoding import decode_canvas
from unmask.editing import Hole, build_canvas, infill, parse_placeholders
from unmask.editing.repair import (
    RepairConfig,
    choose_spans,
    line_spans,
    masked_segments,
    repair,
    traceback_lines,
    unified,
)

DECODERS = [
    DecoderConfig(),
    DecoderConfig(lossless=True),
    DecoderConfig(decoder="blocks", block_length=3),
    DecoderConfig(decoder="blocks", block_length=3, cache="prefix"),
    DecoderConfig(decoder="parallel", block_length=4, threshold=0.5),
    DecoderConfig(decoder="parallel", block_length=4, threshold=0.5, cache="dual"),
    DecoderConfig(decoder="parallel", block_length=2, factor=1.0, cache="prefix"),
]
IDS = [d.decoder + ("-lossless" if d.lossless else "") + "-" + d.cache for d in DECODERS]


class PreferModel(torch.nn.Module):
    """Hand-built logits: every position predicts ``token`` (logit 10, all else 0), whatever the input."""

    def __init__(self, token: int) -> None:
        super().__init__()
        self.config = make_model(0).config
        self.token = token
        self.weight = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self) -> torch.device:
        return self.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, cache_position=0):
        logits = torch.zeros(*input_ids.shape, self.config.vocab_size)  # (B, T, V)
        logits[..., self.token] = 10.0
        return logits


# ----------------------------------------------------------------------------------------------------------
# placeholders


def test_placeholders_by_hand():
    assert parse_placeholders("a<|mask|>b<|mask:3|>") == ["a", Hole(), "b", Hole(3)]
    assert parse_placeholders("<|mask:12|><|mask|>") == [Hole(12), Hole()]
    assert parse_placeholders("no holes") == ["no holes"]
    for bad in ("x<|mask:0|>", "<|mask:abc|>", "<|mask:|>", "<|mask:-2|>"):
        with pytest.raises(ValueError, match="bad mask placeholder"):
            parse_placeholders(bad)
    with pytest.raises(TypeError):
        parse_placeholders(b"bytes")  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.text(alphabet=st.characters(blacklist_characters="<|>"), min_size=1),
                          st.none(), st.integers(1, 99)), max_size=6))
def test_placeholders_round_trip(parts):
    text = "".join("<|mask|>" if p is None else f"<|mask:{p}|>" if isinstance(p, int) else p for p in parts)
    segments = parse_placeholders(text)
    rendered = "".join(s if isinstance(s, str) else "<|mask|>" if s.length is None else f"<|mask:{s.length}|>"
                       for s in segments)
    assert rendered == text
    assert [s.length for s in segments if isinstance(s, Hole)] == [p for p in parts if not isinstance(p, str)]


def test_build_canvas_by_hand():
    encode = lambda s: [ord(c) for c in s]  # noqa: E731
    canvas = build_canvas(["ab", Hole(), "c", Hole(2)], encode, default_length=3, mask_id=9, bos_id=1)
    assert canvas.ids == (97, 98, 9, 9, 9, 99, 9, 9) and canvas.holes == ((2, 5), (6, 8))
    first = build_canvas([Hole(2), "z"], encode, default_length=3, mask_id=9, bos_id=1)
    assert first.ids == (1, 9, 9, 122) and first.holes == ((1, 3),)  # a bos so position 0 is real
    with pytest.raises(ValueError, match="no hole"):
        build_canvas(["abc"], encode, default_length=3, mask_id=9, bos_id=1)


# ----------------------------------------------------------------------------------------------------------
# decoders on masks-anywhere canvases


def holey_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three left-padded rows with masks in the middle, in two spans, and at the end."""
    m = MASK_ID
    rows = [[5, 6, m, m, m, m, 7, 8, 9], [4, m, m, 3, m, m, m, m, 2, 2, 1], [11, 12, 13, 14, m, m, m, m]]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@pytest.mark.parametrize("decoder", DECODERS, ids=IDS)
def test_prefer_model_fills_exactly_the_holes(decoder):
    model = PreferModel(token=42)
    ids, mask = holey_batch()
    out = decode_canvas(model, ids, mask, config=DecodeConfig(max_new_tokens=8, steps=8, alg="maskgit_plus"),
                        decoder=decoder)
    expected = torch.where((ids == MASK_ID) & mask.bool(), torch.full_like(ids, 42), ids)
    assert out.sequences.tolist() == expected.tolist()
    assert out.stats.tokens_committed == int(((ids == MASK_ID) & mask.bool()).sum())


@pytest.mark.parametrize("decoder", DECODERS, ids=IDS)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_real_model_keeps_every_fixed_position(decoder, temperature):
    model = make_model(5, sharpen=10.0)
    ids, mask = holey_batch()
    out = decode_canvas(model, ids, mask, config=DecodeConfig(max_new_tokens=8, steps=5, temperature=temperature),
                        decoder=decoder, seed=3)
    holes = (ids == MASK_ID) & mask.bool()
    assert torch.equal(out.sequences[~holes], ids[~holes])
    assert not bool((out.sequences[holes] == MASK_ID).any())


@pytest.mark.parametrize("decoder", [d for d in DECODERS if d.cache == "none" and not d.lossless], ids=str)
def test_batched_infill_canvas_equals_each_row_alone(decoder):
    # Equal hole sizes, different padding: at temperature 0 a row's fill does not depend on the batch. The
    # padded forward differs from the row's own in the last bits; every decision alone has a margin >= 2e-3.
    model = make_model(2, sharpen=20.0)
    m = MASK_ID
    rows = [[5, 6, m, m, m, 7, 8], [4, 9, 9, m, m, m, 2, 2, 1, 3]]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    config = DecodeConfig(max_new_tokens=3, steps=3)
    together = decode_canvas(model, ids, mask, config=config, decoder=decoder).sequences
    for i, row in enumerate(rows):
        alone = decode_with_margin(model, torch.tensor([row]), canvas=True, config=config, decoder=decoder).sequences[0]
        assert together[i, width - len(row):].tolist() == alone.tolist()


def test_canvas_errors_are_clear():
    model = PreferModel(3)
    with pytest.raises(ValueError, match="position 0 must be a real token"):
        decode_canvas(model, torch.tensor([[MASK_ID, 4, 5]]))
    with pytest.raises(ValueError, match="position 0 must be a real token"):
        decode_canvas(model, torch.tensor([[MASK_ID, 4, 5]]), decoder=DecoderConfig(decoder="parallel"))


# ----------------------------------------------------------------------------------------------------------
# infill: text


@pytest.fixture(scope="module")
def text_model(tokenizer):
    s = tokenizer.special
    return make_model(4, sharpen=10.0, vocab_size=tokenizer.vocab_size, mask_token_id=s.mask, pad_token_id=s.pad,
                      eos_token_id=s.eos, bos_token_id=s.eos)


PREFIXES = ["def add(a, b):\n    return ", "", "x = 1\r\n# ünïcödé  \t\n"]
SUFFIXES = ["\n\nprint(add(1, 2))\n", "  # tail ", ""]


@pytest.mark.parametrize("decoder", [DecoderConfig(), DecoderConfig(decoder="blocks", block_length=4),
                                     DecoderConfig(decoder="parallel", block_length=4, cache="dual")], ids=str)
@pytest.mark.parametrize("length", [5, "auto"])
def test_infill_keeps_prefix_and_suffix_byte_exact(text_model, tokenizer, decoder, length):
    requests = [[p for p in (pre, Hole(), suf) if p != ""] for pre, suf in zip(PREFIXES, SUFFIXES)]
    config = DecodeConfig(max_new_tokens=8, steps=8, temperature=0.7)
    for batch in (requests[:1], requests):  # one row, and a left-padded batch of three
        results = infill(text_model, tokenizer, batch, length=length, config=config, decoder=decoder,
                         auto_lengths=(2, 4, 8))
        for (pre, suf), r in zip(zip(PREFIXES, SUFFIXES), results):
            assert r.text == pre + r.middles[0] + suf
            assert r.text.startswith(pre) and r.text.endswith(suf)
            assert len(r.middle_ids[0]) == r.lengths[0] and tokenizer.special.mask not in r.middle_ids[0]
            if length == "auto":
                assert set(r.candidates) == {2, 4, 8}
                best = max(r.candidates.values())
                assert r.lengths[0] == min(n for n, v in r.candidates.items() if v == best)  # ties: shorter
            else:
                assert r.lengths[0] == 5


def test_infill_with_a_preferring_model_fills_the_span_with_its_token(tokenizer):
    token = tokenizer.encode(" x")[0]
    model = PreferModel(token)
    model.config = model.config.replace(vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.special.mask)
    for decoder in (DecoderConfig(), DecoderConfig(decoder="parallel", block_length=3)):
        r = infill(model, tokenizer, [["a = (", Hole(4), ")\n"]], config=DecodeConfig(max_new_tokens=4, steps=4),
                   decoder=decoder)[0]
        assert r.middle_ids == [[token] * 4] and r.text == "a = (" + " x" * 4 + ")\n"


def test_holes_with_their_own_length_are_decoded_once(text_model, tokenizer):
    config = DecodeConfig(max_new_tokens=8, steps=8)
    fixed = infill(text_model, tokenizer, [["a = (", Hole(3), ")\n"], ["b = ", Hole(5), "\n"]], config=config)
    assert [r.forwards for r in fixed] == [5, 5]  # one decode, one token per step over the longest hole
    assert all(r.candidates == {} for r in fixed)
    searched = infill(text_model, tokenizer, [["a = (", Hole(), ")\n"]], config=config, max_length=8)
    assert sorted(searched[0].candidates) == [4, 8] and searched[0].forwards == 4 + 1 + 8 + 1


def test_infill_bad_length_is_a_clear_error(text_model, tokenizer):
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        infill(text_model, tokenizer, [["a", Hole()]], length=0)


# ----------------------------------------------------------------------------------------------------------
# the infilling benchmarks through the harness


@pytest.mark.parametrize("benchmark", ["humaneval-infilling-single", "humaneval-infilling-multi",
                                       "humaneval-infilling-span", "humaneval-infilling-span-light"])
def test_canonical_middles_pass_and_empty_middles_fail(benchmark, tmp_path):
    from unmask.evaluate import EvalConfig, evaluate_samples, load_tasks

    config = EvalConfig(benchmark=benchmark, limit=3)
    tasks = load_tasks(config)
    good = evaluate_samples([{"task_id": t.task_id, "completion": t.canonical_solution} for t in tasks], config,
                            tmp_path / "good")
    bad = evaluate_samples([{"task_id": t.task_id, "completion": ""} for t in tasks], config, tmp_path / "bad")
    assert good["pass@k"]["pass@1"] == 1.0
    assert bad["pass@k"]["pass@1"] == 0.0


def test_eval_infilling_is_a_real_infill_with_the_oracle_length(tokenizer, tmp_path):
    from unmask.evaluate import EditConfig, EvalConfig, evaluate_model, load_tasks, read_results

    token = tokenizer.encode(" x")[0]
    model = PreferModel(token)
    model.config = model.config.replace(vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.special.mask)
    config = EvalConfig(benchmark="humaneval-infilling-single", limit=2, batch_size=2, timeout=3.0)
    summary = evaluate_model(model, tokenizer, config, DecodeConfig(max_new_tokens=8, steps=8), tmp_path,
                             progress=False, edit=EditConfig(infill_length="oracle", repair_rounds=1))
    results = read_results(tmp_path / "results.jsonl")
    assert summary["tasks"] == 2 and len(results) == 2
    for task, r in zip(load_tasks(config), results):
        # the middle of a hole as long as the canonical middle's tokens, filled with the preferred token
        assert r.completion == " x" * len(tokenizer.encode(task.canonical_solution))
        assert r.verdict == "failed"
    rep = summary["repair"]
    assert rep["samples"] == 2 and rep["pass@1_before"] == 0.0 and rep["forwards"] > 0
    rows = [json.loads(line) for line in (tmp_path / "repair.jsonl").read_text().splitlines()]
    assert [r["rounds"] for r in rows] == [1, 1]
    assert json.loads((tmp_path / "eval_config.json").read_text())["edit"]["infill_length"] == "oracle"


# ----------------------------------------------------------------------------------------------------------
# repair


CODE = "def f(x):\n    y = x * 2\n    return y - 1\n"


def test_repair_helpers_by_hand():
    spans = line_spans(CODE)
    assert [CODE[a:b] for a, b in spans] == ["def f(x):", "y = x * 2", "return y - 1"]
    body = CODE.index("    y")
    assert [CODE[a:b] for a, b in line_spans(CODE, (body, len(CODE)))] == ["y = x * 2", "return y - 1"]
    stderr = ('Traceback (most recent call last):\n  File "program.py", line 30, in <module>\n'
              '  File "program.py", line 12, in check\n  File "program.py", line 4, in f\nZeroDivisionError\n')
    assert traceback_lines(stderr, code_line_offset=2, num_lines=3) == [1]  # line 4 of the program = code line 2
    assert choose_spans(spans, [-1.0, -5.0, -3.0], [], 2) == [spans[1], spans[2]]


def test_repair_spans_start_on_a_token_boundary(tokenizer):
    # "    return y - 1" is "   " + " return" + …: the span takes the glued space, so a hole filled with the
    # token the tokenizer itself uses (" return") keeps the indentation; the text before it ends in whole tokens.
    spans = line_spans(CODE, tokenizer=tokenizer)
    assert [CODE[a:b] for a, b in spans] == ["def f(x):", " y = x * 2", " return y - 1"]
    for a, _ in spans[1:]:
        line_start = CODE.rindex("\n", 0, a) + 1
        ids = tokenizer.encode(CODE[line_start:a])
        assert tokenizer.decode(ids) == CODE[line_start:a] == "   "
    assert choose_spans(spans, [-1.0, -5.0, -3.0], [0], 2) == [spans[0], spans[1]]  # implicated first
    segments = masked_segments(CODE, [spans[2]], lambda s: s.split())
    assert segments == [CODE[:spans[2][0]], Hole(4), "\n"]


def test_repair_does_nothing_to_passing_code(text_model, tokenizer):
    tests = "assert f(3) == 5\n"
    result = repair(text_model, tokenizer, CODE, lambda c: c + "\n" + tests, config=RepairConfig(rounds=3))
    assert result.passed_before and result.passed and result.rounds == [] and result.code == CODE


def test_repair_edits_only_the_chosen_spans(text_model, tokenizer):
    buggy = "import math\n\ndef f(x):\n    y = x * 3\n    return y - 1\n"
    editable = (buggy.index("    y"), len(buggy))
    result = repair(text_model, tokenizer, buggy, lambda c: c + "\nassert f(3) == 5\n", editable=editable,
                    config=RepairConfig(rounds=2, spans_per_round=2, stride=2),
                    decode=DecodeConfig(max_new_tokens=8, steps=8, temperature=0.8), seed=1)
    assert not result.passed_before and len(result.rounds) >= 1
    code = buggy
    for rnd in result.rounds:
        assert rnd.forwards > 0 and all(a >= editable[0] for a, _ in rnd.spans)
        fixed, pos = [], 0
        for a, b in rnd.spans:
            fixed.append(code[pos:a])
            pos = b
        fixed.append(code[pos:])
        # the code after the round is the fixed pieces, in order, with anything between them (the new middles)
        assert re.fullmatch("(.*?)".join(re.escape(p) for p in fixed), rnd.code, flags=re.DOTALL)
        assert rnd.diff == unified(code, rnd.code)
        assert rnd.kept == rnd.passed  # revert_failed (the default): only a passing round is kept
        if rnd.kept:
            code = rnd.code
    assert code == result.code and code.startswith("import math\n\ndef f(x):\n")


def test_repair_reverts_failed_rounds_and_tries_other_spans(text_model, tokenizer):
    buggy = "def f(x):\n    y = x * 3\n    z = y + 0\n    return z - 1\n"
    build = lambda c: c + "\nassert f(3) == 1234\n"  # noqa: E731 — no edit can pass: every round fails
    editable = (buggy.index("    y"), len(buggy))
    result = repair(text_model, tokenizer, buggy, build, editable=editable, config=RepairConfig(rounds=5),
                    decode=DecodeConfig(max_new_tokens=8, steps=8), seed=0)
    assert not result.passed and result.code == buggy  # every failed round was undone
    chosen = [tuple(r.spans) for r in result.rounds]
    assert len(result.rounds) == 3 and len(set(chosen)) == 3  # each of the 3 body lines tried once, then stop
    assert all(not r.kept for r in result.rounds)
    assert result.rounds[0].forwards > result.rounds[1].forwards  # the scores of unchanged code are reused
    kept = repair(text_model, tokenizer, buggy, build, editable=editable,
                  config=RepairConfig(rounds=2, revert_failed=False), decode=DecodeConfig(max_new_tokens=8, steps=8))
    assert all(r.kept for r in kept.rounds) and kept.code == kept.rounds[-1].code


# ----------------------------------------------------------------------------------------------------------
# CLI


def test_cli_infill_generate_placeholders_and_repair(tmp_path, capsys):
    from unmask.cli import main

    path = tmp_path / "model"
    assert main(["init", str(path), "--preset", "test", "--vocab-size", "400", "--tokenizer-bytes", "100000"]) == 0
    (tmp_path / "pre.py").write_text("def f(x):\n    return ")
    (tmp_path / "suf.py").write_text("\n\nprint(f(2))\n")
    capsys.readouterr()
    assert main(["infill", "--model", str(path), "--prefix", str(tmp_path / "pre.py"), "--suffix",
                 str(tmp_path / "suf.py"), "--length", "3", "--max-new-tokens", "8", "--steps", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lengths"] == [3] and out["text"] == "def f(x):\n    return " + out["middles"][0] + "\n\nprint(f(2))\n"
    assert main(["generate", str(path), "a = <|mask:2|> + <|mask|>", "--max-new-tokens", "3", "--steps", "3",
                 "--decoder", "blocks", "--block-length", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lengths"] == [2, 3] and out["text"] == f"a = {out['middles'][0]} + {out['middles'][1]}"
    assert main(["generate", str(path), "a = <|mask:0|>"]) == 2
    assert "bad mask placeholder" in capsys.readouterr().err
    (tmp_path / "ok.py").write_text("def f(x):\n    return x + 1\n")
    (tmp_path / "t.py").write_text("assert f(1) == 2\n")
    assert main(["repair", str(tmp_path / "ok.py"), "--model", str(path), "--tests", str(tmp_path / "t.py")]) == 0
    assert "already pass" in capsys.readouterr().out
    (tmp_path / "bad.py").write_text("def f(x):\n    return x - 1\n")
    code = main(["repair", str(tmp_path / "bad.py"), "--model", str(path), "--tests", str(tmp_path / "t.py"),
                 "--rounds", "1", "--max-new-tokens", "4", "--steps", "4"])
    printed = capsys.readouterr().out
    assert code in (0, 1) and "--- round 1" in printed and "+++ b/code" in printed
