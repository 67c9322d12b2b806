"""``unmask convert SRC DST``: re-save a model directory (cast, re-shard, new generation_config.json defaults).

``--generation KEY=VALUE`` sets a sampler default (``steps=64``, ``alg=entropy``) or a recommended decoder
setting (``decoder=blocks``, ``block_length=8``, ``cache=prefix``): what every verb uses when given no flags.
``--merge-lora``: SRC is a LoRA checkpoint (``adapter/`` beside config and tokenizer); DST gets its base with
the adapter merged into the weights, a plain model directory like any other (``unmask.lora.merge``).

A source that ships remote code of its own (a Dream or DiffuCoder checkpoint: ``modeling_dream.py``,
``generation_utils.py``, …) keeps it, with its ``auto_map``; ``--replace-remote-code`` writes unmask's instead.
A source saved by unmask gets the current version of unmask's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from unmask.commands.common import CLIError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="model directory (Dream or Qwen2 HF format)")
    p.add_argument("destination", help="output model directory")
    p.add_argument("--dtype", default=None, help="cast to float32 | bfloat16 | float16 (default: as stored)")
    p.add_argument("--max-shard-mb", type=int, default=5000, help="largest safetensors shard in MiB")
    p.add_argument("--generation", action="append", default=[], metavar="KEY=VALUE",
                   help="set a generation_config.json default (repeatable): a sampler field (steps=64, alg=entropy) "
                        "or the recommended decoder (decoder=blocks, block_length=8, cache=prefix, early_stop=true)")
    p.add_argument("--merge-lora", action="store_true",
                   help="SRC is a LoRA checkpoint of unmask train/rl: write its base with the adapter merged in")
    p.add_argument("--replace-remote-code", action="store_true",
                   help="write unmask's remote code (configuration/modeling/generation_dream.py) even where the source "
                        "ships its own, as a Dream or DiffuCoder checkpoint does (kept by default)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty directory")


def generation_settings(defaults, items: list[str]) -> dict:
    """The model's sampler and decoder defaults (a ``GenerationDefaults``) with each ``KEY=VALUE`` applied
    (VALUE read as JSON if it is)."""
    settings = {**dataclasses.asdict(defaults.decode), **dataclasses.asdict(defaults.decoder)}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in settings:
            raise CLIError(f"--generation {item!r}: expected KEY=VALUE with KEY one of {', '.join(settings)}")
        try:
            settings[key] = json.loads(raw)
        except json.JSONDecodeError:
            settings[key] = raw  # a bare string such as alg=entropy
    return settings


def run(args: argparse.Namespace) -> int:
    import unmask
    from unmask.checkpoint import load_generation_defaults
    from unmask.config import GenerationDefaults
    from unmask.hf import own_code

    src, dst = Path(args.source), Path(args.destination)
    if dst.exists() and any(dst.iterdir()) and not args.force:
        raise CLIError(f"{dst} already exists and is not empty (use --force to overwrite)")
    if args.max_shard_mb <= 0:
        raise CLIError(f"--max-shard-mb must be positive, got {args.max_shard_mb}")
    model, tokenizer = _merged(src) if args.merge_lora else unmask.load(src, dtype=None)
    defaults = GenerationDefaults.from_dict(generation_settings(load_generation_defaults(src), args.generation))
    kept = [] if args.replace_remote_code or getattr(model, "family", "dream") != "dream" else own_code(src)
    unmask.save(model, dst, tokenizer=tokenizer, generation=defaults.decode, decoder=defaults.decoder, dtype=args.dtype,
                max_shard_bytes=args.max_shard_mb * 2**20, code_from=src if kept else None)
    size = sum(f.stat().st_size for f in dst.iterdir() if f.is_file())
    print(f"wrote {dst}: {model.config.num_parameters() / 1e6:.2f}M parameters as "
          f"{args.dtype or next(model.parameters()).dtype}, {size / 1e6:.1f} MB")
    if kept:
        print(f"kept {src}'s own remote code ({', '.join(f.name for f in kept)}); --replace-remote-code writes "
              "unmask's instead")
    return 0


def _merged(src: Path):
    """(the merged model, the tokenizer) of a LoRA checkpoint."""
    from unmask.checkpoint import read_config
    from unmask.lora import is_lora_checkpoint, merge
    from unmask.tokenizer import load_tokenizer

    if not is_lora_checkpoint(src):
        raise CLIError(f"{src} has no adapter/adapter_config.json: --merge-lora needs a LoRA checkpoint "
                       "(a checkpoint-N directory of a run with --lora-r)")
    _, _, raw = read_config(src)
    return merge(src), load_tokenizer(src, raw)
