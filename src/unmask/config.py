"""Configuration: small frozen dataclasses, one per concern, with named presets.

``ModelConfig`` mirrors the fields of a Dream ``config.json`` (Hugging Face names, so a config round-trips
through the file unchanged); ``DecodeConfig`` holds the reference sampler's parameters (Dream's
``diffusion_generate`` names). Each field has a default and a one-line doc in its metadata, which the CLI
uses for ``--help``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from unmask.errors import ConfigError


def doc(text: str, **extra: Any) -> dict[str, Any]:
    """A config field's metadata: its one-line doc (the CLI's ``--help``) and extras such as ``choices``."""
    return {"doc": text, **extra}


def check_choices(config: Any) -> None:
    """Every field whose metadata lists ``choices`` holds one of them, else a ``ConfigError`` naming it."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            raise ConfigError(f"{f.name} must be one of {', '.join(f.metadata['choices'])}; got {value!r}")


def check_ints(config: Any, names: tuple[str, ...], *, minimum: int = 1, optional: bool = False) -> None:
    """Each named field an int (not a bool) >= ``minimum`` (1: positive, 0: non-negative), or None if
    ``optional``; else a ``ConfigError`` naming it."""
    kind = "positive" if minimum >= 1 else "non-negative"
    for name in names:
        value = getattr(config, name)
        if (optional and value is None) or (isinstance(value, int) and not isinstance(value, bool)
                                             and value >= minimum):
            continue
        raise ConfigError(f"{name} must be a {kind} integer{' or None' if optional else ''}, got {value!r}")


def check_numbers(config: Any, names: tuple[str, ...], interval: str) -> None:
    """Each named field a finite number (not a bool) in ``interval``, written as in maths: "[0, 1)",
    "(0, inf)"; else a ``ConfigError`` naming it."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    for name in names:
        v = getattr(config, name)
        number = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not (number and (v > low if interval[0] == "(" else v >= low)
                and (v < high if interval[-1] == ")" else v <= high)):
            raise ConfigError(f"{name} must be a number in {interval}, got {v!r}")


def check_device(device: str) -> None:
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N]; got {device!r}")


# The linear layers of a decoder block (unmask.model) that LoRA may adapt; the default adapts them all.
# lm_head is left out: peft treats it as an embedding layer and would save it whole with the adapter.
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_targets(text: str) -> tuple[str, ...]:
    """The module names of a comma list (``lora_targets``), each one of ``LORA_MODULES``."""
    names = tuple(dict.fromkeys(n.strip() for n in str(text).split(",") if n.strip()))
    unknown = [n for n in names if n not in LORA_MODULES]
    if unknown or not names:
        got = f"unknown module {unknown[0]!r}" if unknown else "no module"
        raise ConfigError(f"lora_targets: {got}; choose from {', '.join(LORA_MODULES)}")
    return names


def check_lora(config: Any) -> None:
    """The LoRA fields a run config shares (``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_targets``) hold
    valid values, else a ``ConfigError`` naming the field."""
    check_ints(config, ("lora_r",), minimum=0)
    if config.lora_alpha is not None:
        check_numbers(config, ("lora_alpha",), "(0, inf)")
    check_numbers(config, ("lora_dropout",), "[0, 1)")
    lora_targets(config.lora_targets)


class Settings:
    """What every frozen config dataclass can do: ``replace`` fields, ``to_dict``, ``from_dict``.

    ``from_dict`` refuses an unknown key or a bad value with a ``ConfigError`` naming it (``_what`` says whose
    config, for the message), unless the class is ``_lenient``: the sampler configs are read from a whole
    generation_config.json, whose other keys (and nulls) belong to others."""

    _what = "the"
    _lenient = False

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        if cls._lenient:
            values = {k: v for k, v in values.items() if k in names and v is not None}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown {cls._what} config field(s): {', '.join(unknown)}")
        try:
            return cls(**values)
        except TypeError as err:
            raise ConfigError(f"bad {cls._what} config: {err}") from None


@dataclass(frozen=True)
class RunOptions(Settings):
    """The fields ``TrainConfig`` and ``RLConfig`` share (they inherit them, so they come first): LoRA adapters
    (docs/training.md; with RL the frozen base is also the KL reference) and the experiment trackers."""

    lora_r: int = field(default=0, metadata=doc("LoRA rank: train low-rank adapters on a frozen base (0 = off)"))
    lora_alpha: float | None = field(default=None, metadata=doc("LoRA scale: updates x alpha / r (None: 2 x lora_r)"))
    lora_dropout: float = field(default=0.0, metadata=doc("dropout on the input of the LoRA branch"))
    lora_targets: str = field(default=",".join(LORA_MODULES), metadata=doc("comma list of the projections LoRA adapts"))
    report_to: str = field(
        default="none", metadata=doc("experiment trackers beside metrics.jsonl: a comma list of tensorboard, wandb")
    )


@dataclass(frozen=True)
class ModelConfig(Settings):
    """Architecture of a Dream-family model (a bidirectional Qwen2 decoder stack)."""

    vocab_size: int = field(default=4096, metadata=doc("rows of the embedding and of lm_head"))
    hidden_size: int = field(default=256, metadata=doc("residual stream width"))
    intermediate_size: int = field(default=704, metadata=doc("SwiGLU inner width"))
    num_hidden_layers: int = field(default=4, metadata=doc("transformer blocks"))
    num_attention_heads: int = field(default=4, metadata=doc("query heads"))
    num_key_value_heads: int = field(default=2, metadata=doc("key/value heads (grouped-query attention)"))
    max_position_embeddings: int = field(default=2048, metadata=doc("longest canvas the model is meant for"))
    rope_theta: float = field(default=1_000_000.0, metadata=doc("RoPE base frequency"))
    rms_norm_eps: float = field(default=1e-6, metadata=doc("RMSNorm epsilon"))
    initializer_range: float = field(default=0.02, metadata=doc("std of the normal weight init"))
    tie_word_embeddings: bool = field(default=False, metadata=doc("Dream unties lm_head; kept for loading"))
    mask_token_id: int | None = field(default=None, metadata=doc("id of <|mask|>; read from the checkpoint"))
    pad_token_id: int | None = field(default=None, metadata=doc("id of the pad token"))
    bos_token_id: int | None = field(default=None, metadata=doc("id of the bos token"))
    eos_token_id: int | None = field(default=None, metadata=doc("id of the eos token"))
    block_size: int | None = field(default=None, metadata=doc(
        "block diffusion: attention is causal across blocks of this many tokens, bidirectional inside one "
        "(None = full bidirectional attention; docs/model.md)"))

    def __post_init__(self) -> None:
        check_ints(self, ("block_size",), optional=True)
        check_ints(self, ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "num_key_value_heads", "max_position_embeddings"))
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim ({self.head_dim}) must be even for RoPE")
        if not (math.isfinite(self.rope_theta) and self.rope_theta > 0):
            raise ConfigError(f"rope_theta must be a positive number, got {self.rope_theta!r}")
        if not (0 < self.rms_norm_eps < 1):
            raise ConfigError(f"rms_norm_eps must be in (0, 1), got {self.rms_norm_eps!r}")
        for name in ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not (0 <= value < self.vocab_size):
                raise ConfigError(f"{name}={value} is outside the vocabulary (size {self.vocab_size})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def num_parameters(self) -> int:
        """Parameter count implied by the sizes (embedding + blocks + final norm + lm_head)."""
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        kv = self.num_key_value_heads * d
        attn = h * h + h + 2 * (h * kv + kv) + h * h  # q (+bias), k/v (+bias), o
        block = attn + 3 * h * i + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.num_hidden_layers * block + h + head

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in MODEL_PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS)}")
        return MODEL_PRESETS[name].replace(**overrides)


# Named presets. `dream-7b` is the exact size of Dream-7B / DiffuCoder-7B (docs/model.md); the small ones share
# the architecture and are for tests and CPU work. Token ids of small presets come from their tokenizer.
MODEL_PRESETS: dict[str, ModelConfig] = {
    "dream-7b": ModelConfig(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131072,
        rope_theta=1_000_000.0, mask_token_id=151666, pad_token_id=151643, bos_token_id=151643,
        eos_token_id=151643),
    "test": ModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    "tiny": ModelConfig(vocab_size=4096, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
    "small": ModelConfig(vocab_size=4096, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048),
    "base": ModelConfig(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048),
}

ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")

# What Dream's ``diffusion_generate`` applies when its caller leaves top_k / top_p out, on transformers 4.46 (the
# version it pins): it builds its generation config from the model config, and a 4.x model config carries the
# autoregressive defaults top_k=50, top_p=1.0 (and temperature=1.0, docs/sampler.md "Dream-compatible mode").
DREAM_IMPLICIT_TOP_K = 50
DREAM_IMPLICIT_TOP_P = 1.0


@dataclass(frozen=True)
class DecodeConfig(Settings):
    """Parameters of the reference sampler (Dream ``diffusion_generate`` semantics, docs/sampler.md)."""

    _lenient = True  # read from a whole generation_config.json

    max_new_tokens: int = field(default=256, metadata=doc("masked positions appended to the prompt"))
    steps: int = field(default=256, metadata=doc("denoising steps = forward passes"))
    temperature: float = field(default=0.0, metadata=doc("0 = argmax"))
    top_p: float | None = field(default=None, metadata=doc("nucleus filter (None or 1 = off)"))
    top_k: int | None = field(default=None, metadata=doc("top-k filter (None = off)"))
    alg: str = field(default="entropy", metadata=doc("origin | maskgit_plus | topk_margin | entropy",
                                                      choices=ALGS))
    alg_temp: float = field(default=0.0, metadata=doc("> 0 draws the commit order from softmax(conf/alg_temp)"))
    eps: float = field(default=1e-3, metadata=doc("last timestep of linspace(1, eps, steps + 1)"))
    stop_last: bool = field(default=False, metadata=doc(
        "never commit an eos/pad while a mask lies to its left (off = Dream's sampler exactly)"))
    dream_compat: bool = field(default=False, metadata=doc(
        "reproduce Dream's diffusion_generate call exactly: unset top_k is its implicit 50, the mask token stays "
        "in the softmax, batch-mean reveal counts (docs/sampler.md)"))

    def __post_init__(self) -> None:
        for name in ("stop_last", "dream_compat"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.stop_last and self.dream_compat:
            raise ConfigError("stop_last is unmask's own reordering, which Dream's sampler lacks: it cannot be "
                              "combined with dream_compat")
        if self.stop_last and self.alg == "origin":
            raise ConfigError("stop_last reorders commits by confidence; alg origin has none (use entropy, "
                              "maskgit_plus or topk_margin)")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not isinstance(self.steps, int) or self.steps <= 0:
            raise ConfigError(f"steps must be a positive integer, got {self.steps!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k <= 0):
            raise ConfigError(f"top_k must be a positive integer, got {self.top_k!r}")
        check_choices(self)
        if not (math.isfinite(self.alg_temp) and self.alg_temp >= 0):
            raise ConfigError(f"alg_temp must be a finite number >= 0, got {self.alg_temp!r}")
        if not (0 < self.eps < 1):
            raise ConfigError(f"eps must be in (0, 1), got {self.eps!r}")

    @property
    def token_filters(self) -> tuple[float | None, int | None]:
        """(top_p, top_k) as the sampler applies them: with ``dream_compat`` an unset one is what Dream's call
        uses when its caller leaves it out (top_p 1.0, which filters nothing, and top_k 50)."""
        if not self.dream_compat:
            return self.top_p, self.top_k
        return (DREAM_IMPLICIT_TOP_P if self.top_p is None else self.top_p,
                DREAM_IMPLICIT_TOP_K if self.top_k is None else self.top_k)



DECODERS = ("reference", "blocks", "parallel")
CACHES = ("none", "prefix", "dual")
REVISIONS = ("none", "remask", "edit")


@dataclass(frozen=True)
class DecoderConfig(Settings):
    """Which decoder runs the sampler parameters of ``DecodeConfig``, and how fast (docs/sampler.md)."""

    _lenient = True  # a generation_config.json may recommend a decoder

    decoder: str = field(default="reference", metadata=doc(
        "reference (Dream) | blocks (semi-AR, fixed tokens per step) | parallel (confidence threshold)",
        choices=DECODERS))
    block_length: int = field(default=32, metadata=doc("tokens per semi-autoregressive block (blocks, parallel)"))
    threshold: float = field(default=0.9, metadata=doc("parallel: commit every token with p(x0) >= threshold"))
    factor: float | None = field(default=None, metadata=doc(
        "parallel: factor rule instead of the threshold, accept top n while (n+1)(1-c_n) < factor"))
    cache: str = field(default="none", metadata=doc("approximate KV cache: none | prefix | dual", choices=CACHES))
    refresh_every: int = field(default=0, metadata=doc(
        "cache: also refresh with a full forward every N steps inside a block (0 = once per block)"))
    early_stop: bool = field(default=False, metadata=doc(
        "stop once every row has a committed eos/pad with everything before it committed; pad the rest"))
    lossless: bool = field(default=False, metadata=doc(
        "reference only: skip forwards that cannot change the result, draft-and-verify steps (same output)"))
    draft: int = field(default=4, metadata=doc("lossless: canvases drafted and verified per batched forward"))
    revise: str = field(default="none", metadata=doc(
        "reference only: take back committed tokens — none | remask (re-mask the least confident, denoise them "
        "again) | edit (replace a token the model turned against); docs/sampler.md", choices=REVISIONS))
    revise_budget: int = field(default=16, metadata=doc(
        "revise: at most this many tokens re-masked or edited per row over the whole decode (0 = the reference)"))
    revise_per_step: int = field(default=2, metadata=doc(
        "revise: tokens re-masked (at most edited) per revision step; the last ceil(budget / this) steps revise"))
    edit_low: float = field(default=0.1, metadata=doc(
        "edit: a committed token is replaced only if its probability fell below this"))
    edit_high: float = field(default=0.9, metadata=doc(
        "edit: ... and another token's probability at its position rose above this"))

    def __post_init__(self) -> None:
        check_choices(self)
        if not isinstance(self.block_length, int) or isinstance(self.block_length, bool) or self.block_length <= 0:
            raise ConfigError(f"block_length must be a positive integer, got {self.block_length!r}")
        if not (isinstance(self.threshold, (int, float)) and 0 < self.threshold <= 1):
            raise ConfigError(f"threshold must be in (0, 1], got {self.threshold!r}")
        if self.factor is not None and not (math.isfinite(self.factor) and self.factor > 0):
            raise ConfigError(f"factor must be a positive number, got {self.factor!r}")
        if not isinstance(self.refresh_every, int) or self.refresh_every < 0:
            raise ConfigError(f"refresh_every must be an integer >= 0, got {self.refresh_every!r}")
        if not isinstance(self.draft, int) or self.draft <= 0:
            raise ConfigError(f"draft must be a positive integer, got {self.draft!r}")
        if self.decoder == "reference" and self.cache != "none":
            raise ConfigError("the reference decoder runs full forwards (Dream semantics); a KV cache needs "
                              "--decoder blocks or parallel")
        if self.lossless and (self.decoder != "reference"):
            raise ConfigError("--lossless reproduces the reference sampler; it needs --decoder reference")
        self._check_revision()

    def _check_revision(self) -> None:
        check_ints(self, ("revise_budget",), minimum=0)
        check_ints(self, ("revise_per_step",))
        check_numbers(self, ("edit_low", "edit_high"), "(0, 1)")
        if self.edit_low >= self.edit_high:
            raise ConfigError(f"edit_low ({self.edit_low}) must be below edit_high ({self.edit_high})")
        if self.revise == "none":
            return
        if self.decoder != "reference" or self.lossless:
            raise ConfigError(f"--revise {self.revise} builds on the reference sampler: it needs --decoder reference "
                              "without --lossless (lossless reproduces the reference, which a revision changes)")
        if self.early_stop:
            raise ConfigError(f"--revise {self.revise} can change a row after it looks finished, so early_stop "
                              "could cut a text a revision would have changed: use --no-early-stop")



def override_decoder(base: DecoderConfig, changes: dict[str, Any]) -> DecoderConfig:
    """``base`` (e.g. a model's recommended decoder) updated by ``changes``. Naming another decoder starts from
    that decoder's defaults: a recommended block length or KV cache belongs to the recommended decoder."""
    if changes.get("decoder", base.decoder) != base.decoder:
        base = DecoderConfig()
    return base.replace(**changes)


def check_pairing(config: DecodeConfig, decoder: DecoderConfig) -> None:
    """A ``ConfigError`` for a sampler the chosen decoder does not run: ``dream_compat`` is Dream's own sampler,
    which only the plain reference decoder runs (lossless reasons with per-row counts; blocks and parallel are
    not Dream's; it never revises), and a revising decoder needs steps left to draft with."""
    if config.dream_compat and (decoder.decoder != "reference" or decoder.lossless):
        raise ConfigError("dream_compat reproduces Dream's own sampler: it needs --decoder reference without "
                          "--lossless")
    if config.dream_compat and decoder.revise != "none":
        raise ConfigError(f"dream_compat reproduces Dream's own sampler, which never revises a token: it cannot be "
                          f"combined with --revise {decoder.revise}")
    if decoder.revise != "none" and config.steps <= revision_steps(decoder):
        raise ConfigError(f"--revise {decoder.revise} spends the last {revision_steps(decoder)} of the steps on "
                          f"revision (ceil(revise_budget / revise_per_step)), which leaves no step to draft with: "
                          f"raise --steps above {revision_steps(decoder)} or lower --revise-budget")


def revision_steps(decoder: DecoderConfig) -> int:
    """Forwards of the ``steps`` budget a revising decoder spends on revision, after its draft: ceil(budget / per
    step); 0 without revision (docs/sampler.md, "Revising committed tokens")."""
    if decoder.revise == "none":
        return 0
    return -(-decoder.revise_budget // decoder.revise_per_step)


@dataclass(frozen=True)
class GenerationDefaults:
    """The sampler and the decoder a model recommends. Its generation_config.json is the one source of both:
    ``checkpoint.load_generation_defaults(directory)`` reads them beside the model, and the ``unmask`` verbs
    pass them explicitly. (For the Python API, ``unmask.load`` also leaves them on the model, where ``of`` finds
    them when a caller passes no settings.)"""

    decode: DecodeConfig = field(default_factory=DecodeConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def __post_init__(self) -> None:
        check_pairing(self.decode, self.decoder)

    @classmethod
    def from_dict(cls, generation: dict[str, Any]) -> GenerationDefaults:
        """From a generation_config.json's contents (its other keys are ignored)."""
        return cls(DecodeConfig.from_dict(generation), DecoderConfig.from_dict(generation))

    @classmethod
    def of(cls, model: Any) -> GenerationDefaults:
        """What ``unmask.load`` left on ``model``; the plain defaults for a model made otherwise."""
        return cls(getattr(model, "generation_defaults", None) or DecodeConfig(),
                   getattr(model, "decoder_defaults", None) or DecoderConfig())

    def updated(self, decode: dict[str, Any], decoder: dict[str, Any]) -> tuple[DecodeConfig, DecoderConfig]:
        """(sampler, decoder) with a caller's changes on top (flags, request fields); naming another decoder than
        the recommended one starts from that decoder's defaults (``override_decoder``); a pair the decoder cannot
        run is a ``ConfigError`` (``check_pairing``)."""
        config, chosen = self.decode.replace(**decode), override_decoder(self.decoder, decoder)
        check_pairing(config, chosen)
        return config, chosen
