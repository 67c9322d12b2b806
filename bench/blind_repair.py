"""Repair without tests: can the revising decoders' own confidence find and fix an injected bug?

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/blind_repair.py --model models/unmask-small --n 100

Bugs made as ``bench/edit_report.py`` makes them (a held-out task's canonical body with one operator or integer constant
mutated, seeded; only mutants that fail the tests are kept). The buggy function is put on the canvas as committed
text and revised the way ``--revise`` revises a finished draft (docs/sampler.md, "Revising committed tokens"),
with no test run anywhere:

- ``remask``: each round reads every body token's probability in one forward (the visible read), re-masks the
  ``per_step`` least confident body tokens not revised before, and fills them in one greedy forward;
- ``edit``: each round reads the probabilities in one forward and replaces at most ``per_step`` body tokens whose
  probability is below ``edit_low`` while another token's is above ``edit_high``.

Rounds run until ``budget`` tokens are spent (edit: or a round changes nothing). Reported per budget: how many
buggy functions then pass their tests, how many reached exactly the canonical body, and the forwards per task.
Prints one JSON line (results and the command).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import torch
from edit_report import mutate, passes  # bench/ is the script's directory

import unmask
from unmask.data.synthetic import synthetic_tasks
from unmask.decoding.revise import edit_choices, least_confident, token_probs
from unmask.diffusion import shift_logits


def buggy_tasks(tasks, seed: int) -> list[tuple[object, str]]:
    """(task, first failing mutant of its body) for every task that has one, as edit_report chooses them."""
    rng = random.Random(seed)
    out = []
    for t in tasks:
        candidates = mutate(t.canonical_solution, rng)
        verdicts = passes([t] * len(candidates), [t.prompt + c for c in candidates]) if candidates else []
        failing = [c for c, ok in zip(candidates, verdicts) if not ok]
        if failing:
            out.append((t, failing[0]))
    return out


def canvas(tokenizer, prompt: str, body: str) -> tuple[torch.Tensor, int]:
    """The ids of prompt + body encoded together (as ``unmask repair`` does), and where the body starts: the first
    token that is not the prompt's own (a token spanning the seam counts as body)."""
    ids, own = tokenizer.encode(prompt + body), tokenizer.encode(prompt)
    start = 0
    while start < min(len(ids), len(own)) and ids[start] == own[start]:
        start += 1
    return torch.tensor(ids), start


@torch.inference_mode()
def revise_body(model, ids: torch.Tensor, start: int, *, mode: str, budget: int, per_step: int, low: float,
                high: float, mask_id: int) -> tuple[torch.Tensor, int]:
    """Revise the body tokens ids[start:] (1-D) of a complete canvas; (revised ids, forwards spent)."""
    x = ids[None].clone()  # (1, T)
    body = torch.zeros_like(x, dtype=torch.bool)
    body[:, start:] = True
    touched = torch.zeros_like(body)
    spent = forwards = 0
    while spent < budget:
        k = torch.tensor([min(per_step, budget - spent)])
        own, best_p, best = token_probs(shift_logits(model(x)), x, mask_id)  # (1, T) each
        forwards += 1
        if mode == "remask":
            pick = least_confident(own, body & ~touched, k)
            x[pick] = mask_id
            logits = shift_logits(model(x))
            forwards += 1
            x[pick] = logits[pick].float().index_fill(-1, torch.tensor([mask_id]), float("-inf")).argmax(-1)
        else:
            pick = edit_choices(own, best_p, body & ~touched, low, high, k)
            x[pick] = best[pick]
        if not bool(pick.any()):
            break
        touched |= pick
        spent += int(pick.sum())
    return x[0], forwards


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=100, help="held-out tasks (those with a failing mutant are used)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", default="2,4,8,16", help="comma list of revision budgets (tokens per task)")
    ap.add_argument("--per-step", type=int, default=2)
    ap.add_argument("--edit-low", type=float, default=0.1)
    ap.add_argument("--edit-high", type=float, default=0.9)
    args = ap.parse_args(argv)
    model, tokenizer = unmask.load(args.model)
    model.eval()
    mask_id = model.config.mask_token_id
    start_time = time.perf_counter()
    bugs = buggy_tasks(synthetic_tasks("heldout", args.n, args.seed), args.seed)
    results: dict[str, dict] = {}
    for mode in ("remask", "edit"):
        for budget in [int(b) for b in args.budgets.split(",")]:
            texts, canonical, forwards = [], 0, 0
            for task, body in bugs:
                ids, start = canvas(tokenizer, task.prompt, body)
                out, spent = revise_body(model, ids, start, mode=mode, budget=budget, per_step=args.per_step,
                                         low=args.edit_low, high=args.edit_high, mask_id=mask_id)
                code = tokenizer.decode(out.tolist(), cut=False)
                texts.append(code)
                canonical += code == task.prompt + task.canonical_solution
                forwards += spent
            ok = passes([t for t, _ in bugs], texts)
            results[f"{mode}/{budget}"] = {"pass@1": sum(ok) / max(1, len(bugs)), "passed": sum(ok),
                                           "canonical": canonical, "forwards_per_task": forwards / max(1, len(bugs))}
    print(json.dumps({"bench": "blind_repair", "model": args.model, "tasks": args.n, "buggy_tasks": len(bugs),
                      "seed": args.seed, "per_step": args.per_step, "edit_low": args.edit_low,
                      "edit_high": args.edit_high, "results": results,
                      "seconds": round(time.perf_counter() - start_time, 1),
                      "command": "OMP_NUM_THREADS=1 PYTHONPATH=src python "
                                 + " ".join(["bench/blind_repair.py", *sys.argv[1:]])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
