"""``unmask tasks BENCHMARK``: a benchmark's tasks (or SFT prompt/response pairs) as JSONL."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", help="benchmark name (synthetic, synthetic-train, humaneval, mbpp, ...)")
    p.add_argument("--format", choices=("tasks", "sft"), default="tasks",
                   help="tasks: HumanEval-shaped rows; sft: {prompt, response} pairs for unmask train --stage sft")
    p.add_argument("--n", type=int, default=200, help="tasks to draw (procedural benchmarks)")
    p.add_argument("--seed", type=int, default=0, help="seed of the procedural draw")
    p.add_argument("--limit", type=int, default=None, help="keep only the first N tasks")
    p.add_argument("--out", default=None, help="output .jsonl (default: stdout)")


def run(args: argparse.Namespace) -> int:
    from unmask.evaluate import EvalConfig, load_tasks
    from unmask.fileio import atomic_write_text

    config = EvalConfig(benchmark=args.benchmark, synthetic_tasks=args.n, seed=args.seed, limit=args.limit)
    tasks = load_tasks(config)
    if args.format == "sft":
        # Base-model SFT pairs: the prompt is the signature + docstring, the response the body it must write.
        rows = [{"prompt": t.prompt, "response": t.canonical_solution} for t in tasks]
    else:
        rows = [{"task_id": t.task_id, "prompt": t.prompt, "entry_point": t.entry_point,
                 "canonical_solution": t.canonical_solution, "test": t.test, "benchmark": t.benchmark}
                for t in tasks]
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if args.out in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out), text)
        print(f"wrote {len(rows)} {args.format} rows of {args.benchmark} to {args.out}", file=sys.stderr)
    return 0
