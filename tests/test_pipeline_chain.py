"""The pipeline of recipes/diffucoder-mini.sh on the `test` preset, through the CLI as the recipe runs it:
AR pretraining → AR SFT → adaptation to diffusion (annealed attention) → coupled-GRPO. Each stage's output is a
model directory that loads, the next stage starts from it, a stage resumes from its checkpoint, and the prompt
is never masked once the model is a diffusion model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import unmask
from unmask.checkpoint import read_config
from unmask.cli import main


def write_data(root: Path) -> tuple[Path, Path]:
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"def f{i}(x):\n    return x * {i} + {i % 5}\n"}) + "\n"
                              for i in range(60)))
    sft = root / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": f"def add{i}(x):\n", "response": f"    return x + {i}\n"}) + "\n"
                           for i in range(40)))
    return corpus, sft


def latest(run: Path) -> Path:
    return run / (run / "latest").read_text().strip()


def train(*argv: str) -> None:
    common = ["--seq-len", "32", "--batch-size", "4", "--warmup-steps", "1", "--eval-every", "0", "--save-every", "2",
              "--sample-prompts", "0", "--log-every", "1", "--no-progress", "--device", "cpu"]
    assert main(["train", *argv, *common]) == 0


def test_ar_pretraining_to_coupled_grpo_chains_and_each_stage_loads_and_resumes(tmp_path):
    corpus, sft = write_data(tmp_path)
    train("--preset", "test", "--vocab-size", "300", "--objective", "autoregressive", "--data", str(corpus),
          "--max-steps", "2", "--run-dir", str(tmp_path / "stage1"))
    assert read_config(latest(tmp_path / "stage1"))[1] == "qwen2"  # a causal checkpoint, as an AR parent ships
    train(str(latest(tmp_path / "stage1")), "--stage", "sft", "--no-chat", "--objective", "autoregressive",
          "--data", str(sft), "--max-steps", "2", "--run-dir", str(tmp_path / "ar-sft"))
    twin, tok = unmask.load(latest(tmp_path / "ar-sft"))
    assert twin.causal

    # adaptation: record what the model sees to check the prompt stays clean under the diffusion loss
    seen: list[torch.Tensor] = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, args: seen.append(args[0].clone()) if type(m).__name__ == "DreamModel" and args else None)
    try:
        train(str(latest(tmp_path / "ar-sft")), "--stage", "sft", "--no-chat", "--adapt-from-ar", "--anneal-steps",
              "2", "--data", str(sft), "--max-steps", "2", "--run-dir", str(tmp_path / "adapt"))
    finally:
        handle.remove()
    prompts = {tuple(tok.encode(f"def add{i}(x):\n")) for i in range(40)}
    assert seen and all(any(tuple(row[:len(p)].tolist()) == p for p in prompts) for batch in seen for row in batch)
    assert any(bool((batch == tok.special.mask).any()) for batch in seen)  # the responses were noised

    adapted, _ = unmask.load(latest(tmp_path / "adapt"))
    assert not adapted.causal and adapted.config.pad_token_id == tok.special.dlm_pad  # pad != eos in SFT rows
    # the adaptation resumes from its checkpoint: two more steps continue at step 3
    train(str(latest(tmp_path / "ar-sft")), "--stage", "sft", "--no-chat", "--adapt-from-ar", "--anneal-steps",
          "2", "--data", str(sft), "--max-steps", "4", "--run-dir", str(tmp_path / "adapt"), "--resume")
    steps = [json.loads(x)["step"] for x in (tmp_path / "adapt" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4] and latest(tmp_path / "adapt").name == "checkpoint-0000004"

    rl = ["rl", str(latest(tmp_path / "adapt")), "--data", "synthetic-train", "--synthetic-tasks", "3",
          "--estimator", "coupled", "--num-generations", "2", "--prompts-per-step", "1", "--max-new-tokens", "6",
          "--steps", "3", "--eval-every", "0", "--save-every", "1", "--no-progress", "--device", "cpu",
          "--run-dir", str(tmp_path / "rl")]
    assert main([*rl, "--max-steps", "1"]) == 0
    assert main([*rl, "--max-steps", "2", "--resume"]) == 0  # resumes at step 2
    records = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["reward_missing"] == 0 for r in records)
    final, _ = unmask.load(latest(tmp_path / "rl"))
    ids = torch.tensor([tok.encode("def add3(x):\n")])
    out = unmask.generate(final, ids, max_new_tokens=6, steps=6, seed=0)
    assert not bool((out.generated == final.config.mask_token_id).any())  # the RL model decodes
