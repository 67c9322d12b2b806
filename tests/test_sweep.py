"""The AR-ness sweep and `unmask arness`: which positions count (hand values), per-temperature summaries (hand
pass@k and AR-ness), the report files, consistency with the saved traces, resume, and the CLI verbs."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import unmask
from unmask.analysis.arness import arness_profile, flatten_order, summarize
from unmask.analysis.sweep import (
    SweepConfig,
    SweepSample,
    _settings,
    analyse_trace,
    counted_order,
    read_samples,
    run_sweep,
    temperature_dir,
    temperature_summary,
    useful_length,
    write_report,
)
from unmask.cli import main
from unmask.config import DecodeConfig
from unmask.decoding.trace import DecodeTrace, StepRecord
from unmask.errors import ConfigError
from unmask.evaluate import EvalConfig
from unmask.passk import pass_at_k

# ----------------------------------------------------------------------------------------------------------
# which positions count (pure, hand values)


def test_useful_length_stops_at_the_first_stop_id():
    assert useful_length([5, 6, 0, 7, 0], [0]) == 2
    assert useful_length([5, 6, 7], [0, 9]) == 3
    assert useful_length([9, 5], [0, 9]) == 0


def test_region_counts_early_pads_and_content_drops_them():
    # the sampler commits the pad at position 3 first, then 0, 1, 2 left to right, then the pad at 4 (L=5).
    steps = [[], [3], [0, 1], [2], [4]]
    order, length = counted_order(steps, 5, 3, "region")
    assert (order, length) == ([3, 0, 1, 2, 4], 5)
    # local: 3 (no run), 0 after 3 (the virtual prompt run only counts at the first commit), 1 after 0 (run 1),
    #        2 after 1, 0 (run 2), 4 after 2 (none) -> @1 = 2/5, @2 = 1/5, @3 = 0.
    # global: 3 has rank 3 in {0..4}; then 0, 1, 2, 4 are each the leftmost mask -> @1..@3 = 4/5, @4 = 1.
    profile = arness_profile(order, [1, 2, 3], [1, 3, 4], length=length)
    assert profile["local"] == pytest.approx({1: 2 / 5, 2: 1 / 5, 3: 0.0})
    assert profile["global"] == pytest.approx({1: 4 / 5, 3: 4 / 5, 4: 1.0})
    # content: the pads leave the order and the masked set; what is left is a pure left-to-right decode
    order, length = counted_order(steps, 5, 3, "content")
    assert (order, length) == ([0, 1, 2], 3)
    assert arness_profile(order, [1, 9], [1], length=length) == {"local": {1: 1.0, 9: 1.0}, "global": {1: 1.0}}
    assert counted_order(steps, 5, 0, "content") == ([], 0)  # nothing before the first stop


def test_counted_order_rejects_bad_input():
    with pytest.raises(ValueError, match="positions must be one of region, content"):
        counted_order([[0]], 1, 1, "all")
    with pytest.raises(ValueError, match="useful length 4 is outside the region"):
        counted_order([[0]], 3, 4, "region")


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"temperatures": ()}, "non-empty sequence"),
    ({"temperatures": (0.2, -1.0)}, "finite numbers >= 0"),
    ({"temperatures": (0.2, float("nan"))}, "finite numbers >= 0"),
    ({"temperatures": (1, 1.0)}, "repeated value"),
    ({"temperatures": "0.2"}, "non-empty sequence"),
    ({"positions": "all"}, "positions must be one of"),
    ({"ks_local": (0, 1)}, "ks_local must hold integers >= 1"),
    ({"pass_ks": (1, 1)}, "pass_ks has a repeated value"),
])
def test_sweep_config_validation(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        SweepConfig(**kwargs)


def test_sweep_config_resolves_pass_ks():
    assert SweepConfig().resolved_pass_ks(10) == (1, 10)
    assert SweepConfig().resolved_pass_ks(1) == (1,)
    assert SweepConfig(pass_ks=(1, 5)).resolved_pass_ks(10) == (1, 5)


# ----------------------------------------------------------------------------------------------------------
# per-temperature summaries and the report, from hand-made samples


def _sample(task: str, index: int, verdict: str, steps: list[list[int]], length: int = 3) -> SweepSample:
    profile = arness_profile(flatten_order(steps), [1, 2], [1, 2], length=length)
    return SweepSample(task, index, "x", verdict, "" if verdict == "passed" else "AssertionError", 0.1, steps,
                       length, length, list(profile["local"].values()), list(profile["global"].values()))


L2R, R2L = [[], [0], [1], [2]], [[], [2], [1], [0]]
HAND = [_sample("a", 0, "passed", L2R), _sample("a", 1, "failed", R2L),
        _sample("b", 0, "failed", R2L), _sample("b", 1, "timeout", R2L)]
HAND_CONFIG = SweepConfig(temperatures=(0.5,), ks_local=(1, 2), ks_global=(1, 2))


def test_temperature_summary_hand_values():
    entry = temperature_summary(HAND, HAND_CONFIG, samples_per_task=2)
    # task a: n=2, c=1 -> pass@1 1/2, pass@2 1; task b: 0 -> means 1/4 and 1/2
    assert entry["pass@k"] == pytest.approx({"pass@1": 0.25, "pass@2": 0.5})
    assert entry["verdicts"] == {"failed": 2, "passed": 1, "timeout": 1}
    assert entry["tasks"] == 2 and entry["samples"] == 4 and entry["uncounted"] == 0
    # left-to-right scores 1 everywhere; right-to-left over L=3 scores local 0, global@k = k/3
    assert entry["arness_passed"]["local"]["mean"] == [1.0, 1.0]
    assert entry["arness_failed"]["local"]["mean"] == [0.0, 0.0]
    assert entry["arness_failed"]["global"]["mean"] == pytest.approx([1 / 3, 2 / 3])
    assert entry["arness"]["n"] == 4
    assert entry["arness"]["local"]["mean"] == pytest.approx([0.25, 0.25])
    assert entry["arness"]["local"]["std"] == pytest.approx([0.4330127, 0.4330127])  # sqrt(3)/4, ddof=0
    assert entry["arness"]["global"]["mean"] == pytest.approx([(1 + 3 / 3) / 4, (1 + 3 * 2 / 3) / 4])


def _hand_sweep_dir(path):
    path.mkdir()
    settings = _settings(HAND_CONFIG, EvalConfig(benchmark="synthetic", samples=2),
                         DecodeConfig(max_new_tokens=3, steps=4))
    (path / "sweep_config.json").write_text(json.dumps(settings))
    tdir = temperature_dir(path, 0.5)
    tdir.mkdir()
    (tdir / "results.jsonl").write_text("".join(json.dumps(s.to_json()) + "\n" for s in HAND))
    return path


def test_report_files_and_values(tmp_path):
    report = write_report(_hand_sweep_dir(tmp_path / "run"))
    on_disk = json.loads((tmp_path / "run" / "arness.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert report["positions"] == "region" and report["ks_local"] == [1, 2]
    (entry,) = report["temperatures"]
    assert entry["temperature"] == 0.5
    assert entry == json.loads(json.dumps({"temperature": 0.5, **temperature_summary(HAND, HAND_CONFIG, 2)}))
    assert set(report["plots"]) == {"arness_vs_k.png", "pass_vs_temperature.png", "decode_heatmap_T0.5.png"}
    for name in report["plots"]:
        assert (tmp_path / "run" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "run" / "summary.md").read_text()
    assert "| 0.5 | 4 | 25.0% | 50.0% | 0.250 ± 0.433 | 0.250 ± 0.433 | 0.500 ± 0.289 |" in md
    assert "trailing pad/EOS included" in md and "[arness_vs_k.png](arness_vs_k.png)" in md


def test_report_without_matplotlib_skips_plots_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    report = write_report(_hand_sweep_dir(tmp_path / "run"))
    assert report["plots"] == [] and "matplotlib is not installed" in report["plots_skipped"]
    assert not list((tmp_path / "run").glob("*.png"))
    assert "Plots skipped: matplotlib is not installed" in (tmp_path / "run" / "summary.md").read_text()
    assert json.loads((tmp_path / "run" / "arness.json").read_text())["temperatures"][0]["samples"] == 4


def test_read_samples_drops_a_torn_last_line_only(tmp_path):
    path = _hand_sweep_dir(tmp_path / "run") / "T0.5" / "results.jsonl"
    with open(path, "a") as f:
        f.write('{"task_id": "c"')
    assert read_samples(path) == HAND
    path.write_text("garbage\n" + json.dumps(HAND[0].to_json()) + "\n")
    with pytest.raises(ConfigError, match="line 1 is not a sweep record"):
        read_samples(path)


# ----------------------------------------------------------------------------------------------------------
# one saved trace, several tokens per step


def _hand_trace() -> DecodeTrace:
    # region starts at canvas index 3; relative commits per step: [], [4, 0], [1], [3, 2]; tokens 0 = stop
    rec = [StepRecord((), (), ()), StepRecord((7, 3), (0, 10), (0.9, 0.8)), StepRecord((4,), (11,), (0.7,)),
           StepRecord((6, 5), (0, 12), (0.6, 0.5))]
    return DecodeTrace(region_start=[3], steps=[rec])


def test_analyse_trace_hand_values_with_parallel_steps():
    result = analyse_trace(_hand_trace(), ks_local=(1, 2, 3), ks_global=(1, 3, 4))
    # flattened (by position inside a step): 0, 4, 1, 2, 3 over L=5.
    # local: 0 continues the prompt (inf), 4 no, 1 after 4 no, 2 after 1 (run 1), 3 after 2, 1 (run 2)
    #        -> @1 = 3/5, @2 = 2/5, @3 = 1/5.  global: ranks 0, 3, 0, 0, 0 -> @1 = @3 = 4/5, @4 = 1.
    assert result["local"] == pytest.approx({"1": 3 / 5, "2": 2 / 5, "3": 1 / 5})
    assert result["global"] == pytest.approx({"1": 4 / 5, "3": 4 / 5, "4": 1.0})
    assert result["tokens"] == [10, 11, 12, 0, 0] and result["commit_step"] == [1, 2, 3, 3, 1]
    assert result["length"] == 5 and result["useful"] == 5
    content = analyse_trace(_hand_trace(), stop_ids=[0], positions="content")
    assert content["useful"] == 3
    assert set(content["local"].values()) == {1.0} and set(content["global"].values()) == {1.0}
    with pytest.raises(ValueError, match="needs the tokenizer's stop ids"):
        analyse_trace(_hand_trace(), positions="content")
    with pytest.raises(ValueError, match=r"row must be an int in \[0, 1\)"):
        analyse_trace(_hand_trace(), row=1)


# ----------------------------------------------------------------------------------------------------------
# the sweep with a tiny random model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "model"
    assert main(["init", str(path), "--preset", "test", "--vocab-size", "400", "--tokenizer-bytes", "200000"]) == 0
    return path


SMALL = dict(eval_config=EvalConfig(benchmark="synthetic", samples=2, limit=2, synthetic_tasks=2, batch_size=3,
                                    seed=4),
             decode=DecodeConfig(max_new_tokens=12, steps=12, alg="entropy"),
             config=SweepConfig(temperatures=(0.2, 1.2)))


def _strip_durations(path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "duration"} for line in path.read_text().splitlines()]


def test_sweep_report_is_consistent_with_its_traces_and_resumes_exactly(model_dir, tmp_path):
    from unmask.decoding.dispatch import decode as generate
    from unmask.evaluate import chunk_seed, load_tasks, prompt_text

    model, tokenizer = unmask.load(model_dir)
    report = run_sweep(model, tokenizer, out_dir=tmp_path / "full", progress=False, **SMALL)
    names = {p.name for p in (tmp_path / "full").iterdir()}
    assert {"sweep_config.json", "arness.json", "summary.md", "arness_vs_k.png", "pass_vs_temperature.png",
            "decode_heatmap_T0.2.png", "decode_heatmap_T1.2.png", "T0.2", "T1.2"} <= names
    assert [e["temperature"] for e in report["temperatures"]] == [0.2, 1.2]
    for entry in report["temperatures"]:
        samples = read_samples(temperature_dir(tmp_path / "full", entry["temperature"]) / "results.jsonl")
        assert len(samples) == entry["samples"] == 4
        orders = []
        for s in samples:
            # one forward pass per step, every region position committed exactly once
            assert len(s.steps) == 12 and sorted(p for step in s.steps for p in step) == list(range(12))
            order = flatten_order(s.steps)
            profile = arness_profile(order, length=12)
            assert s.local == [profile["local"][k] for k in range(1, 10)]
            assert s.global_ == [profile["global"][k] for k in range(1, 5)]
            orders.append(order)
        assert entry["arness"] == summarize(orders)
        # the other counting rule: only commits before the first stop, in a region that ends there
        content = [[p for p in flatten_order(s.steps) if p < s.useful] for s in samples]
        content = [o for o in content if o]
        assert entry["arness_other_positions"] == (summarize(content) if content else None)
        per_task: dict[str, list[bool]] = {}
        for s in samples:
            per_task.setdefault(s.task_id, []).append(s.verdict == "passed")
        for k in (1, 2):
            expected = sum(pass_at_k(2, sum(v), k) for v in per_task.values()) / len(per_task)
            assert entry["pass@k"][f"pass@{k}"] == pytest.approx(expected)

    # the saved traces are what the reference sampler decodes for chunk 0 = (task 0: samples 0, 1; task 1: 0)
    # with that chunk's seed, the prompts left-padded into one batch
    from unmask.analysis.sweep import temperature_seed

    tasks = load_tasks(SMALL["eval_config"])
    prompts = [tokenizer.encode(prompt_text(tasks[t], tokenizer, False)) for t in (0, 0, 1)]
    width, pad = max(map(len, prompts)), tokenizer.special.pad
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    seed = chunk_seed(temperature_seed(4, 1.2), 0)
    ref = generate(model, ids, mask, config=SMALL["decode"].replace(temperature=1.2),
                   generator=torch.Generator().manual_seed(seed), trace=True)
    saved = read_samples(tmp_path / "full" / "T1.2" / "results.jsonl")[:3]
    assert [(s.task_id, s.sample) for s in saved] == [(tasks[0].task_id, 0), (tasks[0].task_id, 1),
                                                      (tasks[1].task_id, 0)]
    assert [s.steps for s in saved] == [ref.trace.order(row, drop_empty=False) for row in range(3)]

    # killed after one chunk (with a torn line), then resumed: the same files as the uninterrupted sweep
    run_sweep(model, tokenizer, out_dir=tmp_path / "resumed", progress=False, stop_after_chunks=1, **SMALL)
    assert len(read_samples(tmp_path / "resumed" / "T0.2" / "results.jsonl")) == 3
    assert not (tmp_path / "resumed" / "T1.2" / "results.jsonl").exists()
    with open(tmp_path / "resumed" / "T0.2" / "results.jsonl", "a") as f:
        f.write('{"task_id": "Synth')
    run_sweep(model, tokenizer, out_dir=tmp_path / "resumed", progress=False, **SMALL)
    for t in ("T0.2", "T1.2"):
        assert _strip_durations(tmp_path / "resumed" / t / "results.jsonl") == \
            _strip_durations(tmp_path / "full" / t / "results.jsonl")
    for name in ("arness.json", "summary.md", "sweep_config.json"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()

    with pytest.raises(ConfigError, match="different settings"):
        run_sweep(model, tokenizer, out_dir=tmp_path / "full", progress=False,
                  **{**SMALL, "config": SweepConfig(temperatures=(0.2,))})


# ----------------------------------------------------------------------------------------------------------
# the CLI


def test_cli_sweep_writes_the_report(model_dir, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["arness", "--model", str(model_dir), "--benchmark", "synthetic", "--temperatures", "0.2,1.0",
            "--samples", "1", "--limit", "2", "--synthetic-tasks", "2", "--max-new-tokens", "10", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    report = json.loads((out / "arness.json").read_text())
    assert report["steps"] == report["max_new_tokens"] == 10  # one token per step unless --steps is given
    assert [e["temperature"] for e in report["temperatures"]] == [0.2, 1.0]
    assert all(e["samples"] == 2 and set(e["pass@k"]) == {"pass@1"} for e in report["temperatures"])
    assert capsys.readouterr().out == (out / "summary.md").read_text()


def test_cli_trace_analysis_equals_the_library(model_dir, tmp_path, capsys):
    trace_path = tmp_path / "t.json"
    assert main(["generate", str(model_dir), "def f(x):", "--max-new-tokens", "10", "--steps", "10",
                 "--temperature", "0.9", "--trace", str(trace_path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    order = flatten_order(DecodeTrace.load(trace_path).order(0))
    profile = arness_profile(order)
    assert stats["local_arness@1"] == round(profile["local"][1], 4)
    assert stats["global_arness@1"] == round(profile["global"][1], 4)

    assert main(["arness", "--trace", str(trace_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["local"] == {str(k): v for k, v in profile["local"].items()}
    assert out["global"] == {str(k): v for k, v in profile["global"].items()}

    png = tmp_path / "order.png"
    assert main(["arness", "--trace", str(trace_path), "--model", str(model_dir), "--png", str(png)]) == 0
    printed = capsys.readouterr().out
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert f"{profile['global'][4]:.4f}" in printed and "decode order" in printed
    _, tokenizer = unmask.load(model_dir)
    assert "".join(tokenizer.token_texts(out["tokens"])).strip()[:5] in printed


@pytest.mark.parametrize(("argv", "needle"), [
    (["arness"], "give MODEL to run a temperature sweep, or --trace FILE"),
    (["arness", "--model", "{model}", "--temperature", "0.5"], "use --temperatures"),
    (["arness", "--model", "{model}", "--temperatures", "a,b"], "--temperatures must be a comma-separated list"),
    (["arness", "--model", "{model}", "--temperatures", "0.2,0.2"], "repeated value"),
    (["arness", "--trace", "/nonexistent/t.json"], "trace file not found"),
    (["arness", "--trace", "{trace}", "--positions", "content"], "pass MODEL"),
    (["arness", "--trace", "{trace}", "--row", "2"], "row must be an int"),
])
def test_cli_bad_input_is_one_line_and_exit_2(model_dir, tmp_path, capsys, argv, needle):
    trace_path = tmp_path / "t.json"
    _hand_trace().save(trace_path)
    argv = [a.replace("{model}", str(model_dir)).replace("{trace}", str(trace_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err
