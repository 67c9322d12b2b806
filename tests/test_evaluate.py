"""The evaluation harness end to end: canonical solutions pass and broken ones fail through generation-free
scoring, pass@k tables match hand values, EvalPlus round trips, and a resumed eval equals an uninterrupted one."""

from __future__ import annotations

import json

import pytest

from unmask.config import DecodeConfig
from unmask.evaluate import (
    EvalConfig,
    SampleResult,
    append_results,
    evaluate_model,
    evaluate_samples,
    export_evalplus,
    load_tasks,
    read_results,
    summarize,
)


def test_summary_pass_at_k_matches_hand_values():
    rows = [SampleResult("a", i, "", v, "" if v == "passed" else "AssertionError", 0.0)
            for i, v in enumerate(["passed", "failed", "failed", "passed"])]
    rows += [SampleResult("b", i, "", "timeout", "timeout", 0.0) for i in range(4)]
    s = summarize(rows, ks=(1, 2, 10))
    # task a: n=4, c=2 -> pass@1 = 0.5, pass@2 = 1 - C(2,2)/C(4,2) = 5/6; task b: 0. k=10 > n is omitted.
    assert s["pass@k"] == pytest.approx({"pass@1": 0.25, "pass@2": 5 / 12})
    assert s["verdicts"] == {"passed": 2, "failed": 2, "timeout": 4}
    assert s["error_kinds"] == {"timeout": 4, "AssertionError": 2}
    assert s["infra_errors"] == 0


def test_infra_errors_are_counted_apart_and_left_out_of_pass_at_k():
    """A sandbox failure is no verdict about the program: it must not count as a failed sample."""
    verdicts = {"a": ["passed", "failed", "infra_error", "infra_error"], "b": ["passed", "passed", "infra_error"],
                "c": ["infra_error", "infra_error"]}
    rows = [SampleResult(t, i, "", v, {"passed": "", "failed": "AssertionError", "infra_error": "infra"}[v], 0.0)
            for t, vs in verdicts.items() for i, v in enumerate(vs)]
    s = summarize(rows, ks=(1, 2, 3))
    # scored: a has n=2, c=1 (pass@1 0.5, pass@2 1.0); b has n=2, c=2; c has none and is left out
    assert s["pass@k"] == pytest.approx({"pass@1": 0.75, "pass@2": 1.0})
    assert s["infra_errors"] == 5 and s["verdicts"]["infra_error"] == 5
    assert (s["tasks"], s["samples"], s["samples_per_task"]) == (3, 9, 2)
    only_infra = summarize([SampleResult("a", 0, "", "infra_error", "infra", 0.0)])
    assert only_infra["pass@k"] == {} and only_infra["infra_errors"] == 1


def test_summary_table_says_when_samples_got_no_verdict():
    from unmask.evaluate import summary_table

    rows = [SampleResult("a", 0, "", "passed", "", 0.0), SampleResult("a", 1, "", "infra_error", "infra", 0.0)]
    table = summary_table({"benchmark": "x", **summarize(rows, ks=(1,))})
    assert "1 samples got no verdict" in str(table.caption)
    assert summary_table({"benchmark": "x", **summarize(rows[:1], ks=(1,))}).caption is None


@pytest.mark.parametrize("benchmark,limit", [("humaneval", 6), ("humaneval+", 3), ("mbpp", 6), ("mbpp+", 4),
                                             ("synthetic", 12)])
def test_canonical_pass_and_broken_fail_through_the_harness(benchmark, limit, tmp_path):
    config = EvalConfig(benchmark=benchmark, limit=limit, timeout=20.0)
    tasks = load_tasks(config)
    good = [{"task_id": t.task_id, "completion": t.canonical_solution} for t in tasks]
    summary = evaluate_samples(good, config, tmp_path / "good")
    assert summary["verdicts"] == {"passed": limit}, summary
    broken_body = "    return None\n" if not benchmark.startswith("mbpp") else None
    bad = [{"task_id": t.task_id,
            "completion": broken_body or f"def {t.entry_point}(*args, **kwargs):\n    return None\n"} for t in tasks]
    summary = evaluate_samples(bad, config, tmp_path / "bad")
    assert summary["pass@k"]["pass@1"] == 0.0 and "passed" not in summary["verdicts"]


def test_evalplus_solution_samples_are_scored_like_completions(tmp_path):
    config = EvalConfig(benchmark="humaneval", limit=4)
    tasks = load_tasks(config)
    rows = [{"task_id": t.task_id, "solution": t.prompt + t.canonical_solution} for t in tasks]
    rows[1]["solution"] = tasks[1].prompt + "    raise RuntimeError\n"
    summary = evaluate_samples(rows, config, tmp_path)
    assert summary["verdicts"] == {"passed": 3, "failed": 1}
    assert summary["error_kinds"] == {"RuntimeError": 1}


@pytest.mark.parametrize("benchmark", ["humaneval", "mbpp"])
def test_a_file_mixing_solutions_and_completions_is_read_per_row(benchmark, tmp_path):
    # EvalPlus reads each row on its own: "solution" is the whole program, "completion" follows the prompt.
    config = EvalConfig(benchmark=benchmark, limit=4, timeout=20.0)
    tasks = load_tasks(config)
    full = [t.canonical_solution if benchmark == "mbpp" else t.prompt + t.canonical_solution for t in tasks]
    body = [t.canonical_solution for t in tasks]
    rows = []
    for i, t in enumerate(tasks):
        rows.append({"task_id": t.task_id, "solution": full[i]})
        rows.append({"task_id": t.task_id, "completion": body[i]})
    rows[2]["solution"] = "raise RuntimeError('a broken solution')\n"
    rows[5]["completion"] = "\n\nraise RuntimeError('a broken completion')\n"
    summary = evaluate_samples(rows, config, tmp_path)
    verdicts = [r.verdict for r in read_results(tmp_path / "results.jsonl")]
    assert verdicts == ["passed"] * 2 + ["failed"] + ["passed"] * 2 + ["failed"] + ["passed"] * 2
    assert summary["pass@k"]["pass@1"] == pytest.approx(0.75)


def test_a_prompt_beyond_the_context_is_refused_before_any_work(tiny, tmp_path):
    from unmask.errors import ConfigError

    model, tokenizer = tiny
    config = EvalConfig(benchmark="synthetic", limit=2, synthetic_tasks=2)
    with pytest.raises(ConfigError, match=r"new tokens \(--max-new-tokens\) = \d+ exceed the model's "
                                          r"max_position_embeddings \(256\)"):
        evaluate_model(model, tokenizer, config, DecodeConfig(max_new_tokens=250, steps=4), tmp_path / "run",
                       progress=False)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from unmask.cli import main

    path = tmp_path_factory.mktemp("eval") / "model"
    assert main(["init", str(path), "--preset", "test", "--vocab-size", "400", "--tokenizer-bytes", "200000"]) == 0
    import unmask

    return unmask.load(path)


def test_resumed_eval_equals_uninterrupted(tiny, tmp_path):
    model, tokenizer = tiny
    config = EvalConfig(benchmark="synthetic", limit=3, samples=2, batch_size=4, synthetic_tasks=3, seed=5)
    decode = DecodeConfig(max_new_tokens=12, steps=6, temperature=1.0, alg="entropy")
    full = evaluate_model(model, tokenizer, config, decode, tmp_path / "a", progress=False)
    evaluate_model(model, tokenizer, config, decode, tmp_path / "b", progress=False, stop_after_chunks=1)
    partial = read_results(tmp_path / "b" / "results.jsonl")
    assert len(partial) == 4  # one chunk done, then "killed"
    with open(tmp_path / "b" / "results.jsonl", "a") as f:
        f.write('{"task_id": "Synth')  # a torn line from the kill
    resumed = evaluate_model(model, tokenizer, config, decode, tmp_path / "b", progress=False)
    a = (tmp_path / "a" / "results.jsonl").read_text().splitlines()
    b = (tmp_path / "b" / "results.jsonl").read_text().splitlines()
    strip = [json.dumps({k: v for k, v in json.loads(x).items() if k != "duration"}) for x in a]
    assert strip == [json.dumps({k: v for k, v in json.loads(x).items() if k != "duration"}) for x in b]
    assert full["pass@k"] == resumed["pass@k"] and full["samples"] == 6
    # a completed run is not regenerated
    generate_calls = []
    import unmask.decoding.dispatch as dispatch  # every decoder runs through its decode_stream

    original = dispatch.decode_stream
    dispatch.decode_stream = lambda *a, **k: generate_calls.append(1) or original(*a, **k)
    try:
        evaluate_model(model, tokenizer, config, decode, tmp_path / "b", progress=False)
    finally:
        dispatch.decode_stream = original
    assert generate_calls == []


def test_export_then_import_gives_the_same_verdicts(tiny, tmp_path):
    config = EvalConfig(benchmark="humaneval", limit=3)
    tasks = load_tasks(config)
    rows = [SampleResult(t.task_id, 0, t.canonical_solution if i != 1 else "    return 0\n", "?", "", 0.0)
            for i, t in enumerate(tasks)]
    (tmp_path / "run").mkdir()
    append_results(tmp_path / "run" / "results.jsonl", rows)
    assert export_evalplus(tmp_path / "run", tasks, tmp_path / "samples.jsonl", chat=False) == 3
    from unmask.data.benchmarks import read_evalplus_samples

    summary = evaluate_samples(read_evalplus_samples(tmp_path / "samples.jsonl"), config, tmp_path / "scored")
    assert summary["verdicts"] == {"passed": 2, "failed": 1}


def test_unknown_benchmark_and_unknown_task_are_clear_errors(tmp_path):
    from unmask.errors import ConfigError

    with pytest.raises(ConfigError, match="humaneval"):
        load_tasks(EvalConfig(benchmark="nope"))
    with pytest.raises(ConfigError, match="unknown task"):
        evaluate_samples([{"task_id": "HumanEval/9999", "completion": ""}], EvalConfig(limit=2), tmp_path)
