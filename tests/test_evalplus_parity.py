"""`unmask eval --import-samples` gives the verdicts EvalPlus's own evaluator gives, sample by sample.

EvalPlus (the `dev` extra) runs offline on the HumanEval+ file shipped in ``unmask/data/files`` (its
``HUMANEVAL_OVERRIDE_PATH``; its cache directory is a temporary one), in a subprocess so its settings never
leak into this one. Four problems x two samples mix both sample formats ("solution" and "completion") and
cover: right, wrong, and right on HumanEval's base inputs only (base passes, plus fails).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest

from unmask.cli import main
from unmask.data.benchmarks import DATA_DIR
from unmask.evaluate import read_results

pytest.importorskip("evalplus", reason="EvalPlus is not installed (pip install -e '.[dev]')")

PROBLEMS = 4
# Runs EvalPlus's evaluate() on the samples. Its stuck-sample watchdog is a non-daemon thread that sleeps 20 s
# after the work is done; made a daemon it no longer holds the process open (nothing else changes).
EVALPLUS = """
import functools, sys, threading, types
import evalplus.evaluate as ev
ev.threading = types.SimpleNamespace(Thread=functools.partial(threading.Thread, daemon=True))
ev.evaluate("humaneval", samples=sys.argv[1], parallel=1, i_just_wanna_run=True, min_time_limit=4.0)
"""


def base_only(record: dict) -> str:
    """Code after the canonical function that keeps it right on the base inputs only."""
    name = record["entry_point"]
    return (f"\n\n_right = {name}\n_BASE = {record['base_input']!r}\n\n\ndef {name}(*args):\n"
            f"    return _right(*args) if list(args) in _BASE else 'wrong'\n")


def samples(records: list[dict]) -> list[dict]:
    r0, r1, r2, r3 = records
    return [
        {"task_id": r0["task_id"], "solution": r0["prompt"] + r0["canonical_solution"]},
        {"task_id": r0["task_id"], "completion": r0["canonical_solution"] + base_only(r0)},
        {"task_id": r1["task_id"], "completion": r1["canonical_solution"]},
        {"task_id": r1["task_id"], "solution": r1["prompt"] + "    return []\n"},
        {"task_id": r2["task_id"], "solution": r2["prompt"] + r2["canonical_solution"] + base_only(r2)},
        {"task_id": r2["task_id"], "completion": "    return 0.0\n"},
        {"task_id": r3["task_id"], "completion": r3["canonical_solution"]},
        {"task_id": r3["task_id"], "completion": r3["canonical_solution"] + base_only(r3)},
    ]


def evalplus_verdicts(tmp_path, problems_file, samples_file) -> list[tuple[bool, bool]]:
    env = {**os.environ, "HUMANEVAL_OVERRIDE_PATH": str(problems_file), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", EVALPLUS, str(samples_file)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "samples_eval_results.json").read_text())["eval"]
    return [(r["base_status"] == "pass", r["base_status"] == r["plus_status"] == "pass")
            for task_id in sorted(results, key=lambda t: int(t.split("/")[1])) for r in results[task_id]]


def unmask_verdicts(tmp_path, samples_file, benchmark: str) -> list[bool]:
    out = tmp_path / benchmark
    assert main(["eval", "--import-samples", str(samples_file), "--benchmark", benchmark, "--limit", str(PROBLEMS),
                 "--timeout", "20", "--out", str(out)]) == 0
    return [r.verdict == "passed" for r in read_results(out / "results.jsonl")]


def test_import_samples_matches_evalplus_per_sample(tmp_path, capsys):
    with gzip.open(DATA_DIR / "humanevalplus" / "HumanEvalPlus-v0.1.10.jsonl.gz", "rt", encoding="utf-8") as f:
        records = [json.loads(line) for _, line in zip(range(PROBLEMS), f)]
    problems_file = tmp_path / "problems.jsonl"
    problems_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    samples_file = tmp_path / "samples.jsonl"
    samples_file.write_text("".join(json.dumps(s) + "\n" for s in samples(records)))

    theirs = evalplus_verdicts(tmp_path, problems_file, samples_file)
    base = unmask_verdicts(tmp_path, samples_file, "humaneval")
    plus = unmask_verdicts(tmp_path, samples_file, "humaneval+")
    assert [b for b, _ in theirs] == [True, True, True, False, True, False, True, True]  # the cases are real
    assert [p for _, p in theirs] == [True, False, True, False, False, False, True, False]
    assert base == [b for b, _ in theirs]  # HumanEval's tests ~ EvalPlus's base inputs
    assert plus == [p for _, p in theirs]  # HumanEval+ = base and plus inputs
