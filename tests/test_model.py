"""The Dream model against an independent naive forward, padding, the shift, the KV-cache slot."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from conftest import make_model

from unmask.diffusion import shift_logits
from unmask.model import DreamModel, KVCache


def naive_forward(model: DreamModel, ids: torch.Tensor, positions: torch.Tensor | None = None,
                  key_valid: torch.Tensor | None = None, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """A deliberately plain re-implementation from the state dict: explicit head loops, explicit GQA
    head sharing, RoPE as rotation of (i, i + D/2) pairs by complex multiplication, softmax by hand.
    ``allowed`` (B, T, T) [query, key], optional: which keys each query may see besides the padding rule."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    c = model.config
    b, t = ids.shape
    d, nh, nkv = c.head_dim, c.num_attention_heads, c.num_key_value_heads
    positions = torch.arange(t).expand(b, t) if positions is None else positions
    key_valid = torch.ones(b, t, dtype=torch.bool) if key_valid is None else key_valid

    def rms(x, w):
        return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.rms_norm_eps)

    def rope(x):  # x (b, t, d)
        freqs = torch.tensor([c.rope_theta ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64)
        angle = positions[..., None].double() * freqs  # (b, t, d/2)
        z = torch.complex(x[..., : d // 2], x[..., d // 2:]) * torch.polar(torch.ones_like(angle), angle)
        return torch.cat([z.real, z.imag], dim=-1)

    x = sd["model.embed_tokens.weight"][ids]
    for layer in range(c.num_hidden_layers):
        p = f"model.layers.{layer}."
        h = rms(x, sd[p + "input_layernorm.weight"])
        q = h @ sd[p + "self_attn.q_proj.weight"].T + sd[p + "self_attn.q_proj.bias"]
        k = h @ sd[p + "self_attn.k_proj.weight"].T + sd[p + "self_attn.k_proj.bias"]
        v = h @ sd[p + "self_attn.v_proj.weight"].T + sd[p + "self_attn.v_proj.bias"]
        heads = []
        for head in range(nh):
            kv = head // (nh // nkv)
            qh, kh, vh = (rope(q[..., head * d:(head + 1) * d]), rope(k[..., kv * d:(kv + 1) * d]),
                          v[..., kv * d:(kv + 1) * d])
            scores = qh @ kh.transpose(-1, -2) / math.sqrt(d)  # (b, t, t)
            visible = key_valid[:, None, :] if allowed is None else key_valid[:, None, :] & allowed
            visible = visible | torch.eye(t, dtype=torch.bool)[None]
            scores = scores.masked_fill(~visible, float("-inf"))
            weights = torch.exp(scores - scores.amax(-1, keepdim=True))
            heads.append((weights / weights.sum(-1, keepdim=True)) @ vh)
        x = x + torch.cat(heads, -1) @ sd[p + "self_attn.o_proj.weight"].T
        h = rms(x, sd[p + "post_attention_layernorm.weight"])
        gate = h @ sd[p + "mlp.gate_proj.weight"].T
        x = x + (gate * torch.sigmoid(gate) * (h @ sd[p + "mlp.up_proj.weight"].T)) @ sd[p + "mlp.down_proj.weight"].T
    return rms(x, sd["model.norm.weight"]) @ sd["lm_head.weight"].T


def test_forward_matches_naive_reference():
    model = make_model(1)
    ids = torch.randint(0, 120, (2, 9), generator=torch.Generator().manual_seed(0))
    ours = model(ids).double()
    ref = naive_forward(model, ids)
    assert ours.shape == (2, 9, model.config.vocab_size)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_attention_is_bidirectional():
    # Changing the LAST token must change the logits at the FIRST position (a causal model would not).
    model = make_model(2)
    ids = torch.randint(0, 120, (1, 8), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 120
    assert not torch.allclose(model(ids)[0, 0], model(changed)[0, 0])


def test_left_padding_matches_each_row_alone_and_has_no_nan():
    model = make_model(3)
    gen = torch.Generator().manual_seed(2)
    rows = [torch.randint(1, 120, (n,), generator=gen) for n in (7, 4, 1)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    batched = model(ids, attention_mask=mask)
    assert not batched.isnan().any()
    for i, r in enumerate(rows):
        alone = model(r[None])
        torch.testing.assert_close(batched[i, width - len(r):], alone[0], atol=1e-5, rtol=1e-5)
    # and the naive reference agrees with the masked batch, positions from cumsum(mask) - 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ref = naive_forward(model, ids, positions, mask.bool())
    real = mask.bool()
    torch.testing.assert_close(batched.double()[real], ref[real], atol=1e-5, rtol=1e-5)


def test_rope_makes_attention_depend_only_on_relative_position():
    # All positions shifted by a constant: the bidirectional model's outputs must not change.
    model = make_model(4)
    ids = torch.randint(0, 120, (1, 6), generator=torch.Generator().manual_seed(3))
    base = model(ids, position_ids=torch.arange(6)[None])
    shifted = model(ids, position_ids=torch.arange(6)[None] + 37)
    torch.testing.assert_close(base, shifted, atol=1e-4, rtol=1e-4)
    # while permuting positions does change them (RoPE is really applied)
    assert not torch.allclose(base, model(ids, position_ids=torch.tensor([[5, 4, 3, 2, 1, 0]])), atol=1e-3)


def copy_model(vocab: int = 16) -> DreamModel:
    """Output at position i is (a scaled one-hot of) token i: attention and MLP contribute nothing."""
    model = make_model(0, vocab_size=vocab, hidden_size=vocab, intermediate_size=8, num_attention_heads=2,
                       num_key_value_heads=1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(vocab))
        for layer in model.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.copy_(10 * torch.eye(vocab))
    return model


def test_shift_convention_predicts_position_j_from_output_j_minus_1():
    model = copy_model()
    ids = torch.tensor([[3, 9, 4, 1, 7]])
    raw = model(ids)
    assert raw.argmax(-1).tolist() == [[3, 9, 4, 1, 7]]  # raw output i "copies" token i
    aligned = shift_logits(raw)
    # the prediction for position j comes from output j-1 (position 0 reuses output 0)
    assert aligned.argmax(-1).tolist() == [[3, 3, 9, 4, 1]]


def test_kv_cache_full_then_block_forward_equals_uncached():
    model = make_model(5)
    ids = torch.randint(0, 120, (2, 12), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0
    full = model(ids, attention_mask=mask)
    cache = KVCache.empty(model.config, 2, 12, dtype=torch.float32, device="cpu")
    filled = model(ids, attention_mask=mask, kv_cache=cache)
    torch.testing.assert_close(filled, full, atol=1e-6, rtol=1e-6)
    # Feeding only a block [5, 9) against the cache reproduces the full forward there exactly, since
    # nothing else changed (the cached K/V are the true ones).
    block = model(ids[:, 5:9], attention_mask=mask, kv_cache=cache, cache_position=5)
    torch.testing.assert_close(block, full[:, 5:9], atol=1e-6, rtol=1e-6)


def test_bf16_forward_is_close_to_fp32():
    model = make_model(6)
    ids = torch.randint(0, 120, (1, 10), generator=torch.Generator().manual_seed(5))
    ref = model(ids)
    out = model.to(torch.bfloat16)(ids)
    assert out.dtype == torch.bfloat16
    assert F.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0) > 0.99
