"""CUDA only (skipped without a GPU; ``bench/gpu.sh`` runs them as ``pytest -m cuda``): what runs differently
there. Other kernels: the model's fp32 logits match the CPU's, and every decoder and the AR baseline in fp32
make the CPU's decisions — where the CPU run shows every decision had a margin (tests/margins.py), so that
equality is a consequence, not luck. bf16: every decoder fills every mask, the same way twice. Training: the
bf16-autocast path, which ``unmask.train`` takes only on CUDA, learns."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MASK_ID, make_model
from margins import MARGIN, decode_with_margin, token_margins

from unmask.autoregressive import generate_ar
from unmask.config import DecoderConfig
from unmask.decoding import decode
from unmask.train import TrainConfig, TrainData, train
from unmask.training_data import TokenRows

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")
PROMPTS = [[5, 17, 33, 2, 90], [8, 3], [41, 7, 19, 60]]  # different lengths: left padding, masked attention
PARAMS = dict(max_new_tokens=16, steps=16, alg="entropy")  # with seed 8: every decision has a margin
DECODERS = {
    "reference": DecoderConfig(),
    "lossless": DecoderConfig(lossless=True),
    "blocks": DecoderConfig(decoder="blocks", block_length=4),
    "blocks+prefix": DecoderConfig(decoder="blocks", block_length=4, cache="prefix"),
    "parallel+dual": DecoderConfig(decoder="parallel", block_length=4, cache="dual"),
}


def padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def cpu_decode_with_margin(name: str):
    """(model, ids, mask, the CPU's fp32 decode): every decision of it at least MARGIN from flipping (asserted)."""
    model = make_model(8, sharpen=40.0)
    ids, mask = padded(PROMPTS)
    return model, ids, mask, decode_with_margin(model, ids, mask, decoder=DECODERS[name], **PARAMS)


def cpu_ar_with_margin():
    """(model, ids, mask, the CPU's greedy KV-cached generation): every token led its runner-up by MARGIN."""
    model = make_model(5, sharpen=20.0)
    ids, mask = padded(PROMPTS)
    used: list[torch.Tensor] = []  # the last-position logits each forward hands to the sampler
    hook = model.register_forward_hook(lambda module, args, out: used.append(out[:, -1]))
    try:
        expected = generate_ar(model, ids, mask, max_new_tokens=12)
    finally:
        hook.remove()
    assert min(float(token_margins(logits).min()) for logits in used) >= MARGIN
    return model, ids, mask, expected


def test_fp32_logits_match_the_cpu():
    model = make_model(0, sharpen=20.0)
    ids, mask = padded(PROMPTS)
    with torch.no_grad():
        cpu = model(ids, attention_mask=mask)
        gpu = model.to(CUDA)(ids.to(CUDA), attention_mask=mask.to(CUDA)).cpu()
    # cuBLAS fp32 (no TF32 by default) and the SDPA kernels reorder sums: equal to ~1e-6 of the logits' scale
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-4 * float(cpu.abs().max()))


@pytest.mark.parametrize("name", list(DECODERS))
def test_every_decoder_in_fp32_makes_the_cpus_decisions(name):
    model, ids, mask, expected = cpu_decode_with_margin(name)
    got = decode(model.to(CUDA), ids.to(CUDA), mask.to(CUDA), decoder=DECODERS[name], **PARAMS)
    assert got.sequences.cpu().tolist() == expected.sequences.tolist()
    if name != "lossless":  # its forwards count accepted drafts, guessed from stale logits without a margin
        assert got.stats.forward_passes == expected.stats.forward_passes


def test_ar_decoding_in_fp32_makes_the_cpus_decisions():
    model, ids, mask, expected = cpu_ar_with_margin()
    model = model.to(CUDA)
    for use_cache in (True, False):
        got = generate_ar(model, ids.to(CUDA), mask.to(CUDA), max_new_tokens=12, use_cache=use_cache)
        assert got.generated.cpu().tolist() == expected.generated.tolist()


@pytest.mark.parametrize("name", list(DECODERS))
def test_bf16_decoders_fill_every_mask_the_same_way_twice(name):
    model = make_model(8, sharpen=40.0).to(CUDA, torch.bfloat16)
    ids, mask = (t.to(CUDA) for t in padded(PROMPTS))
    runs = [decode(model, ids, mask, decoder=DECODERS[name], seed=3, **PARAMS) for _ in range(2)]
    assert not bool((runs[0].generated == MASK_ID).any())
    assert torch.equal(runs[0].sequences, runs[1].sequences)


def test_training_with_bf16_autocast_learns(tmp_path):
    vocab = 32
    model = make_model(0, vocab_size=vocab)  # mask id vocab - 1
    base = torch.arange(1, 17).repeat(3)[:32]  # rotations of 1..16: each token fixes its neighbours
    rows = TokenRows(torch.stack([torch.roll(base, -k) for k in range(16)]), torch.ones(16, dtype=torch.long))
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), seq_len=32, batch_size=8, max_steps=80, lr=3e-3,
                      warmup_steps=5, eval_every=80, save_every=80, log_every=1, progress=False, device="cuda")
    result = train(cfg, model=model, data=TrainData(rows, rows))
    first = sum(r["loss"] for r in result.history[:5]) / 5
    last = sum(r["loss"] for r in result.history[-10:]) / 10
    assert first > 0.9 * math.log(vocab)  # the CPU test's bounds (test_train.py), under bf16 autocast
    assert last < 0.65 * first and result.history[-1]["val_loss"] < 0.65 * math.log(vocab)
    assert (tmp_path / "run" / "checkpoint-0000080" / "model.safetensors").is_file()
