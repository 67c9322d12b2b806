"""The shipped block-diffusion model (models/unmask-small-block8, reports/hybrid.md): a block model that loads,
decodes over its exact cache to the same canvas as an uncached block-causal decode, carries today's remote code,
and whose card states what is on disk."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import unmask
from unmask.config import DecoderConfig

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "unmask-small-block8"


def test_it_is_a_small_block_model_with_the_default_models_tokenizer():
    size = sum(f.stat().st_size for f in MODEL.iterdir() if f.is_file())
    assert size < 50e6, f"{MODEL} is {size / 1e6:.1f} MB"
    raw = json.loads((MODEL / "config.json").read_text())
    assert raw["block_size"] == 8 and raw["torch_dtype"] == "bfloat16"
    assert (MODEL / "tokenizer.json").read_bytes() == (ROOT / "models" / "unmask-small" / "tokenizer.json").read_bytes()
    model, _ = unmask.load(MODEL)
    assert model.config.block_size == 8
    assert model.decoder_defaults == DecoderConfig(decoder="blocks", block_length=8, early_stop=True)


@torch.inference_mode()
def test_cached_decode_equals_an_uncached_block_causal_decode():
    # the naive reference: every step one full block-causal forward of the canvas so far, the most confident
    # (lowest-entropy) mask of the current block committed greedily, no cache
    model, tok = unmask.load(MODEL)
    prompt = (ROOT / "examples" / "heldout_prompt.py").read_text()
    ids = torch.tensor([tok.encode(prompt)])
    cached = unmask.generate(model, ids, max_new_tokens=16, steps=16, decoder=DecoderConfig(decoder="blocks",
                                                                                            block_length=8))
    x = torch.cat([ids, torch.full((1, 16), model.config.mask_token_id)], dim=1)
    start = ids.shape[1]
    for b0 in (start, start + 8):
        for _ in range(8):
            logits = model(x[:, :b0 + 8], block_origin=start)[0, b0 - 1:b0 + 7].float()  # output j-1 predicts j
            logits[:, model.config.mask_token_id] = float("-inf")
            logp = logits.log_softmax(-1)
            entropy = -(logp.exp() * logp).nan_to_num().sum(-1)
            entropy[x[0, b0:b0 + 8] != model.config.mask_token_id] = float("inf")
            j = int(entropy.argmin())
            x[0, b0 + j] = int(logits[j].argmax())
    assert torch.equal(cached.sequences, x)


def test_it_carries_the_current_remote_code_and_its_card_states_it():
    from unmask.hf import REMOTE_CODE_FILES

    for name in REMOTE_CODE_FILES:
        assert (MODEL / name).read_bytes() == (ROOT / "src" / "unmask" / "hf" / name).read_bytes(), f"{name} is stale"
    card = (MODEL / "README.md").read_text()
    params = unmask.load(MODEL)[0].config.num_parameters()
    assert f"{params / 1e6:.2f}M-parameter block-diffusion language model" in card
    assert "blocks of 8 tokens" in card and "bash recipes/hybrid.sh" in card
    assert "| synthetic (seed 0) | 200 | 1 | 0.920 |" in card
