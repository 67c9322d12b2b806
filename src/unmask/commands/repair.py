"""``unmask repair MODEL FILE --tests t.py``: re-mask the least confident spans and re-denoise until tests pass."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unmask.commands.common import CLIError, add_model_arguments, load_model, read_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, positionals=("file",))
    p.add_argument("file", nargs="?", metavar="FILE", help="the Python file to repair")
    p.add_argument("--tests", required=True, help="test code appended to the file (asserts; raises on failure)")
    p.add_argument("--rounds", type=int, default=3, help="most repair rounds")
    p.add_argument("--spans-per-round", type=int, default=1, help="lines re-masked per round")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per test run")
    p.add_argument("--out", help="write the repaired code here (default: only print the diffs)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")


def _show(index: int, record) -> None:
    print(f"--- round {index + 1}: re-masked {len(record.spans)} span(s), tests "
          f"{'pass' if record.passed else 'fail (' + record.error_kind + ')'}, {record.forwards} forwards"
          + ("" if record.kept else "; undone, the next round tries other spans"))
    sys.stdout.write(record.diff or "(no change)\n")


def run(args: argparse.Namespace) -> int:
    from unmask.editing.repair import RepairConfig, repair
    from unmask.fileio import atomic_write_text

    if args.file is None:
        raise CLIError("no file to repair: unmask repair MODEL FILE --tests TESTS")
    code = read_text(args.file, "the code")
    tests = read_text(args.tests, "the tests")
    try:
        rcfg = RepairConfig(rounds=args.rounds, spans_per_round=args.spans_per_round, timeout=args.timeout)
    except ValueError as err:
        raise CLIError(str(err)) from None
    model, tokenizer, config, decoder = load_model(args)
    result = repair(model, tokenizer, code, lambda c: c + "\n\n" + tests, config=rcfg, decode=config,
                    decoder=decoder, seed=args.seed, on_round=_show)
    if result.passed_before:
        print("tests already pass: nothing to repair")
    else:
        state = "pass" if result.passed else "still fail"
        print(f"tests {state} after {len(result.rounds)} round(s), {result.forwards} forwards")
    if args.out and result.rounds:
        atomic_write_text(Path(args.out), result.code)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0 if result.passed else 1
