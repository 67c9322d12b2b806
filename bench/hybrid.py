"""The AR-diffusion hybrid against its parents (#21, reports/hybrid.md): a block-diffusion model's decoders (exact
KV cache) vs the full-attention diffusion model's decoders (approximate caches) and the autoregressive twin, on
the same prompts and batches in one process, so wall-clock ratios share the machine's load.

Rows, each with tokens per forward, sequential forwards, useful tokens/s, seconds, pass@1 with its Wilson
interval, and the paired count against the baseline row (tasks only this row passes / only the baseline passes,
exact McNemar p):
- ``hybrid blocks (exact)``: one token per step, the block model's native decoder;
- ``hybrid parallel τ=X (exact)``: confidence-threshold commits inside each block, one row per --thresholds;
- ``full blocks+prefix``, ``full parallel+dual τ=X``: the full-attention model's best-quality and fast decoders;
- ``autoregressive``: the twin, greedy with its KV cache.
Then a roofline projection (src/unmask/analysis/roofline.py) of every row to a GPU at 7B scale from its measured
tokens per forward: a formula from datasheet peaks, not a measurement. Prints one JSON line (with the reproduce
command); --markdown adds the tables of reports/hybrid.md, --plot the speed/quality frontier (--replot redoes
both from a saved output).

    python bench/hybrid.py --hybrid runs/hybrid/model --full models/unmask-small --ar-model runs/pipeline/ar-twin \\
        --tasks 200 --max-new-tokens 64 --block-length 8 --thresholds 0.9,0.7 --markdown
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys

import torch
from decode import DECODERS, ar_row, benchmark_prompts, device_sync, measure, sampler_config

import unmask
from unmask.analysis.roofline import ar_tokens_per_s, decoder_tokens_per_s, dtype_bytes, gpu, shape_for
from unmask.config import ModelConfig
from unmask.stats import mcnemar_exact, wilson_interval


def hybrid_settings(block: int, thresholds: list[float]) -> dict:
    rows = {"hybrid blocks (exact)": DECODERS["blocks"].replace(block_length=block)}
    for tau in thresholds:
        rows[f"hybrid parallel τ={tau:g} (exact)"] = DECODERS["parallel"].replace(block_length=block, threshold=tau)
    return rows


def full_settings(block: int, thresholds: list[float]) -> dict:
    rows = {"full blocks+prefix": DECODERS["blocks+prefix"].replace(block_length=block)}
    for tau in thresholds:
        rows[f"full parallel+dual τ={tau:g}"] = DECODERS["parallel+dual"].replace(block_length=block, threshold=tau)
    return rows


def compare(rows: dict[str, dict], baseline: str) -> None:
    """Add every row's speed ratio to ``baseline``, and to rows with per-task verdicts their Wilson interval and
    the paired count against the baseline."""
    base = rows[baseline].get("passes")
    for row in rows.values():
        row["tokens_per_s_vs_baseline"] = round(row["useful_tokens_per_s"] / rows[baseline]["useful_tokens_per_s"], 3)
        passes = row.get("passes")
        if passes is None:
            continue
        low, high = wilson_interval(passes.count("1"), len(passes))
        row["pass@1_wilson95"] = [round(low, 4), round(high, 4)]
        if base is not None:
            only_row = sum(a == "1" and b == "0" for a, b in zip(passes, base))
            only_base = sum(a == "0" and b == "1" for a, b in zip(passes, base))
            row["vs_baseline"] = {"only_this": only_row, "only_baseline": only_base,
                                  "mcnemar_p": round(mcnemar_exact(only_row, only_base), 4)}


def project(rows: dict[str, dict], args) -> dict:
    """Projected tokens/s of every row on ``--gpu`` at ``--project-model`` scale, batch 1 and 8, from its measured
    tokens per forward and its forward shape (``roofline.shape_for``)."""
    config = ModelConfig.from_name(args.project_model)
    device, p = gpu(args.gpu), dtype_bytes("bf16")
    prompt, new = args.project_prompt, args.max_new_tokens
    out = {}
    for name, row in rows.items():
        if name == "autoregressive":
            rates = {b: ar_tokens_per_s(config, device, prompt=prompt, new=new, batch=b, bytes_per_value=p)
                     for b in (1, 8)}
        else:
            shape = shape_for(name, row["tokens_per_forward"], prompt=prompt, new=new, block=args.block_length)
            rates = {b: decoder_tokens_per_s(config, device, shape, prompt=prompt, new=new, batch=b,
                                             bytes_per_value=p) for b in (1, 8)}
        out[name] = {str(b): round(r, 1) for b, r in rates.items()}
    return {"model": args.project_model, "gpu": device.name, "prompt_length": prompt, "max_new_tokens": new,
            "note": "roofline projection from datasheet peaks, not a measurement", "tokens_per_s": out}


def markdown(result: dict) -> str:
    lines = ["| decoder | tok/fwd | sequential forwards | useful tok/s | tok/s vs baseline | pass@1 [Wilson 95%] | "
             "vs baseline (only this / only baseline, p) |", "|---" * 7 + "|"]
    for name, row in result["decoders"].items():
        low, high = row.get("pass@1_wilson95", (float("nan"), float("nan")))
        paired = row.get("vs_baseline", {})
        pair = f"{paired['only_this']} / {paired['only_baseline']}, p = {paired['mcnemar_p']:.2f}" if paired else ""
        lines.append(f"| {name} | {row['tokens_per_forward']:.2f} | {row['forward_passes']} | "
                     f"{row['useful_tokens_per_s']:.1f} | {row['tokens_per_s_vs_baseline']:.2f}× | "
                     f"{100 * row.get('pass@1', float('nan')):.1f}% [{100 * low:.1f}, {100 * high:.1f}] | {pair} |")
    proj = result["projection"]
    lines += ["", f"Projected on {proj['gpu']} at {proj['model']} scale (prompt {proj['prompt_length']}, "
              f"{proj['max_new_tokens']} new tokens; {proj['note']}):", "",
              "| decoder | tokens/s, batch 1 | tokens/s, batch 8 |", "|---|---|---|"]
    for name, rates in proj["tokens_per_s"].items():
        lines.append(f"| {name} | {rates['1']:.0f} | {rates['8']:.0f} |")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    """The speed/quality frontier of the result's rows: pass@1 with its interval vs useful tokens/s, one line per
    model (hybrid, full attention, autoregressive)."""
    from unmask.analysis.plots import plot_speed_quality

    points = []
    for name, row in result["decoders"].items():
        if "pass@1" not in row:
            continue
        if name == "autoregressive":
            model, label = "autoregressive twin", "KV cache"
        else:
            model = name.split(" ")[0]
            label = name.removeprefix(model).replace("(exact)", "").strip()
        low, high = row["pass@1_wilson95"]
        points.append({"model": model, "label": label, "tokens_per_s": row["useful_tokens_per_s"],
                       "pass@1": row["pass@1"], "low": low, "high": high})
    if not points:
        raise SystemExit("no row has a pass@1 to plot (was the run made with --no-exec?)")
    plot_speed_quality(points, path, title=f"{result['tasks']} tasks, {result['max_new_tokens']} new tokens, "
                       f"{result['device']}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hybrid", default=None, help="a block-diffusion model directory (config block_size set)")
    parser.add_argument("--full", default=None, help="the full-attention diffusion model to compare with")
    parser.add_argument("--ar-model", default=None, help="the autoregressive twin (a causal checkpoint)")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--benchmark", default="synthetic", help="synthetic (held-out split) or an eval benchmark")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=None, help="default: the hybrid's block_size")
    parser.add_argument("--thresholds", default="0.9", help="comma-separated parallel thresholds (one row each)")
    parser.add_argument("--baseline", default=None, help="row to pair against (default: full blocks+prefix if "
                        "--full, else hybrid blocks (exact))")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--project-model", default="dream-7b", help="preset the projection is made for")
    parser.add_argument("--project-prompt", type=int, default=256, help="prompt length of the projection")
    parser.add_argument("--gpu", default="h200", help="GPU preset of the projection")
    parser.add_argument("--no-exec", action="store_true", help="skip the sandbox (timing only)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--plot", default=None, help="write the speed/quality frontier PNG here")
    parser.add_argument("--replot", default=None, help="a saved output of this script: only redo its --markdown "
                        "and --plot, measuring nothing")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.hybrid is None and args.replot is None:
        parser.error("--hybrid is required (or --replot a saved result)")
    args.steps, args.alg, args.temperature, args.no_early_stop = None, "entropy", 0.0, False  # decode.measure's
    return args


def report(result: dict, args) -> None:
    if args.markdown:
        print(markdown(result))
    if args.plot:
        plot(result, args.plot)


def main() -> None:
    args = parse_args()
    if args.replot:
        with open(args.replot, encoding="utf-8") as f:
            result = json.loads(next(line for line in f if line.startswith("{")))
        report(result, args)
        return
    hybrid, tokenizer = unmask.load(args.hybrid, dtype=args.dtype, device=args.device)
    size = getattr(hybrid.config, "block_size", None)
    if size is None:
        raise SystemExit(f"--hybrid {args.hybrid} is not a block-diffusion model (its config has no block_size)")
    args.block_length = args.block_length or size
    thresholds = [float(x) for x in args.thresholds.split(",") if x.strip()]
    tasks, prompts = benchmark_prompts(args, tokenizer)
    rows, _ = measure(hybrid, tokenizer, tasks, prompts, sampler_config(hybrid, args),
                      hybrid_settings(args.block_length, thresholds), args)
    del hybrid
    if args.full:
        full, _ = unmask.load(args.full, dtype=args.dtype, device=args.device)
        full_rows, _ = measure(full, tokenizer, tasks, prompts, sampler_config(full, args),
                               full_settings(args.block_length, thresholds), args)
        rows.update(full_rows)
        del full
    if args.ar_model:
        rows["autoregressive"] = ar_row(args, tasks, prompts, tokenizer.special.pad, tokenizer.special.stop_ids(),
                                        device_sync(args.device))
    baseline = args.baseline or ("full blocks+prefix" if args.full else "hybrid blocks (exact)")
    if baseline not in rows:
        raise SystemExit(f"--baseline {baseline!r} is not a row: {list(rows)}")
    compare(rows, baseline)
    result = {"bench": "hybrid", "hybrid": args.hybrid, "full": args.full, "ar_model": args.ar_model,
              "device": args.device, "cpu_threads": torch.get_num_threads(), "benchmark": args.benchmark,
              "tasks": len(tasks), "seed": args.seed, "batch": args.batch, "max_new_tokens": args.max_new_tokens,
              "block_length": args.block_length, "baseline": baseline, "decoders": rows,
              "projection": project(rows, args), "torch": torch.__version__, "python": platform.python_version(),
              "command": "python bench/hybrid.py " + shlex.join(sys.argv[1:])}
    print(json.dumps(result, ensure_ascii=False))
    report(result, args)


if __name__ == "__main__":
    main()
