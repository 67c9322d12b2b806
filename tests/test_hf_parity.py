"""Parity with Hugging Face's own Qwen2 implementation on a directory saved by unmask.

Dream's HF code is Qwen2's with bidirectional attention, so loading our files into transformers'
Qwen2ForCausalLM (model_type switched to qwen2) checks the tensor names, config fields and the math
(RoPE layout, RMSNorm, q/k/v biases, GQA) against an implementation we did not write.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model

from unmask.checkpoint import save_model

transformers = pytest.importorskip("transformers")


def test_saved_directory_loads_in_transformers_qwen2_with_identical_logits(tmp_path):
    model = make_model(3)
    save_model(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    config.pop("auto_map")
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    hf = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32,
                                                       attn_implementation="eager").eval()
    ids = torch.randint(0, 120, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        causal = torch.tril(torch.ones(9, 9, dtype=torch.bool))[None, None].expand(2, 1, 9, 9)
        torch.testing.assert_close(model(ids, attention_mask=causal), hf(ids).logits, atol=1e-5, rtol=1e-5)
        # an all-zero additive 4-D mask makes HF's attention bidirectional, as in Dream
        bidirectional = hf(ids, attention_mask=torch.zeros(2, 1, 9, 9)).logits
        torch.testing.assert_close(model(ids), bidirectional, atol=1e-5, rtol=1e-5)
