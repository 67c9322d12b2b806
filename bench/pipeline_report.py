"""Report on the DiffuCoder-style pipeline (recipes/diffucoder-mini.sh): training curves, costs and evaluations.

    PYTHONPATH=src python bench/pipeline_report.py runs/pipeline --out reports/pipeline \\
        --pair diffusion-heldout ar-twin-heldout

Reads the training stages (``--stage NAME=DIR`` in order, by default whichever of stage1-ar, ar-sft and
diffusion-sft exist under the run root) and every evaluation under RUN_DIR/eval (a subdirectory with a
summary.json; ``--eval NAME=DIR`` adds one from elsewhere). Writes OUT/loss.png (train and validation loss per
stage against cumulative tokens; AR and diffusion losses are different quantities, so each stage has its own
panel), OUT/results.json (every number)
and OUT/table.md (the tables for reports/pipeline.md). ``--pair A B`` compares two evaluations task by task:
tasks passed by both / only A / only B / neither and the exact McNemar p-value. Evaluations named in ``--ar``
(default: names starting with ``ar-``) are of a causal model, which decodes left to right whatever the
sampler settings say. Prints one JSON line of the main results, with the command that reproduces it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unmask.errors import ConfigError
from unmask.evaluate import read_results
from unmask.modelcard import decoder_words, eval_summary, objective_words, pass_interval, read_metrics, run_summary
from unmask.stats import mcnemar_exact, paired_counts

DEFAULT_STAGES = ("stage1-ar", "ar-sft", "diffusion-sft")


def find_stages(root: Path, given: Sequence[str]) -> list[tuple[str, Path]]:
    """(name, run dir) per stage: ``NAME=DIR`` items (DIR relative to the run root unless absolute), else the
    default stage directories that exist."""
    if not given:
        return [(name, root / name) for name in DEFAULT_STAGES if (root / name / "metrics.jsonl").is_file()]
    stages = []
    for item in given:
        name, sep, path = item.partition("=")
        if not (sep and name and path):
            raise SystemExit(f"--stage expects NAME=DIR, got {item!r}")
        stages.append((name, root / path))  # an absolute path replaces the root
    return stages


def find_evals(root: Path) -> list[tuple[str, Path]]:
    """Every evaluation directory under ``root/eval`` (one with a summary.json), by name."""
    base = root / "eval"
    if not base.is_dir():
        return []
    return [(d.name, d) for d in sorted(base.iterdir()) if (d / "summary.json").is_file()]


def stage_numbers(name: str, run_dir: Path) -> dict[str, Any]:
    run = run_summary(run_dir)
    return {
        "name": name, "objective": objective_words(run["config"]), "steps": run["steps"], "tokens": run["tokens"],
        "compute_minutes": run["seconds"] / 60, "loss": run["loss"], "val_loss": run["val_loss"],
        "val_response_loss": run["val_response_loss"],
    }


def eval_numbers(name: str, eval_dir: Path, *, causal: bool) -> dict[str, Any]:
    ev = eval_summary(eval_dir)
    summary = ev["summary"]
    passed, n, lo, hi = pass_interval(summary)
    completions = [r.completion for r in read_results(eval_dir / "results.jsonl")]
    return {
        "name": name, "benchmark": summary["benchmark"], "seed": ev["eval"].get("seed"), "n": n, "passed": passed,
        "pass@1": summary["pass@k"]["pass@1"], "wilson95": [lo, hi],
        "decoder": decoder_words(ev["decoder"], stop_last=bool(ev["decode"].get("stop_last")), causal=causal),
        "mean_completion_chars": statistics.fmean(len(c) for c in completions) if completions else None,
        "error_kinds": summary.get("error_kinds", {}),
    }


def outcomes(eval_dir: Path) -> dict[tuple[str, int], bool]:
    """Pass/fail per (task id, sample) from results.jsonl."""
    return {(r.task_id, r.sample): r.verdict == "passed" for r in read_results(eval_dir / "results.jsonl")}


def pair_numbers(a_name: str, a_dir: Path, b_name: str, b_dir: Path) -> dict[str, Any]:
    """The paired comparison of two evaluations over the (task, sample) pairs both scored."""
    counts = paired_counts(outcomes(a_dir), outcomes(b_dir))
    n = counts["both"] + counts["only_a"] + counts["only_b"] + counts["neither"]
    return {"a": a_name, "b": b_name, "n": n, **counts, "mcnemar_p": mcnemar_exact(counts["only_a"], counts["only_b"])}


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def stages_table(stages: Sequence[dict[str, Any]]) -> str:
    lines = ["| stage | objective | steps | tokens | CPU time | final loss | val loss | val response loss |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for s in stages:
        lines.append(f"| {s['name']} | {s['objective']} | {s['steps']} | {s['tokens']:,} | "
                     f"{s['compute_minutes']:.1f} min | {_num(s['loss'])} | {_num(s['val_loss'])} | "
                     f"{_num(s['val_response_loss'])} |")
    total = sum(s["compute_minutes"] for s in stages)
    lines.append(f"| total | | {sum(s['steps'] for s in stages)} | {sum(s['tokens'] for s in stages):,} | "
                 f"{total:.1f} min | | | |")
    return "\n".join(lines)


def evals_table(evals: Sequence[dict[str, Any]]) -> str:
    lines = ["| eval | benchmark | n | pass@1 | 95% CI | decoder | mean completion chars |",
             "|---|---|---:|---:|---|---|---:|"]
    for e in evals:
        lo, hi = e["wilson95"]
        lines.append(f"| {e['name']} | {e['benchmark']} (seed {e['seed']}) | {e['n']} | {100 * e['pass@1']:.1f}% | "
                     f"[{100 * lo:.1f}, {100 * hi:.1f}] | {e['decoder']} | {_num(e['mean_completion_chars'], 1)} |")
    return "\n".join(lines)


def pairs_table(pairs: Sequence[dict[str, Any]]) -> str:
    lines = ["| A | B | paired samples | both | only A | only B | neither | exact McNemar p |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for p in pairs:
        lines.append(f"| {p['a']} | {p['b']} | {p['n']} | {p['both']} | {p['only_a']} | {p['only_b']} | "
                     f"{p['neither']} | {p['mcnemar_p']:.4g} |")
    return "\n".join(lines)


def _loss_label(objective: str) -> str:
    if objective.startswith("AR next"):
        return "next-token CE (nats/token)"
    return "masked-diffusion ELBO (nats/token)"


def plot_losses(curves: Sequence[tuple[dict[str, Any], list[dict[str, Any]]]], path: Path) -> None:
    """One panel per stage: train loss, val loss (and val response loss) against tokens since the pipeline began."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.6), squeeze=False)
    offset = 0
    for ax, (stage, rows) in zip(axes[0], curves):
        x = [(offset + r["tokens"]) / 1e6 for r in rows]
        ax.plot(x, [r["loss"] for r in rows], color="C0", label="train")
        for key, color, label in (("val_loss", "C3", "val"), ("val_response_loss", "C2", "val (response only)")):
            pts = [((offset + r["tokens"]) / 1e6, r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), "o-", color=color, label=label, markersize=4)
        ax.set_title(f"{stage['name']}: {stage['objective']}", fontsize=9)
        ax.set_xlabel("cumulative tokens (M)")
        ax.set_ylabel(_loss_label(stage["objective"]), fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        offset += stage["tokens"]
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def extra_evals(root: Path, items: Sequence[str]) -> dict[str, Path]:
    """``NAME=DIR`` evaluations from elsewhere (DIR relative to the run root unless absolute), e.g. another
    pipeline's, to compare with this one's."""
    found = {}
    for item in items:
        name, sep, where = item.partition("=")
        path = Path(where) if Path(where).is_absolute() else root / where
        if not sep or not name or not (path / "summary.json").is_file():
            raise SystemExit(f"--eval {item!r}: expected NAME=DIR with DIR an evaluation (it has a summary.json)")
        found[name] = path
    return found


def report(root: Path, stage_items: Sequence[str], pair_items: Sequence[Sequence[str]],
           ar_names: Sequence[str] | None, eval_items: Sequence[str] = ()) -> tuple[dict[str, Any], list]:
    """Every number of the report, and the (stage, metric rows) curves for the plot."""
    stage_dirs = find_stages(root, stage_items)
    eval_dirs = {**dict(find_evals(root)), **extra_evals(root, eval_items)}
    missing = sorted({name for pair in pair_items for name in pair} - eval_dirs.keys())
    if missing:
        raise SystemExit(f"--pair names no evaluation under {root / 'eval'}: {', '.join(missing)}")
    causal = (lambda name: name in ar_names) if ar_names is not None else (lambda name: name.startswith("ar-"))
    stages = [stage_numbers(name, path) for name, path in stage_dirs]
    curves = [(stage, read_metrics(path)) for stage, (_, path) in zip(stages, stage_dirs)]
    evals = [eval_numbers(name, path, causal=causal(name)) for name, path in eval_dirs.items()]
    pairs = [pair_numbers(a, eval_dirs[a], b, eval_dirs[b]) for a, b in pair_items]
    return {"root": str(root), "stages": stages, "evals": evals, "pairs": pairs}, curves


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the pipeline's run root (runs/pipeline)")
    parser.add_argument("--out", type=Path, default=Path("reports/pipeline"), help="where the files go")
    parser.add_argument("--stage", action="append", default=[], metavar="NAME=DIR",
                        help="a training stage, in order; DIR relative to the run root (default: "
                             + ", ".join(DEFAULT_STAGES) + " where present)")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="compare two evaluations (names under RUN_DIR/eval) task by task")
    parser.add_argument("--eval", action="append", default=[], metavar="NAME=DIR",
                        help="also an evaluation outside RUN_DIR/eval (DIR relative to the run root unless "
                             "absolute), e.g. another run's to pair with")
    parser.add_argument("--ar", action="append", default=None, metavar="NAME",
                        help="an evaluation of a causal model (repeatable; default: names starting with ar-)")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        raise SystemExit(f"{args.root} is not a directory (run recipes/diffucoder-mini.sh first)")
    try:
        results, curves = report(args.root, args.stage, args.pair, args.ar, args.eval)
    except ConfigError as err:  # a missing or empty run file: one line, not a traceback
        raise SystemExit(f"error: {err}") from None
    if not results["stages"] and not results["evals"]:
        raise SystemExit(f"no training stage or evaluation under {args.root}")
    results["command"] = "PYTHONPATH=src python " + shlex.join(["bench/pipeline_report.py", *argv])
    args.out.mkdir(parents=True, exist_ok=True)
    if curves:
        plot_losses(curves, args.out / "loss.png")
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    tables = ["### Training stages", "", stages_table(results["stages"]), "", "### Evaluations", "",
              evals_table(results["evals"])]
    if results["pairs"]:
        tables += ["", "### Paired comparisons (same tasks)", "", pairs_table(results["pairs"])]
    (args.out / "table.md").write_text("\n".join(tables) + "\n")
    print("\n".join(tables))
    print(json.dumps(_headline(results)))
    return 0


def _headline(results: dict[str, Any]) -> dict[str, Any]:
    """The main results on one line: final losses, pass@1 with its interval, pair p-values, and the command."""
    return {
        "bench": "pipeline_report",
        "stages": {s["name"]: {"loss": s["loss"], "val_loss": s["val_loss"], "minutes": round(s["compute_minutes"], 1)}
                   for s in results["stages"]},
        "pass@1": {e["name"]: [e["pass@1"], *(round(v, 4) for v in e["wilson95"])] for e in results["evals"]},
        "pairs": {f"{p['a']} vs {p['b']}": [p["only_a"], p["only_b"], p["mcnemar_p"]] for p in results["pairs"]},
        "command": results["command"],
    }


if __name__ == "__main__":
    sys.exit(main())
