"""bench/gpu_check.py's dry run (what CI runs of the GPU check): every section on CPU with the `test` preset, the
JSON it writes with sane numbers, the budget that cuts a run short but still writes it, and clear errors. The
roofline bounds are a GPU's and the times a CPU's, so the dry run does not compare them (null)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import load_bench

from unmask.analysis.roofline import forward_cost, gpu
from unmask.config import ModelConfig

BENCH = Path(__file__).resolve().parents[1] / "bench"


check = load_bench("gpu_check")


def only_report(directory: Path) -> dict:
    files = list(directory.glob("*.json"))
    assert len(files) == 1 and "cpu-dry-run" in files[0].name
    return json.loads(files[0].read_text(encoding="utf-8"))


def test_dry_run_writes_every_section_with_sane_numbers(tmp_path, capsys):
    assert check.main(["--dry-run", "--out-dir", str(tmp_path)]) == 0
    report = only_report(tmp_path)
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "dry run" in line and str(tmp_path) in line
    assert report["dry_run"] and report["status"] == "ok" and "dry_run" in report["notes"]
    sections = report["sections"]
    assert list(sections) == list(check.SECTIONS)
    assert all(s["status"] == "ok" and s["seconds"] >= 0 for s in sections.values())
    sizes = check.DRY_RUN
    batches = [str(b) for b in sizes.batches]

    for row in (sections["forward"][b] for b in batches):
        assert row["ms"] > 0 and row["ms_min"] <= row["ms"] and row["roofline_ms"] > 0
        assert row["roofline_fraction"] is None and row["within_roofline"] is None  # a GPU's bound, a CPU's time

    for b in batches:
        ar = sections["autoregressive"][b]
        assert ar["tokens_per_s"] > 0 and ar["projected_tokens_per_s"] > 0
        assert ar["forwards"] == sizes.new and ar["tokens_per_forward"] == 1.0

    assert set(sections["decoders"]) - {"status", "seconds"} == set(check.DECODERS)
    for name in check.DECODERS:
        for b in batches:
            row = sections["decoders"][name][b]
            assert row["tokens_per_s"] > 0 and row["forwards_per_s"] > 0 and row["projected_tokens_per_s"] > 0
            assert 0 < row["tokens_per_forward"] <= sizes.new and row["roofline_fraction"] is None
            if name in check.FIXED_TOKENS_PER_FORWARD:  # steps = new tokens: one token per forward, exactly
                assert row["tokens_per_forward"] == row["expected_tokens_per_forward"] == 1.0
                assert row["forwards"] == sizes.new
    lossless = sections["decoders"]["lossless"]
    assert all(isinstance(lossless[b]["identical_to_reference"], bool) for b in batches)
    assert all(lossless[b]["canvases_per_forward"] >= 1 for b in batches)

    for name in ("train", "fsdp"):
        train = sections[name]
        assert 0 < train["mfu"] <= 1 and train["step_s"] > 0 and train["tokens_per_s"] > 0
        assert train["tokens_per_step"] == sizes.train_batch * sizes.train_seq
        assert len(train["losses"]) == 1 + sizes.train_steps and all(math.isfinite(x) for x in train["losses"])
    assert sections["fsdp"]["world_size"] == 1

    tests = sections["cuda_tests"]
    assert tests["failed"] == tests["errors"] == 0 and tests["passed"] + tests["skipped"] > 0
    if not torch.cuda.is_available():
        assert tests["passed"] == 0  # every one of them skips without a GPU


def test_budget_cut_still_writes_the_json(tmp_path):
    assert check.main(["--dry-run", "--budget-s", "0.001", "--sections", "forward,train,decoders",
                       "--out-dir", str(tmp_path)]) == 2
    report = only_report(tmp_path)
    statuses = [s["status"] for s in report["sections"].values()]
    assert report["status"] == "incomplete"
    assert statuses[0] in ("aborted (budget)", "skipped (budget)")
    assert statuses[1:] == ["skipped (budget)", "skipped (budget)"]


def test_a_section_cut_by_the_budget_keeps_what_it_finished(monkeypatch):
    def slow(_, out):
        out["first"] = 1.0
        time.sleep(5)  # the interval timer interrupts the sleep
        out["second"] = 2.0

    def failing(_, out):
        raise RuntimeError("out of memory")

    class Budget(check.Budget):
        """0.3 s left whenever asked until the timer has fired once (whatever the machine's load makes of the
        failing section and the clean-up), none after it."""

        fired = False

        def left(self) -> float:
            return -1.0 if self.fired else 0.3

        @contextlib.contextmanager
        def guard(self):
            try:
                with super().guard():
                    yield
            except check.BudgetExceeded:
                self.fired = True
                raise

    monkeypatch.setattr(check, "SECTIONS", {"slow": slow, "failing": failing, "after": slow})
    fake = check.Check(check.DRY_RUN, torch.device("cpu"), gpu("h100"), dry_run=True)
    saved = []
    done = check.run_sections(fake, ["failing", "slow", "after"], Budget(0.3), saved.append)
    assert done["failing"]["status"] == "error: RuntimeError: out of memory"  # recorded; the next one runs
    assert done["slow"]["status"] == "aborted (budget)" and done["slow"]["first"] == 1.0
    assert "second" not in done["slow"]
    assert done["after"]["status"] == "skipped (budget)"
    assert len(saved) == 3 and check.outcome(done) == ("failed", 1)


def test_model_flops_are_bench_trains():
    bench_train = load_bench("train")
    peak = gpu("h100")
    for config in (ModelConfig.from_name("dream-7b", num_hidden_layers=8), ModelConfig.from_name("test")):
        batch, seq = 4, 1024
        three_forwards = 3 * forward_cost(config, peak, query=seq, batch=batch).flops
        assert three_forwards == pytest.approx(bench_train.model_flops_per_token(config, seq) * batch * seq)


def test_junit_counts_name_the_failed_tests(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text('<testsuites><testsuite tests="4" failures="1" errors="0" skipped="2">'
                   '<testcase classname="tests.test_cuda" name="test_a"><failure message="x"/></testcase>'
                   '<testcase classname="tests.test_cuda" name="test_b"/>'
                   '</testsuite></testsuites>')
    assert check.junit_counts(xml) == {"passed": 1, "failed": 1, "errors": 0, "skipped": 2,
                                       "failed_tests": ["tests.test_cuda::test_a"]}


def test_gpu_figures_and_errors(capsys):
    args = check.parse(["--gpu", "custom", "--bandwidth", "2e12", "--flops", "3e14"])
    assert check.pick_gpu(args, torch.device("cpu")).flops == 3e14
    assert check.pick_gpu(check.parse(["--dry-run"]), torch.device("cpu")).name == gpu("h100").name
    assert check.main(["--dry-run", "--gpu", "tpu"]) == 1
    assert "unknown GPU 'tpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        check.parse(["--sections", "forward,warp"])


def test_the_shell_script_runs_the_module():
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(BENCH / "gpu.sh"), "--help"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0 and "--dry-run" in done.stdout and "--budget-s" in done.stdout
