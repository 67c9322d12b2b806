"""LoRA through peft (unmask.lora): only the adapters train and only they reach the optimiser, the merged export
equals the adapter model and W + (alpha / r) B A by hand, the adapter loads with peft's own
``PeftModel.from_pretrained``, kill + resume equals an uninterrupted run, and bad settings fail in one line."""

from __future__ import annotations

import json

import pytest
import torch
from test_train import config, cyclic_rows, params, tiny_model

import unmask
from unmask.cli import main
from unmask.errors import CheckpointError, ConfigError
from unmask.lora import AdaptersOff, base_of
from unmask.rl.config import RLConfig
from unmask.train import TrainConfig, TrainData, train

peft = pytest.importorskip("peft")

R = 4


def sft_rows():
    rows = cyclic_rows()
    rows.prompt_lengths.fill_(8)  # SFT: the first 8 tokens are the prompt, never masked
    return rows


def base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The frozen weights of a model with adapters injected, under their plain names."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k}


def ids_batch() -> torch.Tensor:
    return torch.randint(1, 31, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tokenizer):
    """A short LoRA SFT run: (its run directory, the trained model, the initial weights)."""
    tmp = tmp_path_factory.mktemp("lora")
    model = tiny_model()
    initial = params(model)
    rows = sft_rows()
    train(config(tmp, "run", stage="sft", lora_r=R, max_steps=3, save_every=3), model=model, tokenizer=tokenizer,
          data=TrainData(rows, rows))
    return tmp / "run", model, initial


def test_only_the_adapters_train_and_only_they_reach_the_optimizer(lora_run):
    run_dir, model, initial = lora_run
    assert base_weights(model).keys() == initial.keys()
    assert all(torch.equal(base_weights(model)[k], initial[k]) for k in initial)  # the base, bit for bit
    trained = {k for k, p in model.named_parameters() if p.requires_grad}
    adapters = {k for k, _ in model.named_parameters() if "lora_" in k}
    assert trained == adapters and len(adapters) == 2 * 7 * model.config.num_hidden_layers  # A and B per projection
    assert all(p.abs().sum() > 0 for k, p in model.named_parameters() if "lora_B" in k)  # B starts at 0: it moved
    checkpoint = run_dir / "checkpoint-0000003"
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert set(optimizer["state"]) == {f"base_model.model.{k}" for k in adapters}
    assert not (checkpoint / "model.safetensors").exists() and (run_dir / "base" / "model.safetensors").is_file()
    assert base_of(checkpoint) == (run_dir / "base").resolve()
    with pytest.raises(CheckpointError, match="a LoRA checkpoint .*--merge-lora"):
        unmask.load(checkpoint)


def test_merged_export_equals_the_adapter_model_and_peft_loads_the_adapter(lora_run, tmp_path, capsys):
    run_dir, model, _ = lora_run
    checkpoint, ids = run_dir / "checkpoint-0000003", ids_batch()
    with torch.no_grad():
        want = model(ids)  # the trained model, adapters on
        loaded = peft.PeftModel.from_pretrained(unmask.load(run_dir / "base")[0], str(checkpoint / "adapter"))
        torch.testing.assert_close(loaded(ids), want, rtol=0, atol=0)
        # RL's reference under LoRA: the same module with its adapters off is the base, exactly
        base_logits = unmask.load(run_dir / "base")[0](ids)
        torch.testing.assert_close(AdaptersOff(loaded)(ids), base_logits, rtol=0, atol=0)
        assert not torch.allclose(base_logits, want) and list(AdaptersOff(loaded).state_dict()) == []
        torch.testing.assert_close(loaded(ids), want, rtol=0, atol=0)  # and on again afterwards
    assert main(["convert", str(checkpoint), str(tmp_path / "merged"), "--merge-lora"]) == 0
    merged, _ = unmask.load(tmp_path / "merged")
    assert type(merged) is type(tiny_model()) and {n for n, _ in merged.named_parameters()} == set(params(tiny_model()))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), want, rtol=1e-5, atol=1e-5)
    # by hand: W + (alpha / r) B A, alpha = 2 r by default
    q = model.model.layers[1].self_attn.q_proj  # the model given to train(): peft injected its layers in place
    by_hand = q.base_layer.weight + 2.0 * q.lora_B["default"].weight @ q.lora_A["default"].weight
    torch.testing.assert_close(merged.model.layers[1].self_attn.q_proj.weight, by_hand, rtol=0, atol=1e-6)
    capsys.readouterr()
    assert main(["convert", str(run_dir / "base"), str(tmp_path / "other"), "--merge-lora"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--merge-lora needs a LoRA checkpoint" in err


def test_lora_kill_and_resume_equals_uninterrupted(tmp_path):
    rows = sft_rows()
    # dropout on the LoRA branch, grad accumulation and stratified t: RNG state that must come back exactly
    common = dict(stage="sft", lora_r=R, lora_alpha=4.0, lora_dropout=0.1, grad_accum=2, t_method="stratified",
                  max_steps=6, save_every=3)
    straight_model = tiny_model()
    straight = train(config(tmp_path, "straight", **common), model=straight_model, data=TrainData(rows, rows))
    train(config(tmp_path, "split", stop_after_steps=3, **common), model=tiny_model(), data=TrainData(rows, rows))
    resumed_model = tiny_model(seed=123)  # other weights: the base must come from run_dir/base, adapters from adapter/
    second = train(config(tmp_path, "split", resume=True, **common), model=resumed_model, data=TrainData(rows, rows))
    assert second.step == 6
    a, b = resumed_model.state_dict(), straight_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in straight.history[3:]] == [r["loss"] for r in second.history]
    lines = lambda run: [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["loss"] for r in lines("split")] == [r["loss"] for r in lines("straight")]
    with pytest.raises(ConfigError, match="is a LoRA checkpoint"):
        train(config(tmp_path, "split", resume=True, **{**common, "lora_r": 0}), model=tiny_model(),
              data=TrainData(rows, rows))


def test_bad_lora_settings_are_one_line_config_errors(tmp_path, capsys):
    for cls in (TrainConfig, RLConfig):
        with pytest.raises(ConfigError, match="^lora_r must be a non-negative integer, got -1$"):
            cls(lora_r=-1)
        with pytest.raises(ConfigError, match="^lora_targets: unknown module 'qkv'; choose from q_proj, k_proj"):
            cls(lora_r=R, lora_targets="q_proj,qkv")
        with pytest.raises(ConfigError, match="^lora_alpha must be a number in"):
            cls(lora_alpha=0.0)
        with pytest.raises(ConfigError, match="^lora_dropout must be a number in"):
            cls(lora_dropout=1.0)
    with pytest.raises(ConfigError, match="^lora_r > 0 cannot be combined with distributed fsdp"):
        TrainConfig(lora_r=R, distributed="fsdp")
    with pytest.raises(ConfigError, match="^ref_sync_every must be 0 with LoRA"):
        RLConfig(lora_r=R)  # the default ref_sync_every (64) blends the reference, which LoRA's cannot be
    RLConfig(lora_r=R, ref_sync_every=0)
    RLConfig(lora_r=R, beta=0.0)  # no reference at all: nothing to sync
    assert main(["train", "--lora-r", "4", "--lora-targets", "qkv", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: lora_targets: unknown module 'qkv'")


def test_cli_lora_sft_from_a_model_directory_resumes_and_merges(tmp_path, tokenizer, capsys):
    from conftest import make_model

    from unmask.checkpoint import save_model
    from unmask.train import sft_pad_id

    special = tokenizer.special
    base = make_model(4, vocab_size=tokenizer.vocab_size, mask_token_id=special.mask, pad_token_id=special.pad,
                      eos_token_id=special.eos, bos_token_id=special.eos)
    save_model(base, tmp_path / "base", tokenizer=tokenizer)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"def f{i}(x):", "response": f"    return x + {i}"}) + "\n"
                            for i in range(12)))
    run = tmp_path / "run"
    argv = ["train", str(tmp_path / "base"), "--stage", "sft", "--data", str(data), "--lora-r", "4", "--seq-len", "48",
            "--batch-size", "2", "--max-steps", "2", "--save-every", "1", "--eval-every", "0", "--sample-prompts", "0",
            "--run-dir", str(run), "--no-progress", "--device", "cpu", "--no-chat"]
    assert main([*argv, "--stop-after-steps", "1"]) == 0
    assert main(["train", "--run-dir", str(run), "--resume", "--no-progress"]) == 0  # settings: run_config.json
    checkpoint = run / "checkpoint-0000002"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 2
    assert base_of(checkpoint) == (tmp_path / "base").resolve() and not (run / "base").exists()  # no copy of it
    assert main(["convert", str(checkpoint), str(tmp_path / "merged"), "--merge-lora"]) == 0
    merged, _ = unmask.load(tmp_path / "merged")
    assert merged.config.pad_token_id == sft_pad_id(special)  # the config training used, not the base's
    assert main(["generate", str(tmp_path / "merged"), "def f(x):", "--max-new-tokens", "4", "--steps", "4"]) == 0
