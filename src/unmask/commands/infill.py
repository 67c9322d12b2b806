"""``unmask infill MODEL --prefix a.py --suffix b.py``: fill the middle; also prints ``generate``'s infills."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from unmask.commands.common import CLIError, add_model_arguments, check_context, load_model, read_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--prefix", help="file with the text before the hole (default: empty)")
    p.add_argument("--suffix", help="file with the text after the hole (default: empty)")
    p.add_argument("--length", default="auto",
                   help="middle tokens: N (fixed) or auto (a few lengths, the one the model scores best)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--json", action="store_true", help="print one JSON object (text, middles, lengths, forwards)")


def _length(text: str) -> int | str:
    if text == "auto":
        return "auto"
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise CLIError(f"--length must be a positive integer or auto, got {text!r}")


def run(args: argparse.Namespace) -> int:
    from unmask.editing.placeholders import Hole

    prefix = read_text(args.prefix, "--prefix file") if args.prefix else ""
    suffix = read_text(args.suffix, "--suffix file") if args.suffix else ""
    length = _length(args.length)
    model, tokenizer, config, decoder = load_model(args)
    segments = [p for p in (prefix, Hole(), suffix) if p != ""]
    return print_infill(model, tokenizer, segments, length, config, decoder, args.seed, args.json)


def placeholders(text: str) -> list:
    from unmask.editing.placeholders import parse_placeholders

    try:
        return parse_placeholders(text)
    except ValueError as err:
        raise CLIError(str(err)) from None


def print_infill(model, tokenizer, segments: list, length, config, decoder, seed: int, as_json: bool) -> int:
    """Fill the holes of ``segments`` and print the whole text (or one JSON object)."""
    from unmask.editing.infill import infill

    # The longest canvas this can build: every text token, every hole at its longest (auto: max_new_tokens).
    holes = [s.length or (length if isinstance(length, int) else config.max_new_tokens)
             for s in segments if not isinstance(s, str)]
    text_tokens = sum(len(tokenizer.encode(s)) for s in segments if isinstance(s, str))
    check_context(model, text_tokens, sum(holes), what="the text around the holes", new="masked tokens")
    try:
        result = infill(model, tokenizer, [segments], length=length, config=config, decoder=decoder, seed=seed)[0]
    except ValueError as err:
        raise CLIError(str(err)) from None
    if as_json:
        print(json.dumps({"text": result.text, "middles": result.middles, "middle_ids": result.middle_ids,
                          "lengths": result.lengths, "score": result.score, "candidates": result.candidates,
                          "forwards": result.forwards, "config": dataclasses.asdict(config),
                          "decoder": dataclasses.asdict(decoder), "seed": seed}))
    else:
        sys.stdout.write(result.text)
        print(f"lengths={result.lengths} forwards={result.forwards}", file=sys.stderr)
    return 0
