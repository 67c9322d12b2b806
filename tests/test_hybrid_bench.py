"""bench/hybrid.py: the paired comparison against hand-counted verdicts, and a run on tiny saved models (a block
model and its full-attention parent) whose rows obey what the decoders guarantee."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_bench, make_model

from unmask.stats import wilson_interval

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


@pytest.fixture(scope="module")
def bench():
    return load_bench("hybrid")


def test_compare_pairs_each_row_with_the_baseline_task_by_task(bench):
    rows = {"base": {"passes": "110010", "useful_tokens_per_s": 10.0},
            "fast": {"passes": "011111", "useful_tokens_per_s": 25.0},
            "ar": {"useful_tokens_per_s": 40.0}}  # a row without verdicts (--no-exec) gets only the speed ratio
    bench.compare(rows, "base")
    # tasks 3, 4 and 6 pass only with "fast", task 1 only with "base": 3 / 1;
    # exact McNemar p = 2 * P(X <= 1 | n = 4) = 2 * 5 / 16
    assert rows["fast"]["vs_baseline"] == {"only_this": 3, "only_baseline": 1, "mcnemar_p": 0.625}
    assert rows["base"]["vs_baseline"] == {"only_this": 0, "only_baseline": 0, "mcnemar_p": 1.0}
    assert rows["fast"]["pass@1_wilson95"] == [round(x, 4) for x in wilson_interval(5, 6)]
    assert rows["fast"]["tokens_per_s_vs_baseline"] == 2.5 and rows["ar"]["tokens_per_s_vs_baseline"] == 4.0
    assert "vs_baseline" not in rows["ar"]


def test_a_run_on_tiny_models_keeps_the_decoders_promises(tmp_path, tokenizer):
    from unmask.checkpoint import save_model

    s = tokenizer.special
    ids = dict(vocab_size=tokenizer.vocab_size, mask_token_id=s.mask, pad_token_id=s.pad, eos_token_id=s.eos,
               bos_token_id=s.bos)
    save_model(make_model(1, sharpen=4.0, block_size=4, **ids), tmp_path / "hybrid", tokenizer=tokenizer)
    save_model(make_model(2, sharpen=4.0, **ids), tmp_path / "full", tokenizer=tokenizer)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(BENCH / "hybrid.py"), "--hybrid", str(tmp_path / "hybrid"), "--full",
                          str(tmp_path / "full"), "--tasks", "3", "--max-new-tokens", "8", "--thresholds", "0.5",
                          "--batch", "2", "--markdown", "--plot", str(tmp_path / "f.png")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[0])
    rows = result["decoders"]
    assert list(rows) == ["hybrid blocks (exact)", "hybrid parallel τ=0.5 (exact)", "full blocks+prefix",
                          "full parallel+dual τ=0.5"]
    assert result["block_length"] == 4 and result["baseline"] == "full blocks+prefix"
    for row in rows.values():
        assert len(row["passes"]) == 3 and row["pass@1"] == round(row["passes"].count("1") / 3, 4)
        assert 0 < row["tokens_per_forward"] <= 4  # never more than a block per forward
    # one token per step at most (early EOS may commit padding, not tokens); a threshold row never needs more
    # forwards than committing one token per step
    assert rows["hybrid blocks (exact)"]["tokens_per_forward"] <= 1.0
    assert rows["hybrid parallel τ=0.5 (exact)"]["forward_passes"] <= rows["hybrid blocks (exact)"]["forward_passes"]
    # every row is projected to the GPU
    assert set(result["projection"]["tokens_per_s"]) == set(rows)
    assert "| hybrid blocks (exact) |" in run.stdout
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --replot redoes the tables from the saved line, measuring nothing
    (tmp_path / "saved.json").write_text(run.stdout.splitlines()[0] + "\n")
    again = subprocess.run([sys.executable, str(BENCH / "hybrid.py"), "--replot", str(tmp_path / "saved.json"),
                            "--markdown"], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0 and again.stdout.strip() == "\n".join(run.stdout.splitlines()[1:]).strip()


def test_a_full_attention_model_is_refused_as_the_hybrid(tmp_path, tokenizer):
    from unmask.checkpoint import save_model

    save_model(make_model(1, vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.special.mask),
               tmp_path / "full", tokenizer=tokenizer)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(BENCH / "hybrid.py"), "--hybrid", str(tmp_path / "full"), "--no-exec"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode != 0 and "not a block-diffusion model" in run.stderr
