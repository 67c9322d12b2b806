"""``DreamConfig``: the config.json of a Dream-architecture masked diffusion LM, for ``transformers``.

Remote code written for unmask and copied next to the weights of every Dream directory it saves, so that
``AutoConfig.from_pretrained(directory, trust_remote_code=True)`` works where unmask is not installed. It
imports transformers only. The fields are those unmask writes (``unmask.checkpoint.config_to_hf``): the Qwen2
size fields, ``mask_token_id`` and the special ids (and ``block_size`` for a block-diffusion model), under
the names Dream's checkpoints use, so configs of Dream-7B / DiffuCoder-7B read the same way. Defaults are the
7B sizes.

Features the model does not implement (a RoPE scaling, sliding-window attention, another activation) are
refused here with a ValueError rather than ignored: ignoring them would give wrong logits silently.
See the unmask docs, docs/remote_code.md.
"""

from __future__ import annotations

from transformers import PretrainedConfig


class DreamConfig(PretrainedConfig):
    model_type = "Dream"

    def __init__(self, vocab_size: int = 152064, hidden_size: int = 3584, intermediate_size: int = 18944,
                 num_hidden_layers: int = 28, num_attention_heads: int = 28, num_key_value_heads: int | None = 4,
                 head_dim: int | None = None, hidden_act: str = "silu", max_position_embeddings: int = 131072,
                 initializer_range: float = 0.02, rms_norm_eps: float = 1e-6, use_cache: bool = False,
                 tie_word_embeddings: bool = False, rope_theta: float = 1_000_000.0, rope_scaling=None,
                 use_sliding_window: bool = False, sliding_window: int | None = None,
                 max_window_layers: int | None = None, attention_dropout: float = 0.0,
                 mask_token_id: int | None = 151666, pad_token_id: int | None = 151643,
                 bos_token_id: int | None = 151643, eos_token_id: int | list[int] | None = 151643,
                 block_size: int | None = None, **kwargs):
        if hidden_act != "silu":
            raise ValueError(f"hidden_act {hidden_act!r} is not supported (the model uses silu)")
        if rope_scaling:
            raise ValueError(f"rope_scaling {rope_scaling!r} is not supported (plain RoPE only)")
        if use_sliding_window:
            raise ValueError("sliding-window attention is not supported")
        if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int)
                                       or block_size < 1):
            raise ValueError(f"block_size must be a positive integer or None, got {block_size!r}")
        num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        if hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads:
            raise ValueError(f"hidden_size {hidden_size}, num_attention_heads {num_attention_heads} and "
                             f"num_key_value_heads {num_key_value_heads} must divide one another")
        if head_dim is not None and head_dim * num_attention_heads != hidden_size:
            raise ValueError(f"head_dim {head_dim} != hidden_size / num_attention_heads")
        # The base class is handed only what is left over: across transformers versions it pops or defaults
        # some of these names itself (4.x defaults tie_word_embeddings to True and the ids to None; 5.x drops
        # use_cache as a generation flag), so ours are set after it, where nothing overrides them.
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.tie_word_embeddings = tie_word_embeddings
        self.rope_theta = rope_theta
        self.use_sliding_window = use_sliding_window
        self.sliding_window = sliding_window
        self.max_window_layers = num_hidden_layers if max_window_layers is None else max_window_layers
        self.attention_dropout = attention_dropout
        self.mask_token_id = mask_token_id
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        # Block diffusion (unmask docs/model.md): attention causal across blocks of this size, counted from the
        # forward's block_origin; None = full bidirectional attention.
        self.block_size = block_size
