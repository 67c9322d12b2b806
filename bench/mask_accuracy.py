"""Masked-token accuracy vs mask ratio: how well a diffusion model fills a masked response (reports/pipeline.md).

For SFT pairs no model trained on (the trainer's own validation split of its data, or ``--val-fraction 0``
with another file, e.g. the held-out benchmark as ``unmask tasks synthetic --format sft``), each row is laid
out as in SFT training — ``[prompt][response][eos][pad ...]`` of ``--seq-len`` tokens, padded with the model's
own pad token — and for each ratio r exactly ``round(r * n)`` of the n response tokens (the eos included, the
pads not) are masked at random. One forward; the accuracy is the share of masked response tokens whose argmax is right.
A model that fills well at high ratios can write code in few steps; comparing a from-scratch model with an
AR-adapted one shows what the adaptation brought.

``--next-token`` measures instead the state a left-to-right decode is in (blocks of 1): for every response
position i the canvas is ``[prompt][response[:i]][mask x (new_tokens - i)]`` and the score is the argmax at i.
A causal model (the AR twin) is scored on the same positions teacher-forced, so the two numbers compare the
next-token skill of a diffusion model and of its AR parent directly.

    python bench/mask_accuracy.py MODEL [MODEL ...] --data runs/pipeline/sft.jsonl \
        --out reports/pipeline/mask_accuracy.json --png reports/pipeline/mask_accuracy.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

RATIOS = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


def held_out_rows(tokenizer, pairs: list[tuple[str, str]], seq_len: int, limit: int, val_fraction: float
                  ) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids + eos) of the first ``limit`` validation pairs that fit in ``seq_len``."""
    from unmask.training_data import split_sft_pairs

    val = list(dict.fromkeys(pairs))
    if val_fraction > 0:  # pairs a model trained on: keep only its validation split, as the trainer drew it
        _, val = split_sft_pairs(pairs, val_fraction)
    rows = []
    for prompt, response in val:
        p, r = tokenizer.encode(prompt), tokenizer.encode(response) + [tokenizer.special.eos]
        if len(p) + len(r) <= seq_len:
            rows.append((p, r))
        if len(rows) == limit:
            break
    return rows


@torch.no_grad()
def accuracy(model, rows, ratio: float, seq_len: int, generator: torch.Generator) -> tuple[int, int]:
    """(correct, masked) over ``rows`` with ``ratio`` of each response masked."""
    from unmask.diffusion import shift_logits

    mask_id, pad_id = model.config.mask_token_id, model.config.pad_token_id
    correct = total = 0
    for prompt, response in rows:
        clean = torch.tensor([prompt + response + [pad_id] * (seq_len - len(prompt) - len(response))])
        k = max(1, round(ratio * len(response)))
        picks = torch.randperm(len(response), generator=generator)[:k] + len(prompt)  # (k,) canvas positions
        noisy = clean.clone()
        noisy[0, picks] = mask_id
        guess = shift_logits(model(noisy))[0, picks].argmax(-1)  # (k,)
        correct += int((guess == clean[0, picks]).sum())
        total += k
    return correct, total


@torch.no_grad()
def next_token_accuracy(model, rows, new_tokens: int) -> tuple[int, int]:
    """(correct, scored) of the argmax at the leftmost masked position, every response position in turn;
    a causal model is scored teacher-forced on the same positions."""
    from unmask.diffusion import shift_logits

    correct = total = 0
    for prompt, response in rows:
        n, P = min(len(response), new_tokens), len(prompt)
        target = torch.tensor(response[:n])  # (n,)
        if getattr(model, "causal", False):
            from unmask.autoregressive import causal_attention

            ids = torch.tensor([prompt + response[:n]])
            mask = causal_attention(torch.ones_like(ids, dtype=torch.bool))  # the model is causal only if told
            logits = shift_logits(model(ids, attention_mask=mask))[0, P:P + n]  # (n, V)
        else:
            canvas = torch.full((n, P + new_tokens), model.config.mask_token_id)  # row i: response[:i] clean
            canvas[:, :P] = torch.tensor(prompt)
            for i in range(n):
                canvas[i, P:P + i] = target[:i]
            logits = shift_logits(model(canvas))[torch.arange(n), P + torch.arange(n)]  # (n, V)
        correct += int((logits.argmax(-1) == target).sum())
        total += n
    return correct, total


def measure(model_dir: str, pairs, args) -> dict:
    import unmask

    model, tokenizer = unmask.load(model_dir)
    model.eval()
    rows = held_out_rows(tokenizer, pairs, args.seq_len, args.rows, args.val_fraction)
    if args.next_token:
        correct, total = next_token_accuracy(model, rows, args.new_tokens)
        return {"model": model_dir, "rows": len(rows), "next_token": {"accuracy": correct / total,
                                                                      "correct": correct, "scored": total}}
    if getattr(model, "causal", False) or model.config.mask_token_id is None:
        raise SystemExit(f"error: {model_dir} is a causal model; masked-token accuracy needs a diffusion model "
                         "(--next-token scores causal models too)")
    generator = torch.Generator().manual_seed(args.seed)
    result = {}
    for ratio in args.ratios:
        correct, total = accuracy(model, rows, ratio, args.seq_len, generator)
        result[str(ratio)] = {"accuracy": correct / total, "correct": correct, "masked": total}
    return {"model": model_dir, "rows": len(rows), "by_ratio": result}


def plot(results: list[dict], path: Path, labels: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, res in zip(labels, results):
        ratios = [float(r) for r in res["by_ratio"]]
        ax.plot(ratios, [v["accuracy"] for v in res["by_ratio"].values()], marker="o", label=label)
    ax.set_xlabel("share of the response masked")
    ax.set_ylabel("masked-token accuracy (argmax)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    from unmask.training_data import read_sft_pairs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="diffusion model directories")
    p.add_argument("--labels", help="comma-separated names for the plot (default: directory names)")
    p.add_argument("--data", required=True, help="the SFT .jsonl the models were trained on")
    p.add_argument("--rows", type=int, default=128, help="held-out rows")
    p.add_argument("--seq-len", type=int, default=192)
    p.add_argument("--val-fraction", type=float, default=0.02,
                   help="the trainer's val_fraction (same split); 0 = every pair (data no model trained on)")
    p.add_argument("--ratios", type=lambda s: [float(x) for x in s.split(",")], default=list(RATIOS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--next-token", action="store_true",
                   help="score the leftmost masked position (left-to-right decoding's state) instead")
    p.add_argument("--new-tokens", type=int, default=64, help="--next-token: canvas length after the prompt")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--png", help="write the plot here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    pairs = read_sft_pairs(args.data)
    labels = args.labels.split(",") if args.labels else [Path(m).name for m in args.models]
    if len(labels) != len(args.models):
        raise SystemExit(f"error: {len(labels)} labels for {len(args.models)} models")
    results = [measure(m, pairs, args) for m in args.models]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    if args.png and not args.next_token:
        plot(results, Path(args.png), labels)
    if args.next_token:
        print(json.dumps({label: round(res["next_token"]["accuracy"], 4) for label, res in zip(labels, results)}))
    else:
        print(json.dumps({label: {r: round(v["accuracy"], 4) for r, v in res["by_ratio"].items()}
                          for label, res in zip(labels, results)}))
    print("reproduce: python " + " ".join(sys.argv), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
