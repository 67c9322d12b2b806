"""`unmask tasks` (benchmark → JSONL), `unmask convert` (dtype/shards/generation defaults, remote code) and
model cards."""

from __future__ import annotations

import json
from importlib import resources

import torch
from conftest import make_model

import unmask
from unmask.checkpoint import read_generation_config, save_model
from unmask.cli import main
from unmask.data.synthetic import synthetic_tasks
from unmask.hf import REMOTE_CODE_FILES
from unmask.modelcard import render_model_card, run_summary
from unmask.training_data import read_sft_pairs


def test_tasks_sft_pairs_are_the_tasks_prompts_and_solutions(tmp_path, capsys):
    out = tmp_path / "sft.jsonl"
    assert main(["tasks", "synthetic-train", "--n", "7", "--seed", "3", "--format", "sft", "--out", str(out)]) == 0
    expected = synthetic_tasks("train", 7, 3)
    assert read_sft_pairs(out) == [(t.prompt, t.canonical_solution) for t in expected]
    # The task format round-trips every field a harness needs, on stdout.
    assert main(["tasks", "humaneval", "--limit", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["task_id"] for r in rows] == ["HumanEval/0", "HumanEval/1"]
    assert all(r["entry_point"] in r["prompt"] and "def check" in r["test"] for r in rows)


def test_tasks_unknown_benchmark_is_a_clear_error(capsys):
    assert main(["tasks", "no-such-bench"]) == 2
    assert "unknown benchmark 'no-such-bench'" in capsys.readouterr().err


def test_convert_to_bfloat16_round_trips_weights_and_sets_generation_defaults(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    assert main(["init", str(src), "--preset", "test", "--vocab-size", "300", "--tokenizer-bytes", "100000"]) == 0
    assert main(["convert", str(src), str(dst), "--dtype", "bfloat16", "--generation", "steps=12",
                 "--generation", "alg=topk_margin", "--max-shard-mb", "1"]) == 0
    original, tok = unmask.load(src, dtype=None)
    converted, tok2 = unmask.load(dst, dtype=None)
    assert next(converted.parameters()).dtype == torch.bfloat16
    for (name, a), (_, b) in zip(original.state_dict().items(), converted.state_dict().items()):
        assert torch.equal(a.to(torch.bfloat16), b), name
    assert converted.generation_defaults.steps == 12 and converted.generation_defaults.alg == "topk_margin"
    assert tok2.encode("def f(x):") == tok.encode("def f(x):")
    # dtype="auto" computes in float32 on CPU whatever is stored.
    auto, _ = unmask.load(dst)
    assert next(auto.parameters()).dtype == torch.float32
    capsys.readouterr()
    assert main(["convert", str(src), str(dst)]) == 2  # refuses to overwrite without --force
    assert "--force" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "x"), "--generation", "nope=1"]) == 2


# A Dream checkpoint's own code (Dream-v0 ships these four), with contents that show which code a directory has.
DREAM_CODE = {name: f"# {name} of the checkpoint itself (sentinel)\n" for name in
              ("configuration_dream.py", "modeling_dream.py", "generation_utils.py", "tokenization_dream.py")}
DREAM_AUTO_MAP = {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel",
                  "AutoModelForCausalLM": "modeling_dream.DreamModel"}  # one entry more than unmask writes


def fake_dream_checkpoint(path, tokenizer):
    """A Dream-format directory that ships code of its own instead of unmask's."""
    model = make_model(3, vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.special.mask)
    save_model(model, path, tokenizer=tokenizer)
    for name in REMOTE_CODE_FILES:
        (path / name).unlink()
    for name, text in DREAM_CODE.items():
        (path / name).write_text(text)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "auto_map": DREAM_AUTO_MAP}))
    return model


def shipped(name: str) -> bytes:
    return (resources.files("unmask.hf") / name).read_bytes()


def test_convert_keeps_a_dream_checkpoints_own_code_unless_asked(tmp_path, tokenizer, capsys):
    src, kept, replaced = tmp_path / "dream", tmp_path / "kept", tmp_path / "replaced"
    model = fake_dream_checkpoint(src, tokenizer)
    assert main(["convert", str(src), str(kept), "--dtype", "bfloat16"]) == 0
    assert "kept" in capsys.readouterr().out
    assert {p.name: p.read_text() for p in kept.glob("*.py")} == DREAM_CODE
    assert json.loads((kept / "config.json").read_text())["auto_map"] == DREAM_AUTO_MAP
    converted, _ = unmask.load(kept, dtype=None)  # the conversion itself still happened
    assert torch.equal(converted.lm_head.weight, model.lm_head.weight.to(torch.bfloat16))

    assert main(["convert", str(src), str(replaced), "--replace-remote-code"]) == 0
    assert sorted(p.name for p in replaced.glob("*.py")) == sorted(REMOTE_CODE_FILES)
    assert all((replaced / name).read_bytes() == shipped(name) for name in REMOTE_CODE_FILES)
    assert "AutoModelForCausalLM" not in json.loads((replaced / "config.json").read_text())["auto_map"]


def test_convert_refreshes_the_code_of_a_directory_unmask_saved(tmp_path, tokenizer):
    src = save_model(make_model(3, vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.special.mask),
                     tmp_path / "ours", tokenizer=tokenizer)
    (src / "generation_dream.py").write_text("# an older unmask's sampler\n")
    assert main(["convert", str(src), str(tmp_path / "dst"), "--generation", "dream_compat=true"]) == 0
    assert (tmp_path / "dst" / "generation_dream.py").read_bytes() == shipped("generation_dream.py")
    assert read_generation_config(tmp_path / "dst")["dream_compat"] is True
    # Dream's sampler is run by the plain reference decoder only: a directory may not recommend both
    assert main(["convert", str(src), str(tmp_path / "bad"), "--generation", "dream_compat=true",
                 "--generation", "decoder=blocks"]) == 2
    assert not (tmp_path / "bad").exists()


def _write_run(path, rows, config):
    path.mkdir()
    (path / "run_config.json").write_text(json.dumps(config))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo')


def test_run_summary_sums_compute_time_and_ignores_a_torn_line(tmp_path):
    rows = [{"step": 10, "loss": 5.0, "tokens": 1000, "tokens_per_s": 100.0, "epoch": 0.1},
            {"step": 20, "loss": 4.0, "tokens": 3000, "tokens_per_s": 200.0, "epoch": 0.2, "val_loss": 4.5}]
    _write_run(tmp_path / "run", rows, {"data": "stdlib", "preset": "tiny"})
    s = run_summary(tmp_path / "run")
    assert s["seconds"] == 1000 / 100 + 2000 / 200  # hand value: 20 s
    assert (s["steps"], s["loss"], s["first_loss"], s["val_loss"]) == (20, 4.0, 5.0, 4.5)


def test_model_card_reports_the_runs_and_evals(tmp_path, capsys):
    model = tmp_path / "m"
    assert main(["init", str(model), "--preset", "test", "--vocab-size", "300", "--tokenizer-bytes", "100000"]) == 0
    _write_run(tmp_path / "pre", [{"step": 5, "loss": 7.25, "tokens": 640, "tokens_per_s": 64.0}],
               {"data": "stdlib", "preset": "test", "lr": 0.001})
    ev = {"summary": {"benchmark": "synthetic", "tasks": 200, "samples_per_task": 1, "pass@k": {"pass@1": 0.125}},
          "eval": {"seed": 0}, "decode": {"max_new_tokens": 64, "steps": 64, "alg": "entropy", "temperature": 0.0}}
    card = render_model_card(model, pretrain=run_summary(tmp_path / "pre"), sft=None, evals=[ev], command="make x")
    assert card.startswith("---\nlibrary_name: unmask")
    assert "| pretrain | masked diffusion | stdlib | 5 | 640 |" in card and "7.250" in card and "0.2 min" in card
    # 25 of 200 passed: Wilson 95% [0.0861, 0.1780] (hand value); no decoder recorded = the reference sampler
    assert ("| synthetic (seed 0) | 200 | 1 | 0.125 | [0.086, 0.178] | reference | 64 tokens, 64 steps, alg entropy"
            in card)
    params = unmask.load(model)[0].config.num_parameters()
    assert f"{params / 1e6:.2f}M-parameter" in card
    _write_run(tmp_path / "sft", [{"step": 2, "loss": 1.0, "tokens": 64, "tokens_per_s": 64.0}],
               {"data": "pairs.jsonl", "preset": "tiny", "init_from": "runs/pre/model"})
    card = render_model_card(model, pretrain=None, sft=run_summary(tmp_path / "sft"), evals=[], command="make x")
    assert "- **sft**: init_from=runs/pre/model" in card and "preset=" not in card
