"""bench/findings_report.py on a tiny findings run root written here: per-seed pass rates, the paired counts
against the base and between arms (per seed and pooled), the temperature sweep rows and the plots, against
hand-computed numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import load_bench

N = 10
BASE = {0, 1, 2, 3, 4}  # tasks the base model passes
RUNS = {("coupled", 0): {0, 1, 2, 3, 4, 5, 6}, ("coupled", 1): {0, 1, 2, 3, 5},
        ("diffu-grpo", 0): {0, 1, 2}, ("diffu-grpo", 1): {0, 1, 2, 3, 4}, ("coupled-t1.0", 0): {0, 1, 2, 3, 4, 5}}
HALF = {"base": {0, 1}, ("coupled", 0): {0, 1, 2, 3}, ("coupled", 1): {0, 1, 2}, ("diffu-grpo", 0): {0},
        ("diffu-grpo", 1): {0, 1}, ("coupled-t1.0", 0): None}  # a variant arm: no half-steps evaluation


@pytest.fixture(scope="module")
def bench():
    return load_bench("findings_report")


def _write_eval(path: Path, passing: set[int]) -> None:
    path.mkdir(parents=True)
    rows = [{"task_id": f"Synthetic/heldout/0/{i}", "sample": 0, "completion": "x", "duration": 0.01,
             "verdict": "passed" if i in passing else "failed", "error_kind": "" if i in passing else "NameError"}
            for i in range(N)]
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "summary.json").write_text(json.dumps({"tasks": N, "pass@k": {"pass@1": len(passing) / N}}))


def _sweep(temps_and_values) -> dict:
    def arness(value):
        return {"local": {"mean": [value], "std": [0.1]}, "global": {"mean": [value / 2], "std": [0.05]}}

    return {"positions": "content", "temperatures": [
        {"temperature": t, "tasks": 4, "samples": 40, "pass@k": {"pass@1": p1, "pass@10": p10}, "arness": arness(a)}
        for t, p1, p10, a in temps_and_values]}


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "findings"
    _write_eval(root / "base" / "eval-heldout", BASE)
    _write_eval(root / "base" / "eval-heldout-half", HALF["base"])
    for (arm, seed), passing in RUNS.items():
        job = root / f"{arm}-s{seed}"
        _write_eval(job / "eval-heldout", passing)
        if HALF[(arm, seed)] is not None:
            _write_eval(job / "eval-heldout-half", HALF[(arm, seed)])
        metrics = [{"step": s, "reward_mean": r, "pass_rate": r / 2.5, "step_s": 10.0, "rollout_s": 4.0,
                    "update_s": 6.0, "grad_norm": g, "kl": k, "clip_fraction": 0.0}
                   for s, r, g, k in ((1, 1.0, 0.5, 0.0), (2, 2.0, 1.5, 0.2), (3, 2.5, 1.0, 0.1))]
        (job / "rl").mkdir()
        (job / "rl" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (root / "decoupled-s0" / "rl").mkdir(parents=True)  # a run without evaluations: left out
    # pass@k at T 1.2: 2 samples per task; tasks 0-4 solved greedily by the base; sampling solves 0-2 and 7, 8
    passk = root / "passk-base" / "eval-heldout-t1.2"
    passk.mkdir(parents=True)
    rows = [{"task_id": f"Synthetic/heldout/0/{i}", "sample": s, "completion": "x", "duration": 0.01,
             "verdict": "passed" if (i in {0, 1, 2} or (i in {7, 8} and s == 1)) else "failed", "error_kind": ""}
            for i in range(N) for s in range(2)]
    (passk / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (passk / "summary.json").write_text(json.dumps({"tasks": N, "pass@k": {"pass@1": 0.4, "pass@10": 0.5}}))
    (root / "temps-base" / "arness").mkdir(parents=True)
    (root / "temps-base" / "arness" / "arness.json").write_text(
        json.dumps(_sweep([(0.2, 0.8, 0.9, 0.6), (1.2, 0.5, 0.95, 0.4)])))
    return root


def test_report_matches_hand_computed_numbers(bench, root, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert bench.main([str(root), "--out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["base_pass@1"] == 0.5 and line["arms"]["coupled"]["mean"] == pytest.approx(0.6)
    results = json.loads((out / "results.json").read_text())
    coupled = results["arms"]["coupled"]
    assert coupled["pass@1"] == [0.7, 0.5] and coupled["sd"] == pytest.approx(math.sqrt(0.02))
    assert coupled["half_pass@1"] == [0.4, 0.3]
    # seed 0 vs base: gains 5, 6, loses none; seed 1: gains 5, loses 4 -> pooled 3 gained / 1 lost
    assert coupled["seeds"]["0"]["vs_base"]["only_a"] == 2 and coupled["seeds"]["0"]["vs_base"]["only_b"] == 0
    assert coupled["vs_base_pooled"] == {"only_a": 3, "only_b": 1, "mcnemar_p": pytest.approx(0.625)}
    assert "decoupled" not in results["arms"]
    variant = results["arms"]["coupled-t1.0"]
    assert variant["pass@1"] == [0.6] and variant["half_pass@1"] == [] and variant["sd"] is None
    pair, *variant_pairs = results["between_arms"]
    assert (pair["a"], pair["b"], pair["seeds"]) == ("coupled", "diffu-grpo", [0, 1])
    # the variant is compared with every arm on the seeds they share (seed 0): coupled-only {6}, variant-only {}
    assert [(v["a"], v["b"], v["seeds"]) for v in variant_pairs] == [("coupled", "coupled-t1.0", [0]),
                                                                     ("diffu-grpo", "coupled-t1.0", [0])]
    assert (variant_pairs[0]["pooled"]["only_a"], variant_pairs[0]["pooled"]["only_b"]) == (1, 0)
    # s0: coupled-only {3, 4, 5, 6}, diffu-only {}; s1: coupled-only {5}, diffu-only {4}
    assert [(p["only_a"], p["only_b"]) for p in pair["per_seed"]] == [(4, 0), (1, 1)]
    assert pair["pooled"]["only_a"] == 5 and pair["pooled"]["only_b"] == 1
    assert pair["pooled"]["mcnemar_p"] == pytest.approx(2 * (1 + 6) / 2**6)
    rows = results["sweeps"]["base"]
    assert [(r["temperature"], r["pass@10"], r["local@1"], r["global@1"]) for r in rows] == [
        (0.2, 0.9, 0.6, 0.3), (1.2, 0.95, 0.4, 0.2)]
    (pk,) = results["passk_t1.2"]
    # greedy solves {0..4}; some sample solves {0, 1, 2, 7, 8}: only sampling {7, 8}, only greedy {3, 4}
    assert (pk["model"], pk["greedy_pass@1"], pk["paired_tasks"]) == ("base", 0.5, N)
    assert (pk["only_sampled"], pk["only_greedy"], pk["mcnemar_p"]) == (2, 2, pytest.approx(1.0))
    rl = coupled["seeds"]["0"]["rl"]
    assert rl["reward_first_half"] == 1.0 and rl["reward_second_half"] == 2.25 and rl["kl_max"] == 0.2
    assert set(results["plots"]) == {"rewards.png", "arms.png", "arness_temperature.png", "passk_temperature.png"}
    for name in results["plots"]:
        assert (out / name).stat().st_size > 1000
    tables = (out / "tables.md").read_text()
    assert "| coupled | 0, 1 | 60.0 ± 14.1 (70.0, 50.0) | 3 / 1, p = 0.62 |" in tables
    assert "| coupled-t1.0 | 1.00 → 2.25 |" in tables  # the variant's reward dynamics are tabled too
    assert "| base (no RL) | — | 50.0 [" in tables
    assert "| base | 10 | 50.0 | 40.0 | 50.0 | 2 / 2, p = 1.00 |" in tables


def test_missing_root_is_a_clear_error(bench, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        bench.main([str(tmp_path / "nope")])
    assert "no such run root" in capsys.readouterr().err
