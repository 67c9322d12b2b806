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
    pytest.param(["generate", "{model}", "x", "--device", "cuda"], "CUDA is not available on this machine",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    (["generate", "{model}", "x", "--max-new-tokens", "5000"],
     "the prompt (1 tokens) + 5000 new tokens (--max-new-tokens) = 5001 exceed the model's max_position_embeddings "
     "(256)"),
    (["generate", "{model}", "a = <|mask:300|>"], "exceed the model's max_position_embeddings (256)"),
    (["generate", "{model}", "x", "--prompt-file", "{model}/config.json"], "two prompts given"),
    (["generate", "{model}", "x", "--alg", "bogus"],
     "invalid choice: 'bogus' (choose from 'origin', 'maskgit_plus', 'topk_margin', 'entropy')"),
    (["generate", "{model}", "x", "--decoder", "bogus"], "(choose from 'reference', 'blocks', 'parallel')"),
    (["generate", "{model}", "x", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["generate", "{model}", "x", "--model", "{model}"], "the model is given twice"),
    (["generate", "--steps", "3"], "no model given"),
    (["eval", "{model}", "--benchmark", "synthetic", "--limit", "1", "--max-new-tokens", "5000"],
     "exceed the model's max_position_embeddings (256)"),
    (["infill", "{model}", "--length", "5000"], "+ 5000 masked tokens = 5000 exceed the model's max_position_embed"),
    (["repair", "{model}", "--tests", "t.py"], "no file to repair"),
    (["generate", "{model}", "x", "--tests", "/nonexistent/tests.py"], "cannot read tests file"),
    (["generate", "{model}", "a = <|mask|>", "--tests", "{model}/config.json"], "a prompt with mask placeholders"),
    (["bogus-verb"], "invalid choice: 'bogus-verb' (choose from 'init', 'generate'"),
])
def test_bad_input_is_one_line_and_exit_2(model_dir, capsys, argv, needle, tmp_path, monkeypatch):
    import unmask.decoding.dispatch as dispatch

    def no_work(*args, **kwargs):
        raise AssertionError("decoding started although the input was refused")

    monkeypatch.setattr(dispatch, "decode", no_work)
    monkeypatch.chdir(tmp_path)  # an eval that wrongly ran would write runs/ here
    argv = [a.replace("{model}", str(model_dir)) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err
    assert captured.out == "" and not (tmp_path / "runs").exists()


def test_argparse_errors_exit_2_from_the_console_script(model_dir):
    proc = subprocess.run([sys.executable, "-m", "unmask.cli", "generate", str(model_dir), "x", "--alg", "bogus"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice: 'bogus'" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "usage:" not in proc.stderr  # one line, not the 20-line usage


def test_options_go_anywhere_and_the_model_may_be_an_option(model_dir, capsys):
    flags = ["--max-new-tokens", "8", "--steps", "8", "--seed", "1"]
    before = run_json(capsys, str(model_dir), *flags, "def f(x):")  # options before the prompt (issue #14)
    after = run_json(capsys, str(model_dir), "def f(x):", *flags)
    option = run_json(capsys, "--model", str(model_dir), *flags, "def f(x):")
    assert before["generated_ids"] == after["generated_ids"] == option["generated_ids"]
    assert before["prompt"] == option["prompt"] == "def f(x):" and len(before["generated_ids"]) == 8


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


def test_generate_runs_the_completion_against_tests_in_the_sandbox(model_dir, capsys, tmp_path):
    """--tests: the verdict is the sandbox's on prompt + completion + tests, computed here independently."""
    from unmask.sandbox import run

    prompt = "x = 41\n"
    for tests, flags in (("assert x == 41\n", ["--temperature", "0"]), ("assert x == 41\nassert x == 42\n", [])):
        path = tmp_path / "t.py"
        path.write_text(tests)
        out = run_json(capsys, str(model_dir), prompt, "--max-new-tokens", "6", "--steps", "6", "--tests",
                       str(path), *flags)
        expected = run(prompt + out["text"].rstrip("\n") + "\n\n" + tests, timeout=10.0)
        assert out["verdict"]["status"] == expected.status and out["verdict"]["error_kind"] == expected.error_kind
    # the second tests file can never pass, whatever the random model wrote
    assert out["verdict"]["status"] == "failed"
    main(["generate", str(model_dir), prompt, "--max-new-tokens", "4", "--steps", "4", "--tests", str(path),
          "--no-live"])
    assert "sandbox verdict: failed" in capsys.readouterr().out
