"""`unmask init` and `unmask generate` as a user runs them: JSON output, plain mode, traces, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import unmask
from unmask.cli import main
from unmask.decoding.trace import DecodeTrace


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model"
    assert main(["init", str(path), "--preset", "test", "--vocab-size", "400", "--tokenizer-bytes", "200000"]) == 0
    return path


def run_json(capsys, *argv):
    assert main(["generate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_json_matches_the_python_api(model_dir, capsys):
    out = run_json(capsys, str(model_dir), "def f(x):", "--max-new-tokens", "12", "--steps", "6",
                   "--temperature", "0.7", "--seed", "3", "--alg", "maskgit_plus")
    assert out["stats"]["forward_passes"] == 6 and out["stats"]["tokens_committed"] == 12
    assert len(out["generated_ids"]) == 12 and out["config"]["alg"] == "maskgit_plus"
    model, tok = unmask.load(model_dir)
    ref = unmask.generate(model, torch.tensor([tok.encode("def f(x):")]), max_new_tokens=12, steps=6,
                          temperature=0.7, alg="maskgit_plus", generator=torch.Generator().manual_seed(3))
    assert ref.generated[0].tolist() == out["generated_ids"]
    assert out["text"] == tok.decode(out["generated_ids"])


def test_trace_file_and_arness(model_dir, capsys, tmp_path):
    out = run_json(capsys, str(model_dir), "x = ", "--max-new-tokens", "8", "--steps", "8",
                   "--trace", str(tmp_path / "t.json"))
    trace = DecodeTrace.load(tmp_path / "t.json")
    assert sorted(p for step in trace.order(0) for p in step) == list(range(8))
    assert 0.0 <= out["stats"]["local_arness@1"] <= 1.0


def test_chat_and_stdin_prompt(model_dir, capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("hello"))
    out = run_json(capsys, str(model_dir), "-", "--chat", "--max-new-tokens", "4", "--steps", "4")
    assert out["prompt"].startswith("<|im_start|>system\n") and out["prompt"].endswith("<|im_start|>assistant\n")


def test_plain_mode_prints_text_and_stats_to_stderr(model_dir, capsys):
    assert main(["generate", str(model_dir), "a", "--max-new-tokens", "4", "--steps", "2", "--no-live"]) == 0
    captured = capsys.readouterr()
    assert "forward_passes=2" in captured.err and "tokens_committed=4" in captured.err


@pytest.mark.parametrize("argv,needle", [
    (["generate", "/nonexistent/model", "x"], "does not exist"),
    (["generate", "{model}", "x", "--steps", "0"], "steps must be a positive integer"),
    (["generate", "{model}", "x", "--top-p", "2"], "top_p must be in"),
    (["generate", "{model}", "x", "--dtype", "int3"], "unknown dtype"),
    (["generate", "{model}", "--prompt-file", "/nonexistent/prompt.txt"], "cannot read prompt file"),
    (["generate", "{model}", ""], "prompt is empty"),
    (["init", "{model}"], "already exists"),
])
def test_bad_input_is_one_line_and_exit_2(model_dir, capsys, argv, needle):
    argv = [a.replace("{model}", str(model_dir)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err


def test_argparse_errors_exit_2_from_the_console_script(model_dir):
    proc = subprocess.run([sys.executable, "-m", "unmask.cli", "generate", str(model_dir), "x", "--alg", "bogus"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice: 'bogus'" in proc.stderr


def test_eval_verb_writes_results_and_refuses_a_mismatched_rerun(model_dir, capsys, tmp_path):
    argv = ["eval", "--model", str(model_dir), "--benchmark", "synthetic", "--limit", "2", "--synthetic-tasks", "2",
            "--max-new-tokens", "8", "--steps", "4", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["tasks"] == 2 and summary["samples"] == 2 and "pass@1" in summary["pass@k"]
    assert len((tmp_path / "run" / "results.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    assert main(argv[:-1] + ["--steps", "5", "--no-progress"]) == 2
    assert "different settings" in capsys.readouterr().err
