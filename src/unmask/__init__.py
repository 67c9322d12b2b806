"""unmask: masked diffusion language models for code.

The small, stable Python API (HF-like)::

    model, tokenizer = unmask.load("models/unmask-tiny", dtype="float32")
    logits = model(input_ids, attention_mask)          # raw (B, T, V), Dream's shift convention
    out = unmask.generate(model, input_ids, attention_mask, max_new_tokens=64, steps=64, seed=0)  # its decoder
    out.sequences, out.generated, out.trace, out.stats
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

__all__ = ["load", "save", "generate", "denoise", "ModelConfig", "DecodeConfig", "__version__"]


def load(path: str | os.PathLike, *, dtype="auto", device="cpu"):
    """Load (model, tokenizer) from a Hugging Face-format Dream directory.

    ``dtype="auto"`` computes in float32 on CPU (bf16 matmuls there are slow and coarse) and keeps the
    stored dtype on accelerators; ``None`` always keeps the stored dtype; or name one ("bfloat16", ...).

    The directory's generation_config.json (``checkpoint.load_generation_defaults``: the sampler — steps, alg,
    temperature, … — and the recommended decoder, the reference unless the file names one) is left on the model
    as ``model.generation_defaults`` and ``model.decoder_defaults``, which ``generate`` uses for what the caller
    does not pass; the ``unmask`` verbs read the file themselves and pass the settings explicitly.
    A device this machine does not have is a ``ConfigError`` before anything is read.
    """
    from unmask.checkpoint import load_generation_defaults, load_model, read_config
    from unmask.tokenizer import load_tokenizer

    if dtype == "auto":
        dtype = "float32" if str(device).startswith("cpu") else None
    model = load_model(path, dtype=dtype, device=device)
    _, _, raw = read_config(path)
    tokenizer = load_tokenizer(path, raw)
    defaults = load_generation_defaults(path)
    model.generation_defaults, model.decoder_defaults = defaults.decode, defaults.decoder
    return model, tokenizer


def save(model, path: str | os.PathLike, *, tokenizer=None, **kwargs):
    """Save a model (and tokenizer) as a Hugging Face-format Dream directory, atomically."""
    from unmask.checkpoint import save_model
    from unmask.config import GenerationDefaults

    defaults = GenerationDefaults.of(model)
    kwargs.setdefault("generation", defaults.decode)
    kwargs.setdefault("decoder", defaults.decoder)
    return save_model(model, path, tokenizer=tokenizer, **kwargs)


def generate(model, input_ids, attention_mask=None, **params):
    """Decode ``max_new_tokens`` after the prompts with the model's recommended decoder (its
    generation_config.json; Dream's reference sampler unless the file names another) or ``decoder=``
    (a ``DecoderConfig``); see ``unmask.decoding.dispatch.decode`` for the parameters."""
    from unmask.decoding.dispatch import decode

    return decode(model, input_ids, attention_mask, **params)


def denoise(model, canvas, attention_mask=None, **params):
    """Fill every mask of a canvas (masks anywhere); see ``unmask.decoding.reference.denoise``."""
    from unmask.decoding.reference import denoise as _denoise

    return _denoise(model, canvas, attention_mask, **params)


def __getattr__(name: str):
    if name in ("ModelConfig", "DecodeConfig"):
        from unmask import config

        return getattr(config, name)
    raise AttributeError(f"module 'unmask' has no attribute {name!r}")
