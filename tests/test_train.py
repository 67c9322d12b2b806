"""The training loop: loss falls, resume equals uninterrupted, torchrun matches one process, attention
annealing on schedule, SFT keeps the prompt clean, and bad input fails early with a ConfigError."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unmask.cli import main
from unmask.config import ModelConfig
from unmask.diffusion import mask_probability, shift_logits, token_logprobs
from unmask.errors import ConfigError
from unmask.model import DreamModel
from unmask.train import Batch, TrainConfig, TrainData, _loss_sum, lr_factor, make_batch, prepare, train
from unmask.training_data import TokenRows

V = 32
MASK = V - 1
SRC = Path(__file__).resolve().parents[1] / "src"


def tiny_model(seed: int = 0) -> DreamModel:
    config = ModelConfig.from_name(
        "test", vocab_size=V, mask_token_id=MASK, pad_token_id=0, eos_token_id=0, bos_token_id=0
    )
    model = DreamModel(config)
    model.init_weights(torch.Generator().manual_seed(seed))
    return model


def cyclic_rows(n: int = 16, length: int = 32) -> TokenRows:
    """A repetitive toy corpus: rotations of 1, 2, ..., 16, 1, 2, ... (each token fixes its neighbours)."""
    base = torch.arange(1, 17).repeat(length // 16 + 1)[:length]
    ids = torch.stack([torch.roll(base, -k) for k in range(n)])  # (n, length)
    return TokenRows(ids, torch.ones(n, dtype=torch.long))


def config(tmp_path, name="run", **changes) -> TrainConfig:
    values = dict(
        run_dir=str(tmp_path / name),
        seq_len=32,
        batch_size=8,
        max_steps=8,
        lr=3e-3,
        warmup_steps=2,
        eval_every=0,
        save_every=4,
        log_every=1,
        progress=False,
    )
    return TrainConfig(**{**values, **changes})


def params(model: DreamModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_lr_schedule_hand_values():
    kw = dict(warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    assert [lr_factor(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, **kw) == pytest.approx(1.0)
    assert lr_factor(9, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert lr_factor(14, **kw) == pytest.approx(0.1) and lr_factor(20, **kw) == pytest.approx(0.1)


def test_loss_falls_on_a_repetitive_corpus(tmp_path):
    rows = cyclic_rows()
    cfg = config(tmp_path, max_steps=80, eval_every=80, save_every=80, warmup_steps=5)
    result = train(cfg, model=tiny_model(), data=TrainData(rows, rows))
    first = sum(r["loss"] for r in result.history[:5]) / 5
    last = sum(r["loss"] for r in result.history[-10:]) / 10
    assert first > 0.9 * math.log(V)  # starts near uniform over the vocabulary
    # the ELBO has a floor (a fully masked row of this corpus is only known up to its rotation), so bound
    # relative to uniform guessing, log V
    assert last < 0.65 * first and result.history[-1]["val_loss"] < 0.65 * math.log(V)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 81)) and "val_loss" in lines[-1]
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert TrainConfig.from_dict(saved) == cfg


@pytest.mark.parametrize("block_size", [None, 4], ids=["full", "block-diffusion"])
def test_kill_and_resume_equals_uninterrupted(tmp_path, block_size):
    rows = cyclic_rows()
    # adaptation noise, grad accumulation and the t/mask draws all exercise RNG state that must be restored
    common = dict(
        block_size=block_size,
        grad_accum=2,
        adapt_from_ar=True,
        anneal_steps=6,
        prefix_prob=0.5,
        truncate_prob=0.5,
        t_method="stratified",
        eval_every=4,
    )
    straight_model = tiny_model()
    straight = train(config(tmp_path, "straight", **common), model=straight_model, data=TrainData(rows, rows))

    first = train(
        config(tmp_path, "split", stop_after_steps=4, **common),
        model=tiny_model(),
        data=TrainData(rows, rows),
    )
    assert first.step == 4 and (tmp_path / "split" / "latest").read_text().strip() == "checkpoint-0000004"
    resumed_model = tiny_model(seed=123)  # different weights: everything must come from the checkpoint
    second = train(
        config(tmp_path, "split", resume=True, **common), model=resumed_model, data=TrainData(rows, rows)
    )
    assert second.step == 8
    a, b = params(straight_model), params(resumed_model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in straight.history[4:]] == [r["loss"] for r in second.history]
    losses = [json.loads(x)["loss"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert losses == [r["loss"] for r in straight.history]
    saved = load_file(str(tmp_path / "split" / "checkpoint-0000008" / "model.safetensors"))
    assert all(torch.equal(saved[k], b[k]) for k in b)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(config(tmp_path, "split", **common), model=tiny_model(), data=TrainData(rows, rows))


def test_attention_anneals_from_causal_to_full_on_schedule(tmp_path):
    rows = cyclic_rows()
    seen: list[torch.Tensor | None] = []
    model = tiny_model()
    model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs.get("attention_mask")), with_kwargs=True
    )
    cfg = config(
        tmp_path, adapt_from_ar=True, anneal_steps=4, prefix_prob=0.0, truncate_prob=0.0, max_steps=6
    )
    result = train(cfg, model=model, data=TrainData(rows, rows))
    assert len(seen) == 6
    T = 32
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    future = ~causal
    opened = []
    for k in range(4):  # step k (0-based): causal OR Bernoulli(k / 4) future keys, one draw for the batch
        mask = seen[k][0, 0]
        assert seen[k].shape == (8, 1, T, T) and all(torch.equal(seen[k][b, 0], mask) for b in range(8))
        assert bool(mask[causal].all())  # the causal part is always visible
        opened.append(float(mask[future].float().mean()))
    assert torch.equal(seen[0][0, 0], causal)  # exactly causal first
    # 496 future pairs per draw: the visible share is within 4.5 standard deviations of k / 4
    for k in (1, 2, 3):
        assert abs(opened[k] - k / 4) < 4.5 * math.sqrt((k / 4) * (1 - k / 4) / 496)
    assert seen[4] is None and seen[5] is None  # full attention from step anneal_steps on
    assert [r["anneal_fraction"] for r in result.history] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_annealing_draws_a_fresh_mask_every_step(tmp_path):
    """DiffuLLaMA-style annealing: a new Bernoulli draw of future keys each step, not one fixed band."""
    rows = cyclic_rows()
    seen: list[torch.Tensor | None] = []
    model = tiny_model()
    model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs.get("attention_mask")), with_kwargs=True
    )
    cfg = config(tmp_path, adapt_from_ar=True, anneal_steps=20, prefix_prob=0.0, truncate_prob=0.0,
                 max_steps=4, eval_every=0)
    train(cfg, model=model, data=TrainData(rows, rows))
    masks = [m[0, 0] for m in seen[1:4]]  # fractions 0.05 .. 0.15: 25 to 75 of 496 future keys expected
    assert all(bool((m & ~torch.ones_like(m).tril()).any()) for m in masks)
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])


def test_adapt_from_ar_without_anneal_steps_is_an_error():
    with pytest.raises(ConfigError, match="anneal_steps"):
        TrainConfig(adapt_from_ar=True, anneal_steps=0)


def test_adaptation_truncation_becomes_padding():
    cfg = TrainConfig(seq_len=16, adapt_from_ar=True, anneal_steps=1, prefix_prob=1.0, truncate_prob=1.0)
    rows = cyclic_rows(4, 16)
    batch = make_batch(
        rows.ids,
        rows.prompt_lengths,
        step=1,  # annealing is over: full attention, so the key mask is the truncation alone
        cfg=cfg,
        mask_token_id=MASK,
        generator=torch.Generator().manual_seed(0),
    )
    for b in range(4):
        keep = int(batch.attention_mask[b, 0, 0].sum())  # query 0 sees exactly the kept keys
        assert keep < 16 and not batch.maskable[b, keep:].any() and not batch.masked[b, keep:].any()
        assert not batch.attention_mask[b, 0, :, keep:].any(dim=1)[:keep].any()  # real queries skip pads
        assert batch.attention_mask[b, 0, keep:, keep:].diagonal().all()  # pad queries see themselves
        assert not batch.maskable[b, 0]


def _sft_rows() -> tuple[torch.Tensor, torch.Tensor]:
    clean = torch.arange(100, 124).repeat(64, 1)  # (64, 24): prompt, response, eos at 15, pads after it
    clean[:, 15], clean[:, 16:] = 7, 9
    return clean, torch.tensor([5, 6, 8, 3] * 16)


def test_semi_ar_block_rows_show_the_blocks_decoders_state():
    clean, prompts = _sft_rows()
    cfg = TrainConfig(stage="sft", seq_len=24, block_mask_prob=1.0, block_mask_length=4)
    batch = make_batch(clean, prompts, step=0, cfg=cfg, mask_token_id=MASK, generator=torch.Generator().manual_seed(0),
                       stop_id=7)
    pos = torch.arange(24)
    for b in range(64):
        p = int(prompts[b])
        scored = batch.masked[b].nonzero().flatten()
        hidden = (batch.input_ids[b] == MASK).nonzero().flatten()
        assert batch.maskable[b].tolist() == (pos >= p).tolist()  # the normaliser still counts the whole row
        blocks = -(-(16 - p) // 4)  # response + eos cut into blocks of 4 from the prompt's end
        assert float(batch.row_weight[b]) == blocks
        if len(scored) == 0:
            continue
        j = (int(scored[0]) - p) // 4  # the block the scored positions lie in
        lo, hi = p + 4 * j, min(p + 4 * j + 4, 16)
        assert ((scored >= lo) & (scored < hi)).all()  # only that block is scored
        assert torch.equal(batch.input_ids[b, :lo], clean[b, :lo])  # everything before it is clean
        assert (batch.input_ids[b, hi:] == MASK).all()  # everything after it masked (pads too), unscored
        assert set(hidden.tolist()) == set(scored.tolist()) | set(range(hi, 24))
    assert (batch.row_weight > 1).any() and batch.masked.any()


def test_block_mask_prob_leaves_other_rows_noise_alone_and_is_validated():
    clean, prompts = _sft_rows()
    plain = TrainConfig(stage="sft", seq_len=24)
    a = make_batch(clean, prompts, step=0, cfg=plain, mask_token_id=MASK, generator=torch.Generator().manual_seed(3))
    half = TrainConfig(stage="sft", seq_len=24, block_mask_prob=0.5, block_mask_length=2)  # >= 4 blocks a row
    b = make_batch(clean, prompts, step=0, cfg=half, mask_token_id=MASK, generator=torch.Generator().manual_seed(3),
                   stop_id=7)
    untouched = b.row_weight == 1  # the rows not turned into block rows are noised exactly as without the option
    assert a.row_weight is None and torch.equal(a.masked[untouched], b.masked[untouched])
    assert torch.equal(a.input_ids[untouched], b.input_ids[untouched])
    assert 10 < int((~untouched).sum()) < 54  # about half the rows
    with pytest.raises(ConfigError, match="block_mask_prob"):
        TrainConfig(objective="autoregressive", block_mask_prob=0.5)
    with pytest.raises(ConfigError, match="block_mask_prob"):
        TrainConfig(block_mask_prob=1.5)


def write_sft(path: Path) -> None:
    examples = [
        {"prompt": f"add {i} and {i + 1}", "response": f"def f():\n    return {2 * i + 1}\n"}
        for i in range(12)
    ]
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))


def sft_config(tmp_path, **changes) -> TrainConfig:
    """An SFT run on ``write_sft``'s pairs: test preset, a 300-token BPE, rows of 64."""
    data_file = tmp_path / "sft.jsonl"
    write_sft(data_file)
    values = dict(run_dir=str(tmp_path / "sft"), stage="sft", data=str(data_file), preset="test", vocab_size=300,
                  seq_len=64, batch_size=4, progress=False)
    return TrainConfig(**{**values, **changes})


def test_sft_never_masks_the_prompt_and_scores_only_the_response(tmp_path):
    cfg = sft_config(tmp_path, max_steps=3, eval_every=0, val_fraction=0.2)
    model, tokenizer, data = prepare(cfg)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "add 0 and 1"}])
    prompts = [f"add {i} and {i + 1}" for i in range(12)]
    lengths = {
        len(tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": q}])))
        for q in prompts
    }
    assert set(data.train.prompt_lengths.tolist()) <= lengths and len(tokenizer.encode(chat)) in lengths
    seen = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0].clone()), with_kwargs=True)
    train(cfg, model=model, tokenizer=tokenizer, data=data)
    assert len(seen) == 3
    rows = {tuple(r.tolist()): int(p) for r, p in zip(data.train.ids, data.train.prompt_lengths)}
    masked_response = 0
    for noisy in seen:  # every noisy row is a training row with its prompt intact
        for row in noisy:
            match = [
                (clean, p)
                for clean, p in rows.items()
                if all(a == b or a == tokenizer.special.mask for a, b in zip(row.tolist(), clean))
            ]
            assert match
            clean, p = match[0]
            assert row[:p].tolist() == list(clean[:p])
            masked_response += int((row[p:] == tokenizer.special.mask).sum())
    assert masked_response > 0

    # the loss covers response tokens only: a naive per-token sum over masked response positions
    batch = make_batch(
        data.train.ids[:4],
        data.train.prompt_lengths[:4],
        step=0,
        cfg=cfg,
        mask_token_id=tokenizer.special.mask,
        generator=torch.Generator().manual_seed(1),
    )
    assert not (batch.maskable & (torch.arange(64)[None] < data.train.prompt_lengths[:4, None])).any()
    logits = torch.randn(4, 64, model.config.vocab_size, generator=torch.Generator().manual_seed(2))
    lp = token_logprobs(shift_logits(logits), batch.targets)
    naive = sum(
        -lp[b, n] / mask_probability(batch.t[b]) for b in range(4) for n in range(64) if batch.masked[b, n]
    )
    assert float(_loss_sum(logits, batch, cfg)) == pytest.approx(float(naive), rel=1e-5)
    perturbed = logits.clone()
    for b in range(4):  # outputs that predict prompt positions (shift: output j-1 predicts j) do not matter
        perturbed[b, : int(data.train.prompt_lengths[b]) - 1] += 5.0 * torch.randn(1)
    assert float(_loss_sum(perturbed, batch, cfg)) == pytest.approx(float(naive), rel=1e-5)


def test_torchrun_two_processes_match_one(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    docs = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(60)]
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    args = [
        "train",
        "--preset",
        "test",
        "--vocab-size",
        "300",
        "--data",
        str(corpus),
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--grad-accum",
        "2",
        "--max-steps",
        "3",
        "--save-every",
        "3",
        "--no-progress",
        "--eval-every",
        "0",
        "--lr",
        "1e-3",
    ]
    assert main([*args, "--run-dir", str(tmp_path / "one")]) == 0
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "unmask.cli",
            *args,
            "--run-dir",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = load_file(str(tmp_path / "one" / "checkpoint-0000003" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "checkpoint-0000003" / "model.safetensors"))
    init = DreamModel(ModelConfig.from_name("test", vocab_size=one["lm_head.weight"].shape[0]))
    init.init_weights(torch.Generator().manual_seed(0))
    assert any(not torch.equal(one[k], init.state_dict()[k]) for k in one)  # training moved the weights
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5)
    loss_one = [json.loads(x)["loss"] for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    loss_two = [json.loads(x)["loss"] for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert loss_two == pytest.approx(loss_one, rel=1e-5)


def test_bad_input_is_a_clear_config_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is empty"):
        prepare(TrainConfig(data=str(tmp_path / "empty"), preset="test"))
    with pytest.raises(ConfigError, match="unknown training config field.*: learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        TrainConfig(batch_size=0)
    rows = cyclic_rows()
    with pytest.raises(ConfigError, match=r"seq_len 300 exceeds the model's max_position_embeddings \(256\)"):
        train(config(tmp_path, seq_len=300), model=tiny_model(), data=TrainData(rows, rows))
    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"preset": "test", "stepz": 3}))
    assert main(["train", "--config", str(config_file)]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown training config field(s): stepz"
    assert main(["train", "--data", str(tmp_path / "nope"), "--run-dir", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# FSDP (torchrun, 2 processes, CPU/gloo)

FSDP_DRIVER = """
import gc, json, sys
import torch, torch.distributed as dist
from unmask.config import ModelConfig
from unmask.model import DreamModel
from unmask.train import TrainConfig, TrainData, train
from unmask.training_data import TokenRows

dist.init_process_group("gloo")  # one group for all three runs (train() joins an existing group)
common = json.loads(sys.argv[1])
base = torch.arange(1, 17).repeat(3)[:32]
ids = torch.stack([torch.roll(base, -k) for k in range(16)])
rows = TokenRows(ids, torch.ones(16, dtype=torch.long))
config = ModelConfig.from_name("test", vocab_size=32, mask_token_id=31, pad_token_id=0, eos_token_id=0,
                               bos_token_id=0)

def model(seed):
    m = DreamModel(config)
    m.init_weights(torch.Generator().manual_seed(seed))
    return m

root = sys.argv[2]
sharded = model(0)
train(TrainConfig(run_dir=root + "/fsdp", **common), model=sharded, data=TrainData(rows, rows))
# fully_shard worked in place: every parameter is a DTensor holding half of dim 0 on this rank
from torch.distributed.tensor import DTensor, Shard
for name, p in sharded.named_parameters():
    assert isinstance(p, DTensor) and p.placements == (Shard(0),), name
    assert p.to_local().shape[0] == (p.shape[0] + 1) // 2 or dist.get_rank() == 1, name
assert type(sharded.model.layers[0]).__name__.startswith("FSDP")
train(TrainConfig(run_dir=root + "/split", stop_after_steps=2, **common), model=model(0), data=TrainData(rows, rows))
train(TrainConfig(run_dir=root + "/split", resume=True, **common), model=model(5), data=TrainData(rows, rows))
# Drop the FSDP modules before the group goes: left to the interpreter's final collection they sometimes
# abort the process after a finished run (gloo, torch 2.13), failing an otherwise good run.
del sharded
gc.collect()
dist.barrier()
dist.destroy_process_group()
"""


def test_fsdp_two_processes_match_one_and_resume_exactly(tmp_path):
    common = dict(
        seq_len=32,
        batch_size=8,
        grad_accum=2,
        max_steps=4,
        lr=3e-3,
        warmup_steps=1,
        eval_every=2,
        save_every=2,
        keep_checkpoints=4,
        log_every=1,
        progress=False,
        sample_tokens=4,
        gradient_checkpointing=True,  # recompute inside FSDP-wrapped blocks (re-gathers their shards)
    )
    rows = cyclic_rows()
    one_model = tiny_model()
    one = train(config(tmp_path, "one", **common), model=one_model, data=TrainData(rows, rows))

    driver = tmp_path / "driver.py"
    driver.write_text(FSDP_DRIVER)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    fsdp_common = json.dumps({**common, "distributed": "fsdp"})
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver),
         fsdp_common, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    def weights(run: str, step: int) -> dict[str, torch.Tensor]:
        return load_file(str(tmp_path / run / f"checkpoint-{step:07d}" / "model.safetensors"))

    # (a) 2-process FSDP == 1 process (same global batch), to float tolerance; the checkpoint is a full,
    # unsharded state dict with the single-process names and shapes
    a, b = params(one_model), weights("fsdp", 4)
    assert set(a) == set(b)
    assert any(not torch.equal(a[k], params(tiny_model())[k]) for k in a)  # training moved the weights
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    fsdp_lines = [json.loads(x) for x in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    assert [x["loss"] for x in fsdp_lines] == pytest.approx([r["loss"] for r in one.history], rel=1e-5)
    assert [x["val_loss"] for x in fsdp_lines if "val_loss" in x] == pytest.approx(
        [r["val_loss"] for r in one.history if "val_loss" in r], rel=1e-5
    )
    optim_one = torch.load(tmp_path / "one" / "checkpoint-0000004" / "optimizer.pt", weights_only=True)
    optim_fsdp = torch.load(tmp_path / "fsdp" / "checkpoint-0000004" / "optimizer.pt", weights_only=True)
    assert set(optim_one["state"]) == set(optim_fsdp["state"]) == set(a)  # keyed by parameter name
    for name, state in optim_one["state"].items():
        torch.testing.assert_close(optim_fsdp["state"][name]["exp_avg"], state["exp_avg"], rtol=1e-4, atol=1e-6)
    # samples were decoded under FSDP (all ranks in the forward), written once, like one process
    samples = [json.loads(x) for x in (tmp_path / "fsdp" / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [2, 2, 4, 4]

    # (b) FSDP kill at step 2 + resume == uninterrupted FSDP
    split = weights("split", 4)
    assert all(torch.equal(split[k], b[k]) for k in b)
    split_losses = [json.loads(x)["loss"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert split_losses == [x["loss"] for x in fsdp_lines]

    # (c) the FSDP checkpoint at step 2 resumes in a single process and lands on the single-process run
    cross = tmp_path / "cross"
    cross.mkdir()
    shutil.copytree(tmp_path / "split" / "checkpoint-0000002", cross / "checkpoint-0000002")
    (cross / "latest").write_text("checkpoint-0000002\n")
    cross_model = tiny_model(seed=9)
    train(config(tmp_path, "cross", resume=True, **common), model=cross_model, data=TrainData(rows, rows))
    c = params(cross_model)
    for k in a:
        torch.testing.assert_close(c[k], a[k], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Gradient checkpointing


def test_gradient_checkpointing_gives_the_same_loss_gradients_and_training(tmp_path):
    rows = cyclic_rows()
    cfg = config(tmp_path)
    batch = make_batch(
        rows.ids[:4], rows.prompt_lengths[:4], step=0, cfg=cfg, mask_token_id=MASK,
        generator=torch.Generator().manual_seed(3),
    )
    results = []
    for checkpointing in (False, True):
        model = tiny_model().train()
        model.gradient_checkpointing = checkpointing
        loss = _loss_sum(model(batch.input_ids, attention_mask=batch.attention_mask), batch, cfg)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert float(loss_a) > 0 and torch.allclose(loss_a, loss_b)
    assert set(grads_a) == set(grads_b) and all(grads_a[n].abs().sum() > 0 for n in grads_a)
    for n in grads_a:
        torch.testing.assert_close(grads_b[n], grads_a[n], rtol=1e-5, atol=1e-7)

    # the recompute really happens: each block's forward runs twice per backward
    calls = []
    model = tiny_model().train()
    model.gradient_checkpointing = True
    model.model.layers[0].register_forward_pre_hook(lambda *a: calls.append(1))  # recompute may stop early
    _loss_sum(model(batch.input_ids), batch, cfg).backward()
    assert len(calls) == 2

    trained = {}
    for checkpointing in (False, True):
        model = tiny_model()
        train(
            config(tmp_path, f"gc-{checkpointing}", max_steps=3, gradient_checkpointing=checkpointing),
            model=model,
            data=TrainData(rows, rows),
        )
        trained[checkpointing] = params(model)
    assert any(not torch.equal(trained[True][k], params(tiny_model())[k]) for k in trained[True])
    for k in trained[False]:
        torch.testing.assert_close(trained[True][k], trained[False][k], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Sample generations at validation


def test_samples_are_logged_at_each_validation_and_do_not_disturb_training(tmp_path):
    cfg = sft_config(tmp_path, max_steps=5, eval_every=2, eval_batches=1, sample_prompts=2, sample_tokens=6,
                     val_fraction=0.3)
    model, tokenizer, data = prepare(cfg)
    assert len(data.val) >= 2
    modes = []  # (training, grad enabled) of every forward
    model.register_forward_pre_hook(lambda m, a: modes.append((m.training, torch.is_grad_enabled())))
    train(cfg, model=model, tokenizer=tokenizer, data=data)
    samples = [json.loads(x) for x in (tmp_path / "sft" / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [2, 2, 4, 4, 5, 5]  # every eval_every steps and the last step
    user_texts = {f"add {i} and {i + 1}" for i in range(12)}
    for k, sample in enumerate(samples):
        row = k % 2
        val_prompt = data.val.ids[row, : int(data.val.prompt_lengths[row])].tolist()
        assert sample["prompt"] == tokenizer.decode(val_prompt, cut=False, skip_special=False)
        assert sample["prompt"].startswith("<|im_start|>system") and sample["prompt"].endswith("assistant\n")
        assert any(f"user\n{u}<|im_end|>" in sample["prompt"] for u in user_texts)
        assert isinstance(sample["completion"], str)
    # 5 training forwards in train mode with gradients; per validation 1 loss forward + 6 decoding steps,
    # all in eval mode without gradients; the model is back in train mode afterwards
    assert modes.count((True, True)) == 5 and modes.count((False, False)) == 3 * (1 + 6)
    assert len(modes) == 5 + 21 and model.training

    # pretraining: the prompt is the first 32 tokens of a validation row (ids, as no tokenizer is given);
    # sampling on or off leaves the trained parameters bit-identical
    rows = cyclic_rows(16, 40)
    trained = {}
    for n_prompts in (0, 3):
        model = tiny_model()
        train(
            config(tmp_path, f"pre-{n_prompts}", seq_len=40, max_steps=4, eval_every=2, sample_prompts=n_prompts,
                   sample_tokens=5),
            model=model,
            data=TrainData(rows, rows),
        )
        trained[n_prompts] = params(model)
    assert all(torch.equal(trained[0][k], trained[3][k]) for k in trained[0])
    assert not (tmp_path / "pre-0" / "samples.jsonl").exists()
    samples = [json.loads(x) for x in (tmp_path / "pre-3" / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [2, 2, 2, 4, 4, 4]
    for k, sample in enumerate(samples):
        assert sample["prompt"] == rows.ids[k % 3, :32].tolist()
        assert len(sample["completion"]) == 5 and MASK not in sample["completion"]


# ----------------------------------------------------------------------------------------------------------
# AR -> diffusion adaptation from a Qwen2-format causal checkpoint


def write_qwen2_dir(directory: Path, tokenizer) -> DreamModel:
    """A tiny causal checkpoint as Qwen2 ships it: model_type qwen2, HF names, and no mask_token_id."""
    from unmask.checkpoint import save_model

    s = tokenizer.special
    model = DreamModel(
        ModelConfig.from_name(
            "test", vocab_size=tokenizer.vocab_size, mask_token_id=s.mask, pad_token_id=s.pad,
            eos_token_id=s.eos, bos_token_id=s.bos,
        )
    )
    model.init_weights(torch.Generator().manual_seed(4))
    save_model(model, directory, tokenizer=tokenizer)
    raw = json.loads((directory / "config.json").read_text())
    for key in ("auto_map", "mask_token_id", "pad_token_id"):
        raw.pop(key, None)
    raw.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"], use_sliding_window=False)
    (directory / "config.json").write_text(json.dumps(raw))
    return model


@pytest.mark.parametrize("block_size", [None, 8], ids=["full", "block-diffusion"])
def test_adapt_from_a_qwen2_checkpoint_end_to_end(tmp_path, tokenizer, block_size):
    import unmask
    from unmask.checkpoint import read_config

    ar_model = write_qwen2_dir(tmp_path / "qwen2", tokenizer)
    assert read_config(tmp_path / "qwen2")[1] == "qwen2"
    corpus = tmp_path / "corpus.jsonl"
    docs = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(40)]
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = TrainConfig(
        run_dir=str(tmp_path / "adapt"), data=str(corpus), init_from=str(tmp_path / "qwen2"), seq_len=32,
        batch_size=4, max_steps=6, adapt_from_ar=True, anneal_steps=4, eval_every=3, save_every=6,
        log_every=1, warmup_steps=1, lr=1e-3, progress=False, sample_prompts=1, sample_tokens=4,
        block_size=block_size,
    )
    train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "adapt" / "metrics.jsonl").read_text().splitlines()]
    # optimiser step k (0-based) trains with fraction k / anneal_steps, then full attention
    assert [x["anneal_fraction"] for x in lines] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert all(math.isfinite(x["loss"]) for x in lines)
    out = tmp_path / "adapt" / "checkpoint-0000006"
    raw = json.loads((out / "config.json").read_text())
    assert raw["model_type"] == "Dream" and raw["architectures"] == ["DreamModel"]
    assert raw["mask_token_id"] == tokenizer.special.mask and raw["pad_token_id"] == tokenizer.special.pad
    assert raw.get("block_size") == block_size  # absent for full attention: those files are unchanged
    loaded, loaded_tokenizer = unmask.load(out)
    assert loaded.config.block_size == block_size
    assert loaded.config.mask_token_id == tokenizer.special.mask
    assert loaded_tokenizer.special.mask == tokenizer.special.mask
    trained = load_file(str(out / "model.safetensors"))
    start = ar_model.state_dict()
    assert set(trained) == set(start) and any(not torch.equal(trained[k], start[k]) for k in start)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, trained[k])


def test_bench_model_flops_per_token_hand_value():
    from conftest import load_bench

    bench = load_bench("train")
    # test preset: h 32, ffn 64, 2 layers, 4 heads of 8, 2 kv heads (kv width 16), vocab 128
    attn = (32 * 32 + 32) + 2 * (32 * 16 + 16) + 32 * 32  # q (+bias), k/v (+bias), o
    block = attn + 3 * 32 * 64 + 2 * 32  # + SwiGLU + two norms
    n = 2 * block + 32 + 128 * 32  # blocks, final norm, lm_head (the embedding lookup is free)
    assert n == 22816
    config = ModelConfig.from_name("test")
    assert bench.model_flops_per_token(config, 64) == 6 * n + 12 * 2 * 32 * 64 == 186048
    assert bench.model_flops_per_token(config.replace(tie_word_embeddings=True), 64) == 186048
    assert bench.peak_flops("cpu") is None


def test_resume_from_an_old_format_checkpoint(tmp_path):
    """Checkpoints written before optimizer.pt existed kept the optimiser (keyed by parameter index) inside
    trainer_state.pt; such a run still resumes and lands exactly on the uninterrupted run."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    from unmask.checkpoint import load_model
    from unmask.runs import OPTIMIZER_FILE
    from unmask.runs import param_groups as _param_groups

    rows = cyclic_rows()
    straight = tiny_model()
    train(config(tmp_path, "straight", max_steps=4), model=straight, data=TrainData(rows, rows))
    train(config(tmp_path, "old", max_steps=4, stop_after_steps=2), model=tiny_model(), data=TrainData(rows, rows))
    ckpt = tmp_path / "old" / "checkpoint-0000002"
    model = load_model(ckpt, dtype="float32")
    optimizer = torch.optim.AdamW(_param_groups(model, 0.1), lr=1.0, foreach=False)
    named = torch.load(ckpt / OPTIMIZER_FILE, weights_only=True)
    assert set(named["state"]) == {n for n, _ in model.named_parameters()}
    set_optimizer_state_dict(model, optimizer, named)
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    state["optimizer"] = optimizer.state_dict()  # the old layout: integer keys
    assert set(state["optimizer"]["state"]) == set(range(len(named["state"])))
    torch.save(state, ckpt / "trainer_state.pt")
    (ckpt / OPTIMIZER_FILE).unlink()
    resumed = tiny_model(seed=3)
    train(config(tmp_path, "old", max_steps=4, resume=True), model=resumed, data=TrainData(rows, rows))
    a, b = params(straight), params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_new_fields_and_special_ids_fail_clearly():
    from unmask.tokenizer import SpecialIds
    from unmask.train import _with_special_ids

    with pytest.raises(ConfigError, match="distributed must be one of ddp, fsdp; got 'zero'"):
        TrainConfig(distributed="zero")
    with pytest.raises(ConfigError, match="sample_tokens must be a positive integer, got 0"):
        TrainConfig(sample_tokens=0)
    with pytest.raises(ConfigError, match="sample_prompts must be a non-negative integer, got -1"):
        TrainConfig(sample_prompts=-1)
    bare = ModelConfig.from_name("test")  # vocab 128, no special ids (as a Qwen2 config.json may be)
    filled = _with_special_ids(bare, SpecialIds(mask=127, pad=3, eos=2, bos=None), "q")
    assert (filled.mask_token_id, filled.pad_token_id, filled.eos_token_id, filled.bos_token_id) == (127, 3, 2, None)
    kept = _with_special_ids(bare.replace(eos_token_id=5), SpecialIds(mask=127, pad=3, eos=2), "q")
    assert kept.eos_token_id == 5  # ids the checkpoint states win over the tokenizer's
    with pytest.raises(ConfigError, match=r"q: its tokenizer's special ids do not fit the model \(mask_token_id=500"):
        _with_special_ids(bare, SpecialIds(mask=500, pad=0, eos=0), "q")


def test_sft_pads_with_the_pad_token_after_one_end_token(tmp_path):
    """Rows are [prompt][response][eos][<|dlm_pad|> ...]: one end token, then a pad distinct from it, and the
    checkpoint's config declares that pad (so the decoders stop at it)."""
    cfg = sft_config(tmp_path, max_steps=2, eval_every=2, val_fraction=0.2, chat=False, sample_prompts=0)
    model, tokenizer, data = prepare(cfg)
    special = tokenizer.special
    assert special.dlm_pad is not None and special.dlm_pad != special.eos
    assert model.config.pad_token_id == special.dlm_pad
    for row, p in zip(data.train.ids.tolist(), data.train.prompt_lengths.tolist()):
        tail = row[p:]
        assert tail.count(special.eos) == 1  # the response ends once
        end = tail.index(special.eos)
        assert set(tail[end + 1:]) == {special.dlm_pad} and special.dlm_pad not in tail[:end]
    result = train(cfg, model=model, tokenizer=tokenizer, data=data)
    record = result.history[-1]
    # logged beside the whole-row loss, and a different number (the pads are left out; value: by hand below)
    assert math.isfinite(record["val_response_loss"]) and record["val_response_loss"] != record["val_loss"]
    saved = json.loads((tmp_path / "sft" / "checkpoint-0000002" / "config.json").read_text())
    assert saved["pad_token_id"] == special.dlm_pad and saved["eos_token_id"] == special.eos


def test_response_loss_by_hand():
    """The response-only validation loss is the ELBO over maskable, non-pad positions, per such token."""
    from unmask.train import _ResponseLoss

    targets = torch.tensor([[9, 5, 6, 0, 4, 4], [9, 9, 7, 0, 4, 4]])
    maskable = torch.tensor([[False, True, True, True, True, True], [False, False, True, True, True, True]])
    masked = torch.tensor([[False, True, False, True, True, False], [False, False, True, False, True, True]])
    t = torch.tensor([0.5, 0.25])
    batch = Batch(targets, targets, masked, maskable, t, None, 1.0)
    logits = torch.randn(2, 6, 12, generator=torch.Generator().manual_seed(0))
    lp = token_logprobs(shift_logits(logits), targets)
    keep = maskable & (targets != 4)
    expected = sum(-float(lp[b, n]) / float(mask_probability(t[b]))
                   for b in range(2) for n in range(6) if masked[b, n] and keep[b, n]) / int(keep.sum())
    acc = _ResponseLoss()
    acc.add(logits, batch, pad_id=4, eps=1e-3)
    assert acc.value() == pytest.approx(expected, rel=1e-5)
