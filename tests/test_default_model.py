"""The shipped default model (models/unmask-small): loads in the HF layout, stays small, and its card
matches what is on disk."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import unmask
from unmask.config import DecoderConfig
from unmask.modelcard import render_model_card

MODEL = Path(__file__).resolve().parents[1] / "models" / "unmask-small"


def test_shipped_model_is_small_and_loads_with_dream_special_tokens():
    size = sum(f.stat().st_size for f in MODEL.iterdir() if f.is_file())
    assert size < 50e6, f"{MODEL} is {size / 1e6:.1f} MB; the default model must stay well under 50 MB"
    raw = json.loads((MODEL / "config.json").read_text())
    assert raw["model_type"] == "Dream" and raw["torch_dtype"] == "bfloat16"
    model, tok = unmask.load(MODEL)
    assert next(model.parameters()).dtype == torch.float32  # computed in float32 on CPU
    special = tok.special
    assert model.config.mask_token_id == special.mask and model.config.eos_token_id == special.eos
    assert {special.im_start, special.im_end, special.dlm_pad} <= set(range(model.config.vocab_size))
    # the recommended sampler settings ship as generation_config.json defaults
    defaults = model.generation_defaults
    assert (defaults.max_new_tokens, defaults.steps, defaults.alg) == (64, 64, "entropy")


def test_shipped_model_denoises_a_prompt_deterministically():
    model, tok = unmask.load(MODEL)
    prompt = (Path(__file__).resolve().parents[1] / "examples" / "heldout_prompt.py").read_text()
    ids = torch.tensor([tok.encode(prompt)])
    reference = DecoderConfig()  # Dream's sampler, one forward per step (the model recommends blocks + early stop)
    a = unmask.generate(model, ids, max_new_tokens=16, steps=16, seed=0, decoder=reference)
    b = unmask.generate(model, ids, max_new_tokens=16, steps=16, seed=0, decoder=reference)
    assert torch.equal(a.sequences, b.sequences)
    assert (a.generated != model.config.mask_token_id).all()  # every mask filled
    assert a.stats.forward_passes == 16
    # the recommended decoder (generation_config.json) writes the code first and stops at its end token
    recommended = unmask.generate(model, ids, seed=0)
    assert model.decoder_defaults.decoder == "blocks" and model.decoder_defaults.early_stop
    assert recommended.stats.forward_passes < model.generation_defaults.steps


def test_model_card_states_the_model_on_disk():
    card = (MODEL / "README.md").read_text()
    params = unmask.load(MODEL)[0].config.num_parameters()
    assert f"{params / 1e6:.2f}M-parameter" in card
    assert "bash recipes/diffucoder-mini.sh" in card and "| synthetic (seed 0) | 200 |" in card
    # The card is a pure function of files: re-rendering its header from the model directory agrees, all but the
    # intro paragraph (how it was trained, from-scratch or adapted from AR, comes from run directories not on disk).
    head = render_model_card(MODEL, pretrain=None, sft=None, evals=[], command="bash recipes/diffucoder-mini.sh")

    def without_intro(text: str) -> list[str]:
        return [line for line in text.split("## Training")[0].splitlines() if not line.startswith("A ")]

    assert without_intro(card) == without_intro(head) and len(without_intro(head)) >= 10


def test_shipped_model_carries_the_current_remote_code():
    # what transformers runs for the shipped directory must be the remote code unmask writes today
    from unmask.hf import REMOTE_CODE_FILES

    source = Path(__file__).resolve().parents[1] / "src" / "unmask" / "hf"
    for name in REMOTE_CODE_FILES:
        assert (MODEL / name).read_bytes() == (source / name).read_bytes(), f"models/unmask-small/{name} is stale"
