"""Hugging Face checkpoint directories: load and save Dream-format models.

A directory holds ``config.json`` (``model_type: "Dream"``), ``generation_config.json``, one
``model.safetensors`` or shards ``model-0000N-of-0000M.safetensors`` with ``model.safetensors.index.json``,
and the tokenizer files. Saves use Dream's tensor names and config fields (plus its ``auto_map``) and write
the project's own remote code beside them (``unmask.hf``; a converted Dream/DiffuCoder directory keeps its own,
``save_model(code_from=...)``), so a directory written here loads in ``transformers`` with
``trust_remote_code=True``, and Dream/DiffuCoder directories load here.

Loading never needs twice the model's memory: the model is built on the ``meta`` device (no storage),
each tensor is read from the (memory-mapped) safetensors file straight onto the target device, cast if
asked, and *assigned* as the parameter.

Other families map onto ``DreamModel`` through a pure key-mapping function (``KEY_MAPS``), not a second
model class. Qwen2 (causal AR checkpoints, the starting point of AR→diffusion adaptation) shares the names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from unmask.config import DecodeConfig, DecoderConfig, GenerationDefaults, ModelConfig
from unmask.errors import CheckpointError, ConfigError
from unmask.hf import own_code, write_remote_code
from unmask.lora import is_lora_checkpoint
from unmask.model import DreamModel

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _identity(name: str) -> str | None:
    return name


# model_type (lower-cased) -> pure function from a checkpoint tensor name to a DreamModel parameter name
# (None = not a weight of ours, e.g. a stored rotary buffer, which is ignored).
KEY_MAPS: dict[str, Callable[[str], str | None]] = {
    "dream": lambda name: None if name.endswith("rotary_emb.inv_freq") else name,
    "qwen2": lambda name: None if name.endswith("rotary_emb.inv_freq") else name,
}

_CONFIG_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "max_position_embeddings", "rope_theta", "rms_norm_eps",
                  "initializer_range", "tie_word_embeddings", "mask_token_id", "pad_token_id",
                  "bos_token_id", "eos_token_id")
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(dtype, dtype)
    if key not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return _DTYPES[key]


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, or a ConfigError saying why this machine cannot use it.

    Checked before anything is read: safetensors' own failure on a missing device reads like a corrupt file.
    """
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"unknown device {device!r} ({err}); use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r} asked for, but CUDA is not available on this machine "
                              "(torch.cuda.is_available() is False); use device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r} asked for, but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {str(device)!r} asked for, but MPS is not available on this machine")
    return resolved


# ----------------------------------------------------------------------------------------------------------
# config.json


def config_to_hf(config: ModelConfig, dtype: torch.dtype = torch.float32, family: str = "dream") -> dict[str, Any]:
    """The config.json of a Dream checkpoint (field names and extras as Dream's HF code expects), or with
    ``family="qwen2"`` of a causal Qwen2 one (the autoregressive baseline: no mask token, no auto_map)."""
    fields = {name: getattr(config, name) for name in _CONFIG_FIELDS}
    if config.block_size is not None:  # written only when set: full-attention config.json files stay as they were
        if family != "dream":
            raise CheckpointError(f"a block-diffusion model (block_size {config.block_size}) is saved as a Dream "
                                  f"checkpoint, not {family!r}")
        fields["block_size"] = config.block_size
    if family == "qwen2":
        fields.pop("mask_token_id", None)
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "hidden_act": "silu",
            "attention_dropout": 0.0,
            "rope_scaling": None,
            "use_cache": True,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": config.num_hidden_layers,
            "torch_dtype": str(dtype).removeprefix("torch."),
            **fields,
        }
    if family != "dream":
        raise CheckpointError(f"cannot write a {family!r} checkpoint; supported: dream, qwen2")
    return {
        "architectures": ["DreamModel"],
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "model_type": "Dream",
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "rope_scaling": None,
        "use_cache": False,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": config.num_hidden_layers,
        "torch_dtype": str(dtype).removeprefix("torch."),
        **fields,
    }


def config_from_hf(raw: dict[str, Any], source: str = "config.json") -> tuple[ModelConfig, str]:
    """Parse a config.json dict -> (ModelConfig, family). Unsupported features fail loudly."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{source}: expected a JSON object")
    model_type = str(raw.get("model_type", ""))
    family = model_type.lower()
    if family not in KEY_MAPS:
        raise CheckpointError(f"{source}: unknown model_type {model_type!r}; supported: Dream, qwen2")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise CheckpointError(f"{source}: missing required field(s) {', '.join(missing)}")
    if raw.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{source}: hidden_act {raw['hidden_act']!r} is not supported (Dream uses silu)")
    if raw.get("rope_scaling"):
        raise CheckpointError(f"{source}: rope_scaling {raw['rope_scaling']!r} is not supported")
    if raw.get("use_sliding_window"):
        raise CheckpointError(f"{source}: sliding-window attention is not supported")
    head_dim = raw.get("head_dim")
    if head_dim is not None and head_dim * raw["num_attention_heads"] != raw["hidden_size"]:
        raise CheckpointError(f"{source}: head_dim {head_dim} != hidden_size / num_attention_heads")
    values = {k: raw[k] for k in (*_CONFIG_FIELDS, "block_size") if k in raw and raw[k] is not None}
    values.setdefault("num_key_value_heads", raw["num_attention_heads"])
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        if isinstance(values.get(key), list):  # HF allows a list of eos ids; the first is the canonical one
            values[key] = values[key][0] if values[key] else None
    try:
        return ModelConfig(**values), family
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{source}: {err}") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def read_config(directory: str | os.PathLike) -> tuple[ModelConfig, str, dict[str, Any]]:
    directory = _check_directory(directory)
    raw = _read_json(directory / "config.json")
    config, family = config_from_hf(raw, str(directory / "config.json"))
    return config, family, raw


def read_generation_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / "generation_config.json"
    return _read_json(path) if path.is_file() else {}


def load_generation_defaults(directory: str | os.PathLike) -> GenerationDefaults:
    """The sampler and decoder a model directory recommends (its generation_config.json; defaults without one)."""
    return GenerationDefaults.from_dict(read_generation_config(directory))


def _check_directory(directory: str | os.PathLike) -> Path:
    path = Path(directory)
    if not path.exists():
        raise CheckpointError(f"{path}: model directory does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a model directory, found a file")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json; is this a Hugging Face model directory?")
    return path


# ----------------------------------------------------------------------------------------------------------
# weights


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint, checked to exist (index first, then a single file)."""
    index = directory / INDEX_NAME
    if index.is_file():
        raw = _read_json(index)
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no weight_map")
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{index}: lists shard {f.name}, which is missing from {directory}")
        return files
    if (directory / SINGLE_NAME).is_file():
        return [directory / SINGLE_NAME]
    if any(directory.glob("*.bin")):
        raise CheckpointError(f"{directory}: only PyTorch .bin weights found; convert them to safetensors")
    if is_lora_checkpoint(directory):
        raise CheckpointError(f"{directory}: a LoRA checkpoint (adapter/, no weights of its own); merge it into its "
                              f"base first: unmask convert {directory} OUT --merge-lora")
    raise CheckpointError(f"{directory}: no {SINGLE_NAME} or {INDEX_NAME}")


def _open(path: Path, device: str):
    try:
        return safe_open(str(path), framework="pt", device=device)
    except Exception as err:  # SafetensorError's text names the problem (e.g. an incomplete header)
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); it may be truncated or "
                              "corrupt — re-save or re-download it") from None


def load_model(directory: str | os.PathLike, *, dtype: str | torch.dtype | None = None,
               device: str | torch.device = "cpu") -> DreamModel:
    """Build a ``DreamModel`` from a checkpoint directory with its tensors loaded straight into place.

    dtype: None keeps the stored dtype; otherwise each tensor is cast as it is read.
    """
    device = str(check_device(device))
    directory = _check_directory(directory)
    config, family, _ = read_config(directory)
    key_map = KEY_MAPS[family]
    dtype = parse_dtype(dtype)

    with torch.device("meta"):
        model = DreamModel(config)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)

    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for path in weight_files(directory):
        handle = _open(path, device)
        for stored_name in handle.keys():
            name = key_map(stored_name)
            if name is None:
                continue
            if name not in expected:
                unexpected.append(f"{stored_name} (in {path.name})")
                continue
            try:
                tensor = handle.get_tensor(stored_name)
            except Exception as err:
                raise CheckpointError(f"{path}: tensor {stored_name} cannot be read ({err}); the file may be "
                                      "truncated or corrupt") from None
            if tuple(tensor.shape) != expected[name]:
                raise CheckpointError(f"{path}: tensor {stored_name} has shape {tuple(tensor.shape)}, but "
                                      f"config.json implies {expected[name]}")
            state[name] = tensor.to(dtype) if dtype is not None else tensor
    if unexpected:
        raise CheckpointError(f"{directory}: unexpected tensor(s) not used by a {family} model: "
                              + ", ".join(sorted(unexpected)[:10]) + (" …" if len(unexpected) > 10 else ""))
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{directory}: missing tensor(s) " + ", ".join(missing[:10])
                              + (" …" if len(missing) > 10 else ""))
    model.load_state_dict(state, strict=not config.tie_word_embeddings, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.family = family  # "qwen2": a causal model (the AR baseline); re-saving keeps the format
    return model.eval()


def save_model(model: DreamModel, directory: str | os.PathLike, *, tokenizer=None,
               generation: DecodeConfig | dict[str, Any] | None = None, decoder: DecoderConfig | None = None,
               dtype: str | torch.dtype | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
               family: str | None = None, code_from: str | os.PathLike | None = None, weights: bool = True) -> Path:
    """Write a complete HF directory atomically: build it beside the target, then swap it in.

    A crash mid-save leaves either the old directory or the new one, never a mix. ``generation`` (sampler) and
    ``decoder`` are the defaults written to generation_config.json; a dict ``generation`` may hold both.
    ``code_from``: a model directory (the one being converted) whose own remote code (``hf.own_code``: a Dream
    or DiffuCoder checkpoint's ``modeling_dream.py``, …) is copied, with its config.json ``auto_map``, instead
    of unmask's; without such code unmask's is written as usual. ``weights=False`` writes everything but the
    weights (a LoRA checkpoint: its weights are its base's and its adapter's, ``unmask.lora``).
    """
    directory = Path(directory)
    dtype = parse_dtype(dtype) or model.dtype
    parent = directory.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{directory.name}.saving-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        if weights:
            state = {name: t.detach().to("cpu", dtype).contiguous() for name, t in model.state_dict().items()}
            if model.config.tie_word_embeddings:
                state.pop("lm_head.weight", None)
            _write_weights(state, staging, max_shard_bytes)
        family = family or getattr(model, "family", "dream")
        kept = own_code(code_from) if code_from is not None and family == "dream" else []
        hf_config = config_to_hf(model.config, dtype, family)
        if kept:  # the entry points of the code that is kept
            hf_config["auto_map"] = _read_json(Path(code_from) / "config.json").get("auto_map", hf_config["auto_map"])
        _write_json(staging / "config.json", hf_config)
        generation_config = generation_config_dict(model.config, generation, decoder)
        _write_json(staging / "generation_config.json", generation_config)
        if tokenizer is not None:
            tokenizer.save(staging)
        for path in kept:
            (staging / path.name).write_bytes(path.read_bytes())
        if family == "dream" and weights and not kept:  # the code config.json's auto_map names (for transformers)
            write_remote_code(staging)
        for path in staging.iterdir():
            path.chmod(0o644)  # safetensors writes 0600; model directories are meant to be shared
        _swap_in(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def generation_config_dict(config: ModelConfig, generation: DecodeConfig | dict[str, Any] | None,
                           decoder: DecoderConfig | None = None) -> dict[str, Any]:
    """The generation_config.json of a model: its special ids, the sampler defaults (Dream's keys) and, when
    one is recommended (not the plain reference sampler), the decoder's fields.

    ``dream_compat`` is written only when on: absent, each reader keeps its own default — off in unmask, on in
    the remote code's ``diffusion_generate`` (its callers speak Dream's call; docs/remote_code.md)."""
    if isinstance(generation, dict):
        decoder = decoder or DecoderConfig.from_dict(generation)
        generation = DecodeConfig.from_dict(generation)
    sampler = dataclasses.asdict(generation or DecodeConfig())
    if not sampler["dream_compat"]:
        del sampler["dream_compat"]
    if config.block_size is not None and (decoder is None or decoder.decoder == "reference"):
        decoder = DecoderConfig(decoder="blocks", block_length=config.block_size)  # the only kind it runs
    recommended = {} if decoder is None or decoder == DecoderConfig() else dataclasses.asdict(decoder)
    return {
        "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id, "mask_token_id": config.mask_token_id,
        **sampler, **recommended,
    }


def _write_weights(state: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    metadata = {"format": "pt"}  # HF's loader insists on this key
    if len(shards) == 1:
        save_file(shards[0], str(directory / SINGLE_NAME), metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    _write_json(directory / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})


def _swap_in(staging: Path, directory: Path) -> None:
    if directory.exists():
        old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(directory, old)
        os.replace(staging, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, directory)
