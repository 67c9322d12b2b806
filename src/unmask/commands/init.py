"""``unmask init DIR``: a randomly initialised model (+ a BPE tokenizer trained on the stdlib) in HF format."""

from __future__ import annotations

import argparse
from pathlib import Path

from unmask.commands.common import CLIError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from unmask.config import MODEL_PRESETS

    p.add_argument("directory", help="output model directory")
    p.add_argument("--preset", default="tiny", choices=sorted(MODEL_PRESETS), help="architecture preset")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size (trained on the stdlib)")
    p.add_argument("--tokenizer-bytes", type=int, default=2_000_000, help="stdlib bytes to train the BPE on")
    p.add_argument("--seed", type=int, default=0, help="weight-init seed")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty directory")


def run(args: argparse.Namespace) -> int:
    import torch

    from unmask.checkpoint import save_model
    from unmask.config import ModelConfig
    from unmask.corpus import stdlib_texts
    from unmask.model import DreamModel
    from unmask.tokenizer import train_bpe

    out = Path(args.directory)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise CLIError(f"{out} already exists and is not empty (use --force to overwrite)")
    texts = stdlib_texts(max_bytes=args.tokenizer_bytes)
    tokenizer = train_bpe(texts, args.vocab_size)
    special = tokenizer.special
    config = ModelConfig.from_name(args.preset, vocab_size=tokenizer.vocab_size, mask_token_id=special.mask,
                                   pad_token_id=special.pad, eos_token_id=special.eos, bos_token_id=special.bos)
    model = DreamModel(config)
    model.init_weights(torch.Generator().manual_seed(args.seed))
    save_model(model, out, tokenizer=tokenizer)
    print(f"created {out}: preset {args.preset}, {config.num_parameters() / 1e6:.2f}M parameters, "
          f"vocab {config.vocab_size} (random weights, seed {args.seed})")
    return 0
