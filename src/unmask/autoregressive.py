"""The autoregressive baseline: the same transformer with causal attention, decoded left to right.

A causal model of a preset is exactly a Qwen2 model, so it is trained by ``unmask train --objective
autoregressive`` (next-token loss over the same shifted logits the diffusion loss uses: output ``i``
predicts token ``i + 1``) and saved in Qwen2 format (``model_type: qwen2``). It exists to measure what
diffusion decoding buys against the usual way of generating code: ``generate_ar`` decodes greedily (or by
sampling) one token per forward with a KV cache, stopping each row at its first stop token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from unmask.model import KVCache, positions_from_mask

__all__ = ["ARResult", "causal_attention", "generate_ar"]


def causal_attention(key_valid: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool SDPA mask for a left-padded batch (key_valid (B, T)): query ``i`` sees real keys
    ``j <= i`` and always itself, so pad queries stay finite."""
    _, length = key_valid.shape
    slots = torch.arange(length, device=key_valid.device)
    causal = slots[None, :] <= slots[:, None]  # (T, T) [query, key]
    own = torch.eye(length, dtype=torch.bool, device=key_valid.device)
    return (causal[None, None] & key_valid.bool()[:, None, None, :]) | own[None, None]


@dataclass
class ARResult:
    """generated (B, L): new tokens, pad after a row's first stop token; forward_passes: sequential model
    calls (prefill included); useful_tokens: tokens before each row's first stop token, summed over rows."""

    generated: torch.Tensor
    forward_passes: int
    useful_tokens: int


@torch.inference_mode()
def generate_ar(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                max_new_tokens: int, stop_ids: Sequence[int] = (), pad_id: int = 0, temperature: float = 0.0,
                top_p: float | None = None, top_k: int | None = None, generator: torch.Generator | None = None,
                use_cache: bool = True) -> ARResult:
    """Decode ``max_new_tokens`` tokens after left-padded prompts (B, P), one per forward.

    ``use_cache=False`` recomputes the whole causal forward at every step: the slow, obviously correct
    path that the cached one must match token for token. Tokens are drawn with the diffusion sampler's rule
    (``sample_tokens``: argmax at temperature 0, else temperature / top-p / top-k).
    """
    from unmask.decoding.sampling import sample_tokens  # not at module level: unmask.decoding imports us

    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty (batch, length) tensor, got {tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    batch, prompt_len = input_ids.shape
    device = input_ids.device
    valid = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
             else attention_mask.to(device).bool())
    total = prompt_len + max_new_tokens
    ids = torch.full((batch, total), pad_id, dtype=torch.long, device=device)
    ids[:, :prompt_len] = input_ids
    key_valid = torch.cat([valid, torch.ones(batch, max_new_tokens, dtype=torch.bool, device=device)], dim=1)
    positions = positions_from_mask(key_valid)  # (B, S): real tokens count 0, 1, 2…
    stops = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    cache = (KVCache.empty(model.config, batch, total, dtype=model.dtype, device=device) if use_cache else None)
    forwards = useful = 0
    for i in range(max_new_tokens):
        end = prompt_len + i  # slots [0, end) are filled; the token at slot ``end`` is predicted
        if cache is None:
            mask = causal_attention(key_valid[:, :end])
            logits = model(ids[:, :end], attention_mask=mask, position_ids=positions[:, :end])[:, -1]
        elif i == 0:  # prefill: the whole prompt, causally, into the cache
            mask = causal_attention(key_valid[:, :end])
            mask = torch.cat([mask, torch.zeros(batch, 1, end, total - end, dtype=torch.bool, device=device)], -1)
            logits = model(ids[:, :end], attention_mask=mask, position_ids=positions[:, :end], kv_cache=cache,
                           cache_position=0)[:, -1]
        else:  # one new token against the cached prefix; later slots are still empty
            mask = (key_valid & (torch.arange(total, device=device) < end))[:, None, None, :]
            logits = model(ids[:, end - 1:end], attention_mask=mask, position_ids=positions[:, end - 1:end],
                           kv_cache=cache, cache_position=end - 1)[:, -1]
        forwards += 1
        token = sample_tokens(logits, temperature=temperature, top_p=top_p, top_k=top_k, generator=generator)[0]
        token = torch.where(done, torch.full_like(token, pad_id), token)
        ids[:, end] = token
        is_stop = torch.isin(token, stops)
        useful += int((~done & ~is_stop).sum())
        done |= is_stop
        if bool(done.all()):
            break
    return ARResult(ids[:, prompt_len:], forwards, useful)
