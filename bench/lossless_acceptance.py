"""What limits lossless decoding: how many reference steps each verified forward covers, and where drafts miss.

Decodes held-out prompts one at a time (batch 1, greedy) with ``--lossless`` and reads the step events: a step
that made a forward starts a round; the steps up to the next such step are what that forward covered (its
acceptance length; steps that commit nothing need no forward and are left out). Each round after the first
starts because the drafts missed; the commits of that step say whether the miss was among end tokens
(eos/pad: the tail of the canvas, where many positions are near-tied for the most confident) or in the code.

    PYTHONPATH=src python bench/lossless_acceptance.py models/unmask-small --tasks 8 --max-new-tokens 256

Prints one JSON line (the histogram, the miss counts and the command).
"""

from __future__ import annotations

import argparse
import collections
import json
import shlex
import sys

import torch


def rounds(events, stop_ids: set[int]) -> tuple[list[int], collections.Counter]:
    """(acceptance length of every round, misses by kind) from one decode's step events."""
    lengths: list[int] = []
    misses: collections.Counter = collections.Counter()
    for event in events:
        committed = event.committed[0]
        if not bool(committed.any()):
            continue
        if event.forwards:
            if lengths:  # not the first round: the previous drafts missed this step
                tokens = event.canvas[0][committed].tolist()
                misses["end token" if all(t in stop_ids for t in tokens) else "code"] += 1
            lengths.append(0)
        lengths[-1] += 1
    return lengths, misses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--draft", type=int, default=4)
    parser.add_argument("--alg", default="entropy")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import unmask
    from unmask.config import DecodeConfig, DecoderConfig
    from unmask.data.synthetic import synthetic_tasks
    from unmask.decoding.dispatch import decode_stream
    from unmask.evaluate import prompt_text

    model, tokenizer = unmask.load(args.model, dtype="float32")
    stops = set(tokenizer.special.stop_ids())
    config = DecodeConfig(max_new_tokens=args.max_new_tokens, steps=args.max_new_tokens, alg=args.alg,
                          temperature=0.0)
    decoder = DecoderConfig(lossless=True, draft=args.draft)
    mask = int(model.config.mask_token_id)
    lengths: list[int] = []
    misses: collections.Counter = collections.Counter()
    for task in synthetic_tasks("heldout", args.tasks, 0):
        prompt = tokenizer.encode(prompt_text(task, tokenizer, False))
        canvas = torch.tensor([prompt + [mask] * args.max_new_tokens])
        events = ({"canvas": e.canvas.clone(), "committed": e.committed.clone(), "forwards": e.forwards}
                  for e in decode_stream(model, canvas, None, config=config, decoder=decoder,
                                         region_start=len(prompt), mask_token_id=mask, stop_ids=tuple(stops)))
        got, kinds = rounds((argparse.Namespace(**e) for e in events), stops)
        lengths += got
        misses += kinds
    histogram = dict(sorted(collections.Counter(lengths).items()))
    result = {"model": args.model, "tasks": args.tasks, "max_new_tokens": args.max_new_tokens, "draft": args.draft,
              "rounds": len(lengths), "committing_steps": sum(lengths),
              "steps_per_forward": round(sum(lengths) / len(lengths), 3) if lengths else None,
              "acceptance_histogram": histogram, "misses": dict(misses),
              "command": "PYTHONPATH=src python bench/lossless_acceptance.py "
                         + shlex.join(sys.argv[1:] if argv is None else argv)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
