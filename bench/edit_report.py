"""Editing report on the procedural benchmark: infilling vs left-to-right, and test-guided repair.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/edit_report.py --model models/unmask-small --n 40

(a) Infilling tasks: a held-out task's canonical body with one line removed. pass@1 of the model filling that
    line between prefix (prompt + lines before) and suffix (lines after), with the oracle length (the removed
    line's token count) and with the auto rule, vs left-to-right completion of the same function from the
    prompt alone (the usual eval: prompt + max_new_tokens masks, cut at the stop sequences).
(b) Repair tasks: the canonical body with one injected bug (an operator or integer constant mutated, chosen by
    a seeded RNG; only mutations that make the tests fail are kept). pass@1 before, and after 1, 2 and 4
    repair rounds, with the forwards spent per task (scoring + decoding).
Prints one JSON line (the results and the command) and a markdown table. Temperature 0 (greedy): one sample.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time

import torch

import unmask
from unmask.config import DecodeConfig, DecoderConfig
from unmask.data.synthetic import synthetic_tasks
from unmask.decoding.dispatch import decode
from unmask.editing.infill import infill
from unmask.editing.placeholders import Hole
from unmask.editing.repair import RepairConfig, repair
from unmask.evaluate import clean_completion
from unmask.programs import build_program
from unmask.sandbox import run_many

_OPS = [("+", "-"), ("-", "+"), ("*", "+"), ("<", ">"), (">", "<"), ("<=", "<"), (">=", ">"), ("==", "!=")]


def infill_task(task, rng: random.Random) -> tuple[str, str, str]:
    """(prefix, removed line, suffix) of the task's full code with one body line removed."""
    lines = task.canonical_solution.splitlines(keepends=True)
    k = rng.randrange(len(lines))
    return task.prompt + "".join(lines[:k]), lines[k], "".join(lines[k + 1:])


def mutate(body: str, rng: random.Random) -> list[str]:
    """Every single-site mutation of an operator or integer constant in ``body``, in a seeded order."""
    out = []
    for old, new in _OPS:
        for m in re.finditer(re.escape(old), body):
            s = body[:m.start()] + new + body[m.end():]
            if s != body:
                out.append(s)
    for m in re.finditer(r"(?<![\w.])\d+", body):
        out.append(body[:m.start()] + str(int(m.group()) + 1) + body[m.end():])
    rng.shuffle(out)
    return out


def passes(tasks, codes) -> list[bool]:
    programs = [build_program(t, c, mode="mbpp") for t, c in zip(tasks, codes)]
    return [o.passed for o in run_many(programs, timeout=5.0)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=40, help="tasks")
    ap.add_argument("--split", default="heldout", choices=("heldout", "train"),
                    help="procedural split: held-out compositions, or fresh tasks of the training distribution")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--decoder", default="reference", choices=("reference", "blocks", "parallel"))
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    model, tokenizer = unmask.load(args.model)
    config = DecodeConfig(max_new_tokens=args.max_new_tokens, steps=args.max_new_tokens, temperature=0.0)
    decoder = DecoderConfig(decoder=args.decoder)
    tasks = synthetic_tasks(args.split, args.n, args.seed)
    rng = random.Random(args.seed)
    start = time.perf_counter()

    # (a) infilling vs left-to-right
    pieces = [infill_task(t, rng) for t in tasks]
    oracle = infill(model, tokenizer, [[p, Hole(max(1, len(tokenizer.encode(m)))), s] for p, m, s in pieces],
                    config=config, decoder=decoder, seed=args.seed)
    auto = infill(model, tokenizer, [[p, Hole(), s] for p, _, s in pieces], length="auto", config=config,
                  decoder=decoder, seed=args.seed, max_length=32)
    ar_texts, ar_forwards = [], 0
    for t in tasks:
        ids = torch.tensor([tokenizer.encode(t.prompt)])
        out = decode(model, ids, config=config, decoder=decoder, seed=args.seed,
                     stop_ids=tokenizer.special.stop_ids())
        ar_forwards += out.stats.forward_passes
        ar_texts.append(t.prompt + clean_completion(tokenizer.decode(out.generated[0].tolist()), "humaneval"))
    infill_pass = {"oracle": passes(tasks, [r.text for r in oracle]), "auto": passes(tasks, [r.text for r in auto]),
                   "left_to_right": passes(tasks, ar_texts)}
    canonical_ok = passes(tasks, [t.prompt + t.canonical_solution for t in tasks])

    # (b) repair of injected bugs
    buggy = []
    for t in tasks:
        candidates = mutate(t.canonical_solution, rng)
        verdicts = passes([t] * len(candidates), [t.prompt + c for c in candidates]) if candidates else []
        failing = [c for c, ok in zip(candidates, verdicts) if not ok]
        buggy.append(failing[0] if failing else None)
    repair_rows = {}
    for rounds in (1, 2, 4):
        ok, forwards, count = 0, 0, 0
        for t, body in zip(tasks, buggy):
            if body is None:
                continue
            code = t.prompt + body
            result = repair(model, tokenizer, code, lambda c, t=t: build_program(t, c, mode="mbpp"),
                            editable=(len(t.prompt), len(code)), config=RepairConfig(rounds=rounds),
                            decode=config, decoder=decoder, seed=args.seed)
            ok += result.passed
            forwards += result.forwards
            count += 1
        repair_rows[rounds] = {"tasks": count, "pass@1": ok / max(1, count),
                               "forwards_per_task": forwards / max(1, count)}
    n = len(tasks)
    report = {
        "bench": "edit_report", "model": args.model, "split": args.split, "tasks": n, "seed": args.seed,
        "decoder": args.decoder,
        "canonical_pass": sum(canonical_ok) / n,
        "infill_pass@1": {k: sum(v) / n for k, v in infill_pass.items()},
        # infills run as one batch: every row is in every forward, so a row's compute is the batch's forwards
        "infill_forwards_per_task": {"oracle": oracle[0].forwards if oracle else 0,
                                     "auto": auto[0].forwards if auto else 0, "left_to_right": ar_forwards / n},
        "repair_before_pass@1": 0.0, "repair": repair_rows, "seconds": round(time.perf_counter() - start, 1),
        "command": "OMP_NUM_THREADS=1 PYTHONPATH=src python " + " ".join(["bench/edit_report.py", *sys.argv[1:]]),
    }
    print(json.dumps(report))
    print("\n| experiment | pass@1 | forwards/task |\n|---|---|---|")
    for k in ("left_to_right", "oracle", "auto"):
        fw = report["infill_forwards_per_task"][k]
        print(f"| infill: {k} | {100 * report['infill_pass@1'][k]:.1f}% | {fw:.1f} |")
    print("| repair: before | 0.0% | 0 |")
    for rounds, row in repair_rows.items():
        print(f"| repair: {rounds} round(s) ({row['tasks']} tasks) | {100 * row['pass@1']:.1f}% | "
              f"{row['forwards_per_task']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
