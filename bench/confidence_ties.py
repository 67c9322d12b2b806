"""How many masked positions tie at the top confidence on a decode's first step, with and without a nucleus filter.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/confidence_ties.py --model models/unmask-small --tasks 3

For each held-out procedural prompt + ``--length`` masks: one forward, the sampler's confidence of every masked
position (``unmask.decoding.sampling.sample_tokens``, computed from the filtered distribution as Dream's sampler
does), the positions tied at the maximum and the one ``torch.topk`` picks — the reference sampler's choice at
``alg_temp`` 0 (reports/arness.md). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import unmask
from unmask.data.synthetic import synthetic_tasks
from unmask.decoding.sampling import sample_tokens
from unmask.diffusion import shift_logits


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--alg", default="entropy")
    args = ap.parse_args(argv)
    model, tokenizer = unmask.load(args.model)
    model.eval()
    mask = model.config.mask_token_id
    rows = []
    for task in synthetic_tasks("heldout", args.tasks, 0):
        ids = tokenizer.encode(task.prompt)
        with torch.no_grad():
            logits = shift_logits(model(torch.tensor([ids + [mask] * args.length])))[0, len(ids):].float()
        logits[:, mask] = torch.finfo(logits.dtype).min
        for top_p in (None, 0.95):
            _, conf = sample_tokens(logits, temperature=args.temperature, top_p=top_p, confidence=args.alg,
                                    generator=torch.Generator().manual_seed(0))
            tied = (conf == conf.max()).nonzero().flatten().tolist()
            rows.append({"task": task.task_id, "top_p": top_p, "tied_at_max": len(tied), "first_tied": tied[:8],
                         "topk_pick": int(torch.topk(conf, 1).indices)})
    print(json.dumps({"bench": "confidence_ties", "model": args.model, "temperature": args.temperature,
                      "alg": args.alg, "length": args.length, "rows": rows,
                      "command": "OMP_NUM_THREADS=1 PYTHONPATH=src python "
                                 + " ".join(["bench/confidence_ties.py", *sys.argv[1:]])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
