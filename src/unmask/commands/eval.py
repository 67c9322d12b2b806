"""``unmask eval MODEL --benchmark B``: pass@k with sandboxed tests; or ``--import-samples`` to score a file.

Reruns into the same ``--out`` resume; a rerun with other settings is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unmask.commands.common import CLIError, add_dataclass_arguments, add_model_arguments, from_flags, load_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    from unmask.evaluate import EditConfig, EvalConfig

    add_model_arguments(p, required=False)
    p.add_argument("--out", help="run directory (default runs/eval-BENCHMARK-MODEL); reruns resume")
    p.add_argument("--import-samples", metavar="FILE", help="score EvalPlus-format samples instead of generating")
    p.add_argument("--export-evalplus", metavar="FILE", help="also write the samples in EvalPlus jsonl format")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_arguments(p, EvalConfig, group="evaluation")
    add_dataclass_arguments(p, EditConfig, group="editing (infilling length rule, test-guided repair)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from unmask.evaluate import EditConfig, EvalConfig, summary_table

    config = from_flags(EvalConfig, args)
    edit = from_flags(EditConfig, args)
    if args.model is None and args.import_samples is None:
        raise CLIError("give MODEL to generate samples, or --import-samples FILE to score existing ones")
    name = Path(args.model).name if args.model else Path(args.import_samples).stem
    out = Path(args.out) if args.out else Path("runs") / f"eval-{config.benchmark}-{name}"
    summary = _import(args, config, out) if args.import_samples else _generate(args, config, edit, out)
    Console().print(summary_table(summary))
    print(f"results: {out / 'results.jsonl'}  summary: {out / 'summary.json'}", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace, config, out: Path) -> dict:
    from unmask.data.benchmarks import read_evalplus_samples
    from unmask.evaluate import evaluate_samples

    try:
        samples = read_evalplus_samples(args.import_samples)
    except (OSError, ValueError, TypeError) as err:
        raise CLIError(f"cannot read samples {args.import_samples}: {err}") from None
    return evaluate_samples(samples, config, out)


def _generate(args: argparse.Namespace, config, edit, out: Path) -> dict:
    from unmask.evaluate import evaluate_model, export_evalplus, load_tasks, run_settings

    model, tokenizer, decode, decoder = load_model(args)
    previous = out / "eval_config.json"
    if previous.is_file():
        if json.loads(previous.read_text()) != run_settings(config, decode, decoder, edit):
            raise CLIError(f"{out} holds a run with different settings; pass --out NEW_DIR (or delete it)")
    summary = evaluate_model(model, tokenizer, config, decode, out, progress=not args.no_progress,
                             decoder=decoder, edit=edit)
    if "repair" in summary:
        rep = summary["repair"]
        print(f"repair ({rep['rounds']} rounds): pass@1 {100 * rep['pass@1_before']:.2f}% -> "
              f"{100 * rep['pass@1_after']:.2f}%, {rep['forwards']} forwards", file=sys.stderr)
    if args.export_evalplus:
        count = export_evalplus(out, load_tasks(config), Path(args.export_evalplus), chat=config.chat)
        print(f"wrote {count} EvalPlus samples to {args.export_evalplus}", file=sys.stderr)
    return summary
