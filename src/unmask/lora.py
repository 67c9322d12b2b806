"""LoRA through ``peft``: low-rank adapters on a frozen base, for ``unmask train`` and ``unmask rl`` (docs/training.md).

A run with ``lora_r > 0`` wraps its model in a ``peft.PeftModel`` (``attach``). Only the adapter matrices require
gradients, and ``runs.adamw`` takes the parameters that do, so the optimiser holds the adapters alone. On a GPU
the frozen base is kept in bf16 (``base_dtype``); peft keeps the adapters in float32.

A LoRA checkpoint is a model directory without weights — config.json, generation_config.json and the
tokenizer, as training used them — plus ``adapter/`` in peft's ``save_pretrained`` format, whose
adapter_config.json names the base (``base_model_name_or_path``, an absolute path). The base is the directory
the run started from, or ``run_dir/base``, written once when the model came from memory or a fresh preset
(it exists nowhere else). Resuming loads the base, attaches adapters and restores their weights
(``load_adapter``); ``merge`` folds them into the base: what ``unmask convert CKPT OUT --merge-lora`` saves.

RL's KL reference under LoRA is the policy with its adapters disabled (``AdaptersOff``): the base itself, at
no extra memory. peft is imported inside the functions: it is an optional extra and takes seconds to import.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from unmask.config import lora_targets
from unmask.errors import CheckpointError, ConfigError

ADAPTER_DIR = "adapter"
BASE_DIR = "base"


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError("lora_r > 0 needs peft: pip install 'unmask[lora]' (or pip install peft)") from None
    return peft


def base_dtype(device: torch.device) -> torch.dtype:
    """The frozen base's dtype: bf16 on a GPU (half of float32's memory; no gradient or optimiser state ever needs
    its precision), float32 elsewhere (bf16 matmuls on a CPU are slow and coarse)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def attach(model: torch.nn.Module, cfg: Any, *, seed: int) -> Any:
    """``model`` wrapped in a ``PeftModel`` with fresh adapters per ``cfg`` (``lora_r``, ``lora_alpha`` — default
    2 x r —, ``lora_dropout``, ``lora_targets``); every base weight frozen. Deterministic in ``seed``."""
    peft = _peft()
    alpha = cfg.lora_alpha if cfg.lora_alpha is not None else 2 * cfg.lora_r
    config = peft.LoraConfig(r=cfg.lora_r, lora_alpha=alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=list(lora_targets(cfg.lora_targets)), bias="none")
    # peft draws lora_A from torch's global generator: seed it here, and leave the run's own stream as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return peft.get_peft_model(model, config)


def is_lora_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / ADAPTER_DIR / "adapter_config.json").is_file()


def check_resume(checkpoint: Path, lora_r: int) -> None:
    """A run resumes the kind of checkpoint it writes: adapters with ``lora_r > 0``, full weights without."""
    if is_lora_checkpoint(checkpoint) != (lora_r > 0):
        kind = "a LoRA checkpoint (adapter/)" if lora_r == 0 else "a full-weight checkpoint (no adapter/)"
        raise ConfigError(f"{checkpoint} is {kind}; resume it with the lora_r it was trained with")


def keep_base(run_dir: Path, start: str | None, model: torch.nn.Module, tokenizer: Any, *, write: bool) -> Path:
    """Where a fresh LoRA run's base lives: ``start`` (the directory the run loaded it from), else
    ``run_dir/base``, which is written now if ``write`` (rank 0). Call it before ``attach``."""
    if start is not None:
        return Path(start).resolve()
    base = run_dir / BASE_DIR
    if write:
        from unmask.checkpoint import save_model

        save_model(model, base, tokenizer=tokenizer)
    return base.resolve()


def base_of(checkpoint: Path) -> Path:
    """The base model directory a LoRA checkpoint's adapter belongs to (its adapter_config.json names it)."""
    path = Path(checkpoint) / ADAPTER_DIR / "adapter_config.json"
    try:
        base = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot be read ({err})") from None
    if not base or not (Path(base) / "config.json").is_file():
        raise CheckpointError(f"{path}: its base model {base!r} is not a model directory here; the base must stay "
                              "where the run found it (or put it back there)")
    return Path(base)


def restore_base(model: torch.nn.Module, base: Path) -> None:
    """Copy the base's weights into ``model`` (a model given in memory, on resume: the weights come from disk)."""
    from unmask.checkpoint import load_model

    with torch.no_grad():
        model.load_state_dict(load_model(base, dtype=model.dtype).state_dict())


def save_adapter(model: Any, directory: Path, *, base: Path) -> None:
    """peft's ``save_pretrained`` of ``model``'s adapter into ``directory``, naming ``base`` as its base model."""
    model.peft_config["default"].base_model_name_or_path = str(base)
    # False: a LoRA run never resizes the embeddings, and peft's "auto" would look the base up (on the Hub, too)
    model.save_pretrained(str(directory), save_embedding_layers=False)


def load_adapter(model: Any, checkpoint: Path) -> None:
    """Put a checkpoint's adapter weights into ``model``, whose adapters were attached with the same settings."""
    peft = _peft()
    from safetensors.torch import load_file

    state = load_file(str(checkpoint / ADAPTER_DIR / peft.utils.SAFETENSORS_WEIGHTS_NAME))
    result = peft.set_peft_model_state_dict(model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{checkpoint}: the adapter does not fit this run's LoRA settings (missing "
                              f"{missing[:3]}, unexpected {list(result.unexpected_keys)[:3]})")


def merge(checkpoint: str | os.PathLike) -> torch.nn.Module:
    """The plain ``DreamModel`` a LoRA checkpoint stands for: its base with the adapter folded into the weights,
    under the checkpoint's config.json (the special ids training used), in the base's stored dtype."""
    from unmask.checkpoint import load_model, read_config

    peft = _peft()
    checkpoint = Path(checkpoint)
    config, family, _ = read_config(checkpoint)
    base_dir = base_of(checkpoint)
    base = load_model(base_dir, dtype=None)
    ids = ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id")
    if dataclasses.replace(config, **{k: getattr(base.config, k) for k in ids}) != base.config:
        raise CheckpointError(f"{checkpoint}: config.json does not describe its base {base_dir} (another shape)")
    base.config, base.family = config, family
    return peft.PeftModel.from_pretrained(base, str(checkpoint / ADAPTER_DIR)).merge_and_unload()


class AdaptersOff(torch.nn.Module):
    """A LoRA policy's base as a module of its own: the policy's forward with its adapters disabled.

    RL's KL reference under LoRA: the model the adapters started from, sharing the policy's frozen weights (no
    second copy). The policy is kept out of the module tree, so this module has no parameters and an empty
    state_dict: the reference costs nothing in a checkpoint and restores from nothing.
    """

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self._policy = (policy,)  # a tuple is not registered as a submodule

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        policy = self._policy[0]
        with policy.disable_adapter():
            return policy(*args, **kwargs)
