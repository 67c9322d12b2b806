"""``unmask arness MODEL``: AR-ness and pass@k across temperatures (a resumable sweep, docs/arness.md); or
``unmask arness --trace FILE [MODEL]``: the AR-ness (and a picture) of one saved decode trace."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unmask.commands.common import CLIError, add_dataclass_arguments, add_model_arguments, from_flags, load_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    from unmask.evaluate import EvalConfig

    add_model_arguments(p, required=False,
                        sampler="sampler (defaults: the model's generation_config.json; steps = max_new_tokens)")
    p.add_argument("--trace", metavar="FILE", help="analyse this saved decode trace instead of sweeping "
                                                   "(MODEL then only gives token texts for the picture)")
    p.add_argument("--row", type=int, default=0, help="which row of the trace (default 0)")
    p.add_argument("--png", metavar="OUT.png", help="with --trace: decode-order picture (heat map without MODEL)")
    p.add_argument("--json", action="store_true", help="with --trace: print one JSON object")
    p.add_argument("--temperatures", default="0.2,0.6,1.0,1.2", help="comma-separated sampling temperatures")
    p.add_argument("--positions", default="region", choices=("region", "content"),
                   help="AR-ness over the whole generated region, or only before the first pad/EOS")
    p.add_argument("--pass-k", help="comma-separated k of pass@k (default: 1 and --samples)")
    p.add_argument("--out", help="report directory (default runs/arness-BENCHMARK-MODEL); reruns resume")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_arguments(p, EvalConfig, group="evaluation")


def _number_list(text: str, flag: str, kind: type) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CLIError(f"{flag} must be a comma-separated list of {kind.__name__}s, got {text!r}") from None
    if not values:
        raise CLIError(f"{flag} is empty")
    return values


def run(args: argparse.Namespace) -> int:
    if args.trace:
        return _trace(args)
    from unmask.analysis.sweep import SweepConfig, run_sweep
    from unmask.evaluate import EvalConfig, check_context, load_tasks

    if args.model is None:
        raise CLIError("give MODEL to run a temperature sweep, or --trace FILE to analyse a saved trace")
    if args.temperature is not None:
        raise CLIError("the sweep sets the temperature itself: use --temperatures 0.2,0.6,1.0,1.2")
    if args.png:
        raise CLIError("--png is for --trace FILE; a sweep writes its plots into --out")
    sweep = SweepConfig(temperatures=_number_list(args.temperatures, "--temperatures", float),
                        positions=args.positions,
                        pass_ks=_number_list(args.pass_k, "--pass-k", int) if args.pass_k else None)
    eval_config = from_flags(EvalConfig, args)
    model, tokenizer, decode, decoder = load_model(args)
    if args.steps is None:  # one token per step, as the paper measures AR-ness
        decode = decode.replace(steps=decode.max_new_tokens)
    check_context(model, tokenizer, load_tasks(eval_config), eval_config.chat, decode.max_new_tokens)
    out = Path(args.out) if args.out else Path("runs") / f"arness-{eval_config.benchmark}-{Path(args.model).name}"
    report = run_sweep(model, tokenizer, sweep, eval_config, decode, out, progress=not args.no_progress,
                       decoder=decoder)
    sys.stdout.write((out / "summary.md").read_text(encoding="utf-8"))  # markdown: printed as is, never wrapped
    if report["plots_skipped"]:
        print(f"plots skipped: {report['plots_skipped']}", file=sys.stderr)
    print(f"report: {out / 'arness.json'}  summary: {out / 'summary.md'}", file=sys.stderr)
    return 0


def _trace(args: argparse.Namespace) -> int:
    from unmask.analysis.sweep import analyse_trace
    from unmask.decoding.trace import DecodeTrace

    try:
        trace = DecodeTrace.load(args.trace)
    except ValueError as err:
        raise CLIError(str(err)) from None
    tokenizer = None
    if args.model:
        from unmask.checkpoint import read_config
        from unmask.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.model, read_config(args.model)[2])
    try:
        result = analyse_trace(trace, args.row, positions=args.positions,
                               stop_ids=tokenizer.special.stop_ids() if tokenizer else None)
    except ValueError as err:
        raise CLIError(f"{args.trace}: {err}") from None
    texts = None
    if tokenizer is not None:  # never-committed positions (if any) show as the mask token
        texts = tokenizer.token_texts([tokenizer.special.mask if t is None else t for t in result["tokens"]])
    if args.png:
        _picture(args, trace, result, texts)
    if args.json:
        print(json.dumps(result))
        return 0
    _print_trace_report(args, result, texts)
    if args.png:
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


def _picture(args: argparse.Namespace, trace, result: dict, texts) -> None:
    from unmask.analysis import plots

    try:
        if texts is not None:
            plots.plot_decode_order(texts, result["commit_step"], args.png, revised=result["revised"],
                                    title=f"{Path(args.trace).name}: tokens coloured by commit step"
                                          + (" (framed: revised)" if any(result["revised"]) else ""))
        else:
            plots.plot_decode_heatmap(trace.order(args.row, drop_empty=False), result["length"], args.png)
    except ImportError as err:
        raise CLIError(str(err)) from None


def _print_trace_report(args: argparse.Namespace, result: dict, texts) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if texts is not None:
        from unmask.analysis.terminal import render_decode_order

        console.rule("decode order (early blue -> late red)")
        console.print(render_decode_order(texts, result["commit_step"]))
    table = Table(title=f"AR-ness of {args.trace} row {args.row} ({result['positions']}: "
                        f"{result['length']} positions, {result['useful']} before the first stop)")
    table.add_column("k", justify="right")
    table.add_column("local AR-ness@k", justify="right")
    table.add_column("global AR-ness@k", justify="right")
    for k in sorted({*result["local"], *result["global"]}, key=int):
        cells = [f"{result[kind][k]:.4f}" if k in result[kind] else "" for kind in ("local", "global")]
        table.add_row(k, *cells)
    console.print(table)
