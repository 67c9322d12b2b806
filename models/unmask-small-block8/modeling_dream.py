"""``DreamModel``: a Dream-architecture masked diffusion LM as a ``transformers`` model.

Remote code written for unmask and copied next to the weights of every Dream directory it saves, so that
``AutoModel.from_pretrained(directory, trust_remote_code=True)`` loads it where unmask is not installed, and
gives the logits of unmask's own ``unmask.model.DreamModel`` on the same weights. It imports torch and
transformers only, and computes everything itself (RoPE, attention masks, GQA) rather than through
transformers' shared layers, whose internals changed between 4.46 and 5.x (the RoPE init table, attention
dispatch, cache classes). Sampling, ``model.diffusion_generate``, is in generation_dream.py.

The network (unmask docs/model.md): a Qwen2 decoder stack with **bidirectional** attention (or, with
``config.block_size``, block-causal attention: causal across blocks, bidirectional inside one) — per block
RMSNorm → attention (q/k/v with bias, o without, grouped-query, RoPE with the half-split layout computed in
float32) → residual → RMSNorm → SwiGLU MLP → residual; a final RMSNorm and an untied ``lm_head``.

Conventions, as in unmask:
- ``forward`` returns the RAW logits (B, T, V): output ``i`` predicts token ``i + 1``, the shift Dream kept
  from the autoregressive model it was adapted from. ``diffusion_generate`` re-aligns them.
- ``attention_mask``: None (every token real); a 0/1 padding mask (B, T) for left-padded batches — real
  queries never see pads, each pad query sees only itself (so it stays finite), and position ids count real
  tokens (``cumsum - 1``, 0 for pads); or a ready 4-D mask (B, 1, T, T): bool (True = may attend) or
  float (added to the attention scores, transformers' convention).

Not implemented: a KV cache (``past_key_values``), attention weights as output, a training loss (``labels``)
and gradient checkpointing; the first three are refused with an error rather than ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_dream import DreamConfig
from .generation_dream import DiffusionGenerationMixin, quiet_generation_config_checks, read_generation_config

# torch >= 2.5 repeats key/value heads inside SDPA; older versions need it done by hand.
_SDPA_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)
_TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5

# ----------------------------------------------------------------------------------------------------------
# Pure helpers


def rotary_tables(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, 1, T, head_dim) for integer positions (B, T).

    Angles are computed in float32 and cast afterwards, so bf16 models keep accurate angles. A function of
    the config: never stored in the checkpoint.
    """
    exponents = torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim
    frequencies = 1.0 / theta ** exponents  # (D/2,)
    angles = position_ids.to(torch.float32)[..., None] * frequencies  # (B, T, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (B, T, D): dimension j pairs with j + D/2
    return angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to (B, H, T, D): each first-half dimension turns with its second-half partner."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


def padding_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids (B, T) of a left-padded batch: 0, 1, 2, … over the real tokens, 0 on pads."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def padding_mask_4d(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """Bool SDPA mask (B, 1, T, T) from a 0/1 padding mask (B, T); None when nothing is padded.

    Every query sees every real key, and its own slot: a pad query would otherwise see no key at all and give
    NaN, which then spreads through the residual stream of later layers.
    """
    real = attention_mask.bool()
    if bool(real.all()):
        return None  # full bidirectional attention lets SDPA take its fastest path
    length = real.shape[-1]
    own = torch.eye(length, dtype=torch.bool, device=real.device)  # (T, T)
    return (real[:, None, None, :] | own[None, None]).contiguous()


def block_index(length: int, block_size: int, origin, device: torch.device) -> torch.Tensor:
    """Block of every column (B or 1, T): 0 before the row's ``block_origin`` (one bidirectional prefix block,
    the prompt), then 1, 2, … for each ``block_size`` columns from the origin on."""
    origin = torch.as_tensor(origin, device=device).long().reshape(-1, 1)  # (B, 1)
    columns = torch.arange(length, device=device)[None, :]
    index = torch.div(columns - origin, block_size, rounding_mode="floor") + 1
    return index.masked_fill(columns < origin, 0)


def block_causal_mask_4d(blocks: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Bool SDPA mask (B, 1, T, T): a query sees the real keys of its own block and of every earlier block, and
    always its own slot (a pad query then stays finite)."""
    visible = blocks[:, None, :] <= blocks[:, :, None]  # (B, Tq, Tk)
    if attention_mask is not None:
        visible = visible & attention_mask.bool()[:, None, :]
    own = torch.eye(blocks.shape[1], dtype=torch.bool, device=blocks.device)[None]
    return (visible | own)[:, None].contiguous()


# ----------------------------------------------------------------------------------------------------------
# Modules (names match Dream's checkpoint tensors: model.layers.{i}.self_attn.q_proj.weight, …)


class DreamRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalised in float32 and cast back before the gain: in bf16 the mean of squares is too coarse.
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class DreamAttention(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None
                ) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        grouped = self.num_kv_heads != self.num_heads
        if grouped and _SDPA_GQA:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        else:
            if grouped:  # each key/value head serves num_heads / num_kv_heads consecutive query heads
                k = k.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
                v = v.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim))


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamBlock(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.input_layernorm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DreamAttention(config)
        self.post_attention_layernorm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DreamMLP(config)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class DreamBackbone(nn.Module):
    """The stack without the head; ``DreamModel.model``, so tensor names match the checkpoints."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DreamBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = DreamRMSNorm(config.hidden_size, config.rms_norm_eps)


# ----------------------------------------------------------------------------------------------------------
# The model


class DreamPreTrainedModel(PreTrainedModel):
    config_class = DreamConfig
    base_model_prefix = "model"
    _no_split_modules = ["DreamBlock"]  # device_map="auto" keeps each block (its residual) on one device
    _supports_sdpa = True
    supports_gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        """unmask's initialisation: N(0, initializer_range) matrices, zero biases, unit norms.

        transformers calls this only for tensors a checkpoint did not provide.
        """
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, DreamRMSNorm):
            nn.init.ones_(module.weight)


class DreamModel(DreamPreTrainedModel, DiffusionGenerationMixin):
    # The name of the tied head: a {target: source} dict on transformers 5, a list of targets before.
    _tied_weights_keys = ({"lm_head.weight": "model.embed_tokens.weight"} if _TRANSFORMERS_5
                          else ["lm_head.weight"])

    def __init__(self, config: DreamConfig) -> None:
        super().__init__(config)
        self.model = DreamBackbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        with quiet_generation_config_checks():  # 4.x reads generation_config.json in here
            model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if getattr(model.generation_config, "steps", None) is None and kwargs.get("generation_config") is None:
            generation_config = read_generation_config(pretrained_model_name_or_path, kwargs)
            if generation_config is not None:
                model.generation_config = generation_config  # diffusion_generate's defaults
        return model

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values=None,
                inputs_embeds: torch.FloatTensor | None = None, labels=None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, block_origin=None) -> MaskedLMOutput | tuple:
        """Raw logits (B, T, V) of ``input_ids`` (B, T) (or of ``inputs_embeds`` (B, T, hidden)).

        attention_mask: see the module docstring. position_ids (B, T): default ``cumsum(mask) - 1`` with a
        padding mask, else ``arange(T)``. ``use_cache`` is accepted and has no effect (there is no cache).
        block_origin: block-diffusion models only (``config.block_size``): the column (int, or one per row) where
        the blocks start, default 0; the columns before it (the prompt) form one bidirectional block.
        """
        if past_key_values is not None:
            raise NotImplementedError("this model has no KV cache: call it on the whole canvas")
        if labels is not None:
            raise NotImplementedError("no training loss here: masked-diffusion training needs its own noising "
                                      "and weighting (train with unmask)")
        if output_attentions:
            raise NotImplementedError("attention weights are not returned (attention runs in SDPA)")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H)
        batch, length = x.shape[:2]

        mask = None
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = attention_mask if attention_mask.is_floating_point() else attention_mask.bool()
            mask = mask.to(x.dtype) if mask.is_floating_point() else mask  # SDPA wants the query's dtype
        elif attention_mask is not None:
            if tuple(attention_mask.shape) != (batch, length):
                raise ValueError(f"attention_mask must have shape {(batch, length)} or be 4-D, got "
                                 f"{tuple(attention_mask.shape)}")
            mask = padding_mask_4d(attention_mask)
            if position_ids is None:
                position_ids = padding_positions(attention_mask)
        block_size = getattr(self.config, "block_size", None)
        if block_origin is not None and block_size is None:
            raise ValueError("block_origin is for block-diffusion models; this config has no block_size")
        if block_size is not None and (attention_mask is None or attention_mask.dim() == 2):
            blocks = block_index(length, block_size, 0 if block_origin is None else block_origin, x.device)
            mask = block_causal_mask_4d(blocks.expand(batch, length), attention_mask)
        if position_ids is None:
            position_ids = torch.arange(length, device=x.device).expand(batch, length)

        cos, sin = rotary_tables(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        hidden_states = []
        for layer in self.model.layers:
            hidden_states.append(x)
            x = layer(x, cos, sin, mask)
        x = self.model.norm(x)
        hidden_states.append(x)  # transformers' convention: the last entry is after the final norm
        logits = self.lm_head(x)

        hidden = tuple(hidden_states) if output_hidden_states else None
        if not (return_dict if return_dict is not None else self.config.return_dict):
            return (logits,) + ((hidden,) if hidden is not None else ())
        return MaskedLMOutput(logits=logits, hidden_states=hidden)
