"""bench/pipeline_report.py on a tiny pipeline run root written here: stage costs, Wilson intervals, the paired
McNemar comparison and the loss plot, against hand-computed numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_bench

STAGES = {
    "stage1-ar": ({"data": "stdlib", "stage": "pretrain", "objective": "autoregressive"},
                  [{"step": 10, "loss": 8.0, "tokens": 4000, "tokens_per_s": 100.0},
                   {"step": 20, "loss": 6.0, "tokens": 8000, "tokens_per_s": 200.0, "val_loss": 6.5}]),
    "ar-sft": ({"data": "sft.jsonl", "stage": "sft", "objective": "autoregressive"},
               [{"step": 5, "loss": 2.0, "tokens": 1200, "tokens_per_s": 60.0},
                {"step": 10, "loss": 1.5, "tokens": 2400, "tokens_per_s": 40.0, "val_loss": 1.75}]),
    "diffusion-sft": ({"data": "sft.jsonl", "stage": "sft", "objective": "diffusion", "adapt_from_ar": True,
                       "anneal_steps": 500},
                      [{"step": 100, "loss": 3.0, "tokens": 6000, "tokens_per_s": 50.0},
                       {"step": 200, "loss": 0.5, "tokens": 12000, "tokens_per_s": 100.0, "val_loss": 0.25,
                        "val_response_loss": 0.9}]),
}
# ten held-out tasks: the AR twin passes t0-t2, the diffusion model t0 and t3-t8; t9 neither
AR_PASS, DIFF_PASS = {0, 1, 2}, {0, 3, 4, 5, 6, 7, 8}


@pytest.fixture(scope="module")
def bench():
    return load_bench("pipeline_report")


def _write_eval(path: Path, passing: set[int], completions: list[str], decoder: dict | None, torn: bool = False):
    path.mkdir(parents=True)
    rows = [{"task_id": f"Synthetic/heldout/0/{i}", "sample": 0, "completion": completions[i],
             "verdict": "passed" if i in passing else "failed", "error_kind": "" if i in passing else "AssertionError",
             "duration": 0.01} for i in range(10)]
    text = "".join(json.dumps(r) + "\n" for r in rows) + ('{"task_id": "Synthetic/he' if torn else "")
    (path / "results.jsonl").write_text(text)
    summary = {"benchmark": "synthetic", "tasks": 10, "samples": 10, "samples_per_task": 1,
               "pass@k": {"pass@1": len(passing) / 10},
               "verdicts": {"passed": len(passing), "failed": 10 - len(passing)},
               "error_kinds": {"AssertionError": 10 - len(passing)}, "infra_errors": 0}
    (path / "summary.json").write_text(json.dumps(summary))
    settings = {"eval": {"benchmark": "synthetic", "seed": 0, "synthetic_tasks": 10},
                "decode": {"max_new_tokens": 64, "steps": 64, "temperature": 0.0, "alg": "entropy", "stop_last": False}}
    if decoder:
        settings["decoder"] = decoder
    (path / "eval_config.json").write_text(json.dumps(settings))


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "pipeline"
    for name, (config, rows) in STAGES.items():
        (root / name).mkdir(parents=True)
        (root / name / "run_config.json").write_text(json.dumps(config))
        (root / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _write_eval(root / "eval" / "ar-twin-heldout", AR_PASS, ["pass"] * 10, None)
    _write_eval(root / "eval" / "diffusion-heldout", DIFF_PASS, ["a" * (i + 1) for i in range(10)],
                {"decoder": "blocks", "block_length": 8, "threshold": 0.9}, torn=True)
    (root / "eval" / "unfinished").mkdir()  # no summary.json: not an evaluation yet
    return root


def test_report_files_match_hand_computed_numbers(bench, root, tmp_path, capsys):
    out = tmp_path / "out"
    assert bench.main([str(root), "--out", str(out), "--pair", "diffusion-heldout", "ar-twin-heldout"]) == 0
    results = json.loads((out / "results.json").read_text())
    # compute = Σ interval tokens / tokens_per_s: 4000/100 + 4000/200 = 60 s, 1200/60 + 1200/40 = 50 s,
    # 6000/50 + 6000/100 = 180 s
    assert [(s["name"], s["tokens"]) for s in results["stages"]] == [
        ("stage1-ar", 8000), ("ar-sft", 2400), ("diffusion-sft", 12000)]
    assert [s["compute_minutes"] for s in results["stages"]] == pytest.approx([1.0, 50 / 60, 3.0])
    assert [(s["loss"], s["val_loss"], s["val_response_loss"]) for s in results["stages"]] == [
        (6.0, 6.5, None), (1.5, 1.75, None), (0.5, 0.25, 0.9)]
    ar, diff = results["evals"]  # sorted by name; the directory without summary.json is skipped
    assert (ar["name"], ar["n"], ar["passed"], ar["decoder"]) == ("ar-twin-heldout", 10, 3, "left to right (AR)")
    assert (diff["name"], diff["passed"], diff["decoder"]) == ("diffusion-heldout", 7, "blocks, block 8")
    # Wilson 95%: 7/10 -> [0.39678, 0.89221]; 3/10 is its mirror image [0.10779, 0.60322]
    assert diff["wilson95"] == pytest.approx([0.39678, 0.89221], abs=5e-5)
    assert ar["wilson95"] == pytest.approx([0.10779, 0.60322], abs=5e-5)
    # completions "a" .. "a"*10 (the torn last line is not a result): mean 5.5 characters
    assert (ar["mean_completion_chars"], diff["mean_completion_chars"]) == (4.0, 5.5)
    assert diff["error_kinds"] == {"AssertionError": 3}
    # both t0; only diffusion t3-t8 (6); only AR t1, t2 (2); neither t9. McNemar: 2 * P(Bin(8, .5) <= 2) = 74/256
    assert results["pairs"] == [{"a": "diffusion-heldout", "b": "ar-twin-heldout", "n": 10, "both": 1,
                                 "only_a": 6, "only_b": 2, "neither": 1, "unpaired": 0, "mcnemar_p": 74 / 256}]
    table = (out / "table.md").read_text()
    assert "| stage1-ar | AR next-token | 20 | 8,000 | 1.0 min | 6.000 | 6.500 | n/a |" in table
    assert "| ar-sft | AR next-token | 10 | 2,400 | 0.8 min | 1.500 | 1.750 | n/a |" in table
    assert ("| diffusion-sft | AR→diffusion adaptation (anneal_steps 500) | 200 | 12,000 | 3.0 min | 0.500 | 0.250 "
            "| 0.900 |") in table
    assert "| total | | 230 | 22,400 | 4.8 min | | | |" in table  # 290 s
    assert "| ar-twin-heldout | synthetic (seed 0) | 10 | 30.0% | [10.8, 60.3] | left to right (AR) | 4.0 |" in table
    assert "| diffusion-heldout | synthetic (seed 0) | 10 | 70.0% | [39.7, 89.2] | blocks, block 8 | 5.5 |" in table
    assert "| diffusion-heldout | ar-twin-heldout | 10 | 1 | 6 | 2 | 1 | 0.2891 |" in table
    png = (out / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    headline = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert headline["pairs"] == {"diffusion-heldout vs ar-twin-heldout": [6, 2, 74 / 256]}
    assert headline["command"].endswith(f"bench/pipeline_report.py {root} --out {out} "
                                        "--pair diffusion-heldout ar-twin-heldout")


def test_stage_and_ar_options_override_the_defaults(bench, root, tmp_path):
    out = tmp_path / "out"
    argv = [str(root), "--out", str(out), "--stage", "twin=ar-sft", "--ar", "diffusion-heldout"]
    assert bench.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [(s["name"], s["steps"]) for s in results["stages"]] == [("twin", 10)]
    assert [e["decoder"] for e in results["evals"]] == ["reference", "left to right (AR)"]
    assert results["pairs"] == [] and "Paired" not in (out / "table.md").read_text()
    with pytest.raises(SystemExit, match="no-such"):
        bench.main([str(root), "--out", str(out), "--pair", "no-such", "ar-twin-heldout"])
    # an evaluation of another run root joins by --eval NAME=DIR and pairs like the others
    other = root.parent / "other"
    _write_eval(other / "eval" / "x", {0, 1, 2, 3}, ["b"] * 10, None)
    argv = [str(root), "--out", str(out), "--eval", f"ext={other / 'eval' / 'x'}", "--pair", "ext", "ar-twin-heldout"]
    assert bench.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [e["name"] for e in results["evals"]] == ["ar-twin-heldout", "diffusion-heldout", "ext"]
    assert results["pairs"][0]["only_a"] == 1 and results["pairs"][0]["only_b"] == 0  # t3 only
    with pytest.raises(SystemExit, match="NAME=DIR"):
        bench.main([str(root), "--out", str(out), "--eval", "nothing-here"])
    with pytest.raises(SystemExit, match="NAME=DIR"):
        bench.main([str(root), "--out", str(out), "--stage", "ar-sft"])
    (root / "empty").mkdir()
    (root / "empty" / "run_config.json").write_text("{}")
    (root / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(SystemExit, match="error: .*no metrics"):
        bench.main([str(root), "--out", str(out), "--stage", "late=empty"])
