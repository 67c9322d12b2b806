"""Roofline projection: how fast a forward, and a whole decode, would run on a GPU this project has not measured.

A forward moves its bytes (weights, the K/V it reads and writes) through memory and does its FLOPs on the
tensor cores; on a roofline it takes whichever is longer. At batch 1-8 a decode forward is memory-bound, so a
32-token block costs about what one token costs: that is the case for diffusion decoders that commit several
tokens per forward, and these functions put numbers on it. They are projections from a formula, not
measurements; `bench/project_gpu.py` prints them next to the formula.

Costs (B batch rows, T query tokens, S cached key/value tokens, L layers, h hidden size, V vocabulary):

    bytes = params * p + 2 * L * (S + T) * kv_heads * head_dim * p * B      p = bytes per parameter / value
    FLOPs = 2 * params_non_embedding * B * T + 4 * L * B * T * (S + T) * h + 2 * B * T * h * V
    time  = max(bytes / bandwidth, FLOPs / peak FLOP/s)

The K/V term is the cache read (S tokens) plus the K/V written for the T new tokens; the attention FLOPs are
QK^T and AV over all S + T keys; params_non_embedding leaves out the embedding and the LM head, whose matmul is
the last term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from unmask.config import ModelConfig
from unmask.errors import ConfigError

FORMULA = ("time = max(bytes / bandwidth, FLOPs / peak); "
           "bytes = params*p + 2*L*(S+T)*kv_heads*head_dim*p*B; "
           "FLOPs = 2*params_non_embedding*B*T + 4*L*B*T*(S+T)*hidden + 2*B*T*hidden*vocab "
           "(B batch, T query tokens, S cached tokens, L layers, p bytes per value)")


@dataclass(frozen=True)
class GPU:
    name: str
    bandwidth: float  # bytes/s of HBM
    flops: float  # peak dense FLOP/s in the projection's dtype


# The vendors' datasheet figures: NVIDIA H100 SXM5 (HBM3 3.35 TB/s, bf16 dense 989 TFLOP/s), H200 SXM
# (HBM3e 4.8 TB/s, same compute as H100), A100 80GB SXM (HBM2e 2.0 TB/s, bf16 dense 312 TFLOP/s). Peak
# figures: real kernels reach a fraction of them, so projections are upper bounds on speed.
GPUS: dict[str, GPU] = {
    "h100": GPU("NVIDIA H100 SXM", 3.35e12, 989e12),
    "h200": GPU("NVIDIA H200", 4.8e12, 989e12),
    "a100": GPU("NVIDIA A100 80GB SXM", 2.0e12, 312e12),
}

DTYPE_BYTES = {"bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp32": 4, "float32": 4, "fp8": 1}


def gpu(name: str | None = None, *, bandwidth: float | None = None, flops: float | None = None) -> GPU:
    """A preset by name, with ``bandwidth`` / ``flops`` overriding its figures, or a custom GPU from both."""
    if name is None:
        if bandwidth is None or flops is None:
            raise ConfigError("give a GPU preset (h100, h200, a100) or both bandwidth and flops")
        base = GPU("custom", bandwidth, flops)
    elif name.lower() not in GPUS:
        raise ConfigError(f"unknown GPU {name!r}; choose one of {', '.join(GPUS)} or give bandwidth and flops")
    else:
        base = GPUS[name.lower()]
    out = GPU(base.name, bandwidth if bandwidth is not None else base.bandwidth,
              flops if flops is not None else base.flops)
    positive("bandwidth", out.bandwidth)
    positive("flops", out.flops)
    return out


def dtype_bytes(dtype: str) -> int:
    if dtype.lower() not in DTYPE_BYTES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype.lower()]


def positive(name: str, value: float, *, zero: bool = False) -> None:
    """A finite number > 0 (>= 0 if ``zero``), else a ``ConfigError`` naming it."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value >= 0 if zero else value > 0))
    if not ok:
        raise ConfigError(f"{name} must be a {'non-negative' if zero else 'positive'} number, got {value!r}")


def embedding_params(config: ModelConfig) -> int:
    """Embedding table plus (untied) LM head: read as weights, but not in the per-token matmul term."""
    return config.vocab_size * config.hidden_size * (1 if config.tie_word_embeddings else 2)


@dataclass(frozen=True)
class Forward:
    seconds: float
    bytes: float
    flops: float
    bound: str  # "memory" or "compute": which side of the roofline sets the time


def forward_cost(config: ModelConfig, device: GPU, *, query: float, cached: float = 0, batch: float = 1,
                 bytes_per_value: int = 2) -> Forward:
    """One forward of ``query`` tokens over ``cached`` K/V tokens for ``batch`` rows (the module's formula).
    Token counts may be averages (fractional)."""
    positive("query tokens", query)
    positive("cached tokens", cached, zero=True)
    positive("batch", batch)
    L, h, V = config.num_hidden_layers, config.hidden_size, config.vocab_size
    params = config.num_parameters()
    kv_bytes = 2 * L * (cached + query) * config.num_key_value_heads * config.head_dim * bytes_per_value * batch
    moved = params * bytes_per_value + kv_bytes
    flops = (2 * (params - embedding_params(config)) * batch * query
             + 4 * L * batch * query * (cached + query) * h + 2 * batch * query * h * V)
    memory, compute = moved / device.bandwidth, flops / device.flops
    return Forward(max(memory, compute), moved, flops, "memory" if memory >= compute else "compute")


def ar_tokens_per_s(config: ModelConfig, device: GPU, *, prompt: int, new: int, batch: int = 1,
                    bytes_per_value: int = 2) -> float:
    """An autoregressive model with a KV cache: one prefill forward of the prompt, then one token per forward
    over a cache that grows by one each step. Tokens/s over all ``batch`` rows."""
    positive("prompt length", prompt)
    positive("new tokens", new)
    seconds = forward_cost(config, device, query=prompt, batch=batch, bytes_per_value=bytes_per_value).seconds
    seconds += sum(forward_cost(config, device, query=1, cached=prompt + i, batch=batch,
                                bytes_per_value=bytes_per_value).seconds for i in range(new - 1))
    return batch * new / seconds


@dataclass(frozen=True)
class DecoderShape:
    """What a diffusion decoder's forwards look like, per batch row: tokens committed per forward, query and
    cached tokens of a typical forward, canvases evaluated per forward (> 1 when drafts are verified together),
    ``full_forwards`` forwards over the whole canvas without a cache (a cache refresh per block), and ``prefill``
    prompt tokens run once before the first step (0: none)."""

    name: str
    tokens_per_forward: float
    query: float
    cached: float = 0.0
    canvases: float = 1.0
    full_forwards: int = 0
    prefill: int = 0


def shape_for(name: str, tokens_per_forward: float, *, prompt: int, new: int, block: int = 32,
              canvases: float = 1.0) -> DecoderShape:
    """The forward shape of a `bench/decode.py` decoder from its name: no cache -> every forward runs the whole
    canvas; ``+prefix`` -> a full refresh per block, then the current block and the suffix over the cached
    prefix (its average length over the blocks); ``+dual`` -> a full refresh per block, then the block alone over
    the rest of the canvas (the README's decoder section); ``exact`` -> a block-diffusion model's exact cache
    (docs/sampler.md "Block diffusion"): one prefill of the prompt, then the current block over the cached
    prefix, the first step of each block also feeding the finished block before it (block / tokens_per_forward
    steps per block, so block + tokens_per_forward query tokens on average)."""
    positive("tokens per forward", tokens_per_forward)
    positive("canvases per forward", canvases)
    canvas, blocks = prompt + new, math.ceil(new / block)
    if "exact" in name:
        return DecoderShape(name, tokens_per_forward, block + tokens_per_forward, prompt + (new - block) / 2,
                            canvases, prefill=prompt)
    if "+dual" in name:
        return DecoderShape(name, tokens_per_forward, block, canvas - block, canvases, blocks)
    if "+prefix" in name:
        prefix = prompt + (new - block) / 2  # mean over blocks of prompt + k * block
        return DecoderShape(name, tokens_per_forward, canvas - prefix, prefix, canvases, blocks)
    return DecoderShape(name, tokens_per_forward, canvas, 0.0, canvases, 0)


def decoder_tokens_per_s(config: ModelConfig, device: GPU, shape: DecoderShape, *, prompt: int, new: int,
                         batch: int = 1, bytes_per_value: int = 2) -> float:
    """Tokens/s over ``batch`` rows of a diffusion decoder generating ``new`` tokens: ``new / tokens_per_forward``
    sequential forwards, of which ``full_forwards`` run the whole canvas uncached and the rest the shape's query
    over its cache, after a prefill of ``shape.prefill`` tokens if it has one; drafts verified together multiply
    the rows a forward evaluates."""
    positive("new tokens", new)
    forwards = new / shape.tokens_per_forward
    full = min(shape.full_forwards, forwards)
    rows = batch * shape.canvases
    step = forward_cost(config, device, query=shape.query, cached=shape.cached, batch=rows,
                        bytes_per_value=bytes_per_value).seconds
    whole = forward_cost(config, device, query=prompt + new, batch=rows, bytes_per_value=bytes_per_value).seconds
    prefill = forward_cost(config, device, query=shape.prefill, batch=rows,
                           bytes_per_value=bytes_per_value).seconds if shape.prefill else 0.0
    return batch * new / (prefill + full * whole + (forwards - full) * step)
