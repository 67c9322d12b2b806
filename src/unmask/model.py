"""The Dream-architecture transformer: a Qwen2 decoder stack with bidirectional attention.

One file that reads top to bottom: RoPE and masks (pure functions), then the modules (RMSNorm, attention,
MLP, block), then ``DreamModel``. Parameter names follow Hugging Face's Dream checkpoints exactly
(``model.layers.{i}.self_attn.q_proj.weight`` …, ``lm_head.weight``), so ``state_dict()`` *is* the
checkpoint format and no key mapping is needed for the Dream family.

Conventions (docs/model.md):
- ``forward`` returns the RAW logits (B, T, V), exactly as Dream's HF model: output ``i`` predicts token
  ``i + 1`` (the *shift* inherited from the AR model it was adapted from). Consumers re-align with
  ``unmask.diffusion.shift_logits`` — the one place that convention is applied.
- Attention is bidirectional (no causal mask). A 2-D ``attention_mask`` (B, S) marks real tokens (1) and
  left padding (0); real queries never see pads, and each pad query attends to itself only so it cannot
  produce NaN. Position ids default to ``cumsum(mask) - 1`` (clamped at 0 for pads).
- Block diffusion (``config.block_size`` set, docs/model.md "Block diffusion"): attention is block-causal —
  a query sees every key whose block index is at most its own (``block_causal_mask``). Blocks are counted
  from a per-row *block origin* (``forward(block_origin=)``, a canvas column: the start of the generated
  region); every column before it is one bidirectional prefix block. With ``block_size`` None nothing of
  this runs and attention is exactly the full bidirectional one.
- ``kv_cache`` is a small explicit object (``KVCache``): when given, the fresh keys/values of the fed
  tokens are written into the cache at ``cache_position`` and attention runs over the whole cache. A full
  forward with an empty cache fills it; later forwards can feed a slice (a block) against cached context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unmask.config import ModelConfig

# ----------------------------------------------------------------------------------------------------------
# Pure helpers


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for integer positions (B, T) -> cos, sin of shape (B, 1, T, head_dim).

    Computed in float32 (as Qwen2 does) and cast afterwards, so bf16 models keep accurate angles. Not
    stored in checkpoints: they are a function of the config.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device,
                                             dtype=torch.float32) / head_dim))  # (D/2,)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (B, T, D/2)
    emb = torch.cat([angles, angles], dim=-1)  # (B, T, D): the half-split (non-interleaved) layout
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) by the tables; the second half of D pairs with the first half."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids (B, T) for a left-padded batch: real tokens count 0, 1, 2…; pads get 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def padding_attention_mask(key_valid: torch.Tensor, query_start: int = 0, num_queries: int | None = None
                           ) -> torch.Tensor | None:
    """Boolean SDPA mask (B, 1, Tq, S) from a key-validity mask (B, S); None when nothing is padded.

    Query ``j`` sits at canvas slot ``query_start + j``. It may attend to every real key, and always to its
    own slot, so pad queries (whose keys are all masked otherwise) stay finite.
    """
    key_valid = key_valid.bool()
    if bool(key_valid.all()):
        return None  # full bidirectional attention: lets SDPA take its fastest path
    batch, length = key_valid.shape
    num_queries = length - query_start if num_queries is None else num_queries
    slots = torch.arange(query_start, query_start + num_queries, device=key_valid.device)
    own = slots[:, None] == torch.arange(length, device=key_valid.device)[None, :]  # (Tq, S)
    return (key_valid[:, None, None, :] | own[None, None]).contiguous()


def block_ids(length: int, block_size: int, origin: torch.Tensor | int, device: torch.device | str | None = None
              ) -> torch.Tensor:
    """Block index of every canvas column, (B, S) for a (B,) ``origin`` ((1, S) for an int): 0 for the prefix
    before the row's origin, then ``1 + (column - origin) // block_size``.

    Counting from an origin (the start of the generated region) rather than from column 0 keeps the prompt
    one bidirectional block whatever its length, and in a left-padded batch (every prompt ends at the same
    column) puts every row's blocks at the same columns.
    """
    origin = torch.as_tensor(origin, device=device).long().reshape(-1, 1)  # (B, 1)
    columns = torch.arange(length, device=origin.device)[None, :]  # (1, S)
    after = torch.div(columns - origin, block_size, rounding_mode="floor") + 1
    return torch.where(columns < origin, torch.zeros_like(after), after)


def block_causal_mask(blocks: torch.Tensor, key_valid: torch.Tensor | None = None, query_start: int = 0,
                      num_queries: int | None = None) -> torch.Tensor:
    """Boolean SDPA mask (B, 1, Tq, S) of block-causal attention from the block index of every slot (B, S).

    Query ``j`` sits at slot ``query_start + j``: it sees the real keys (``key_valid``, default all) whose
    block is at most its own — its own block both ways, earlier blocks whole, later blocks not at all — and
    always its own slot, so a pad query stays finite.
    """
    length = blocks.shape[1]
    num_queries = length - query_start if num_queries is None else num_queries
    slots = torch.arange(query_start, query_start + num_queries, device=blocks.device)  # (Tq,)
    allowed = blocks[:, None, :] <= blocks[:, slots, None]  # (B, Tq, S): key block <= query block
    if key_valid is not None:
        allowed = allowed & key_valid.bool()[:, None, :]
    own = slots[:, None] == torch.arange(length, device=blocks.device)[None, :]  # (Tq, S)
    return (allowed | own[None])[:, None].contiguous()


@dataclass
class KVCache:
    """Per-layer keys and values for a whole canvas: lists of (B, H_kv, S, D) tensors.

    Explicit and dumb on purpose: the model writes fresh K/V into ``[start, start + T)`` and reads all
    ``S`` slots. Which slots are stale, and when to refresh them, is the decoder's business.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, length: int, *, dtype: torch.dtype,
              device: torch.device | str) -> KVCache:
        shape = (batch, config.num_key_value_heads, length, config.head_dim)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)])

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]


# ----------------------------------------------------------------------------------------------------------
# Modules


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 and cast back before the gain, as Qwen2 does (matters in bf16).
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, d
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=True)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=True)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=True)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                cache: tuple[torch.Tensor, torch.Tensor] | None, cache_position: int) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            cache_k, cache_v = cache
            cache_k[:, :, cache_position:cache_position + t] = k
            cache_v[:, :, cache_position:cache_position + t] = v
            k, v = cache_k, cache_v  # (B, Hkv, S, D)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False,
                                             enable_gqa=self.num_kv_heads != self.num_heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, cache, cache_position):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, cache_position)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Named ``model`` inside DreamModel so parameter names match the HF checkpoints."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DreamModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.gradient_checkpointing = False
        self.family = "dream"  # checkpoint format on save; "qwen2" for a causal model (the AR baseline)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """All initialisation in one place: N(0, initializer_range) matrices, zero biases, unit norms."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std, generator=generator)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)

    @property
    def causal(self) -> bool:
        """A Qwen2-format checkpoint (the autoregressive baseline): decoded left to right, never denoised."""
        return self.family == "qwen2"

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                cache_position: int = 0, block_origin: torch.Tensor | int | None = None) -> torch.Tensor:
        """Raw logits (B, T, V) for ``input_ids`` (B, T).

        attention_mask: None (all real), a (B, S) 0/1 padding mask over the whole canvas (S = T, or the
            cache length when a cache is used), or a ready boolean (B, 1, T, S) mask (True = may attend),
            e.g. for causal-to-full annealing in training.
        position_ids: (B, T); default ``cumsum(attention_mask) - 1`` over the canvas, or ``arange``.
        kv_cache / cache_position: write this call's K/V into cache slots [cache_position, +T) and attend
            over all cache slots.
        block_origin: block-diffusion models only: the canvas column (int, or (B,) per row) where blocks start
            (default 0); ignored with a 4-D ``attention_mask``, which is then the whole truth.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        b, t = input_ids.shape
        total = kv_cache.length if kv_cache is not None else t
        if kv_cache is not None and not (0 <= cache_position and cache_position + t <= total):
            raise ValueError(f"cache slots [{cache_position}, {cache_position + t}) exceed the cache length {total}")
        if block_origin is not None and self.config.block_size is None:
            raise ValueError("block_origin is for block-diffusion models; this model's config has no block_size")
        mask: torch.Tensor | None
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = attention_mask.bool()
        elif attention_mask is not None:
            if attention_mask.shape != (b, total):
                raise ValueError(f"attention_mask must have shape {(b, total)}, got {tuple(attention_mask.shape)}")
            mask = padding_attention_mask(attention_mask, cache_position, t)
            if position_ids is None:
                position_ids = positions_from_mask(attention_mask)[:, cache_position:cache_position + t]
        else:
            mask = None
        if self.config.block_size is not None and (attention_mask is None or attention_mask.dim() == 2):
            blocks = block_ids(total, self.config.block_size, 0 if block_origin is None else block_origin,
                               input_ids.device).expand(b, total)  # (B, S)
            mask = block_causal_mask(blocks, attention_mask, cache_position, t)
        if position_ids is None:
            position_ids = torch.arange(cache_position, cache_position + t, device=input_ids.device).expand(b, t)

        x = self.model.embed_tokens(input_ids)  # (B, T, H)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        for i, layer in enumerate(self.model.layers):
            cache = (kv_cache.keys[i], kv_cache.values[i]) if kv_cache is not None else None
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, cache, cache_position,
                                                      use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, cache_position)
        return self.lm_head(self.model.norm(x))
