"""Tables and plots of the RL ablation (recipes/rl-ablation.sh): one row per arm, seeds pooled.

Reads each job directory of the ablation (``sft``, ``ESTIMATOR-tTEMP-sSEED``): held-out greedy pass@1
(``eval-heldout``), fresh train-distribution greedy pass@1 (``eval-train-dist``), pass@1 / pass@10 and
AR-ness from 10 samples per task at temperature 1.0 (``arness``), and the RL run's metrics. Prints a
Markdown report body (per-arm mean with the per-seed values, and the spread), writes
``arms.png`` / ``rewards.png`` next to ``--png-dir`` and a JSON line of every number to ``--json``.

    python bench/rl_report.py runs/rl-ablation --png-dir reports/rl-ablation --json reports/rl-ablation/results.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path

ARMS = ("sft", "diffu-grpo-t1.2", "decoupled-t1.2", "coupled-t1.2", "coupled-t1.0")
JOB = re.compile(r"^(?P<arm>.+-t\d+(?:\.\d+)?)-s(?P<seed>\d+)$")


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def job_numbers(job: Path) -> dict | None:
    """Every number of one finished job, or None when it has not finished."""
    if not (job / "done").exists():
        return None
    heldout = _load(job / "eval-heldout" / "summary.json")
    train = _load(job / "eval-train-dist" / "summary.json")
    arness = _load(job / "arness" / "arness.json")
    if not (heldout and train and arness):
        return None
    sweep = arness["temperatures"][0]
    content = sweep["arness_other_positions"] if arness["positions"] == "region" else sweep["arness"]
    row = {
        "heldout_pass@1": heldout["pass@k"]["pass@1"],
        "heldout_tasks": heldout["tasks"],
        "train_dist_pass@1": train["pass@k"]["pass@1"],
        "train_dist_tasks": train["tasks"],
        "sampled_pass@1": sweep["pass@k"]["pass@1"],
        "sampled_pass@10": sweep["pass@k"]["pass@10"],
        "sampled_tasks": sweep["tasks"],
        "local@1": content["local"]["mean"][0],
        "global@1": content["global"]["mean"][0],
    }
    metrics_path = job / "rl" / "metrics.jsonl"
    if metrics_path.exists():
        lines = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
        row["rl_steps"] = len(lines)
        row["rl_seconds"] = round(sum(x["step_s"] for x in lines), 1)
        row["rollout_seconds"] = round(sum(x["rollout_s"] for x in lines), 1)
        row["update_seconds"] = round(sum(x["update_s"] for x in lines), 1)
        row["reward_first_half"] = statistics.fmean(x["reward_mean"] for x in lines[: max(1, len(lines) // 2)])
        row["reward_second_half"] = statistics.fmean(x["reward_mean"] for x in lines[len(lines) // 2:])
        row["rollout_pass_rate"] = [x["pass_rate"] for x in lines]
        row["reward_curve"] = [x["reward_mean"] for x in lines]
        row["kl_last"] = lines[-1]["kl"]
        row["kl_max"] = max(x["kl"] for x in lines)
        row["grad_norm_mean"] = statistics.fmean(x["grad_norm"] for x in lines)
        row["grad_norm_max"] = max(x["grad_norm"] for x in lines)
        row["clip_fraction_mean"] = statistics.fmean(x["clip_fraction"] for x in lines)
    return row


def collect(root: Path) -> dict[str, dict[int, dict]]:
    arms: dict[str, dict[int, dict]] = {}
    for job in sorted(p for p in root.iterdir() if p.is_dir()):
        numbers = job_numbers(job)
        if numbers is None:
            continue
        if job.name == "sft":
            arms.setdefault("sft", {})[0] = numbers
            continue
        match = JOB.match(job.name)
        if match:
            arms.setdefault(match["arm"], {})[int(match["seed"])] = numbers
    return arms


def _fmt(values: list[float], pct: bool = True, digits: int = 1) -> str:
    scale = 100 if pct else 1
    mean = statistics.fmean(values) * scale
    text = f"{mean:.{digits}f}"
    if len(values) > 1:
        text += f" ± {statistics.stdev(values) * scale:.{digits}f}"
        text += " (" + ", ".join(f"{v * scale:.{digits}f}" for v in values) + ")"
    return text


def table(arms: dict[str, dict[int, dict]]) -> str:
    order = [a for a in ARMS if a in arms] + sorted(a for a in arms if a not in ARMS)
    lines = ["| arm | seeds | held-out pass@1 (greedy) | held-out pass@1 (T=1.0) | held-out pass@10 (T=1.0) | "
             "train-dist pass@1 (greedy) | global AR-ness@1 | local AR-ness@1 | RL wall s (rollout / update) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arm in order:
        runs = [arms[arm][s] for s in sorted(arms[arm])]
        wall = ""
        if "rl_seconds" in runs[0]:
            wall = (f"{statistics.fmean(r['rl_seconds'] for r in runs):.0f} "
                    f"({statistics.fmean(r['rollout_seconds'] for r in runs):.0f} / "
                    f"{statistics.fmean(r['update_seconds'] for r in runs):.0f})")
        lines.append(
            f"| {arm} | {', '.join(map(str, sorted(arms[arm]))) if arm != 'sft' else '—'} "
            f"| {_fmt([r['heldout_pass@1'] for r in runs])} | {_fmt([r['sampled_pass@1'] for r in runs])} "
            f"| {_fmt([r['sampled_pass@10'] for r in runs])} | {_fmt([r['train_dist_pass@1'] for r in runs])} "
            f"| {_fmt([r['global@1'] for r in runs], pct=False, digits=3)} "
            f"| {_fmt([r['local@1'] for r in runs], pct=False, digits=3)} | {wall} |")
    return "\n".join(lines)


def dynamics_table(arms: dict[str, dict[int, dict]]) -> str:
    """How each estimator's updates behaved: gradient norms and the k3 KL to the reference, seeds pooled."""
    lines = ["| arm | mean grad norm | max grad norm | max KL | final KL | mean clip fraction |",
             "|---|---|---|---|---|---|"]
    for arm in [a for a in ARMS if a in arms and a != "sft"]:
        runs = [arms[arm][s] for s in sorted(arms[arm]) if "grad_norm_mean" in arms[arm][s]]
        if not runs:
            continue
        lines.append(f"| {arm} | {statistics.fmean(r['grad_norm_mean'] for r in runs):.2f} "
                     f"| {max(r['grad_norm_max'] for r in runs):.2f} | {max(r['kl_max'] for r in runs):.3f} "
                     f"| {statistics.fmean(r['kl_last'] for r in runs):.3f} "
                     f"| {statistics.fmean(r['clip_fraction_mean'] for r in runs):.4f} |")
    return "\n".join(lines)


def plots(arms: dict[str, dict[int, dict]], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out.mkdir(parents=True, exist_ok=True)
    order = [a for a in ARMS if a in arms]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in zip(axes, ("heldout_pass@1", "sampled_pass@10", "train_dist_pass@1"),
                              ("held-out pass@1 (greedy)", "held-out pass@10 (T=1.0)", "train-dist pass@1 (greedy)")):
        for x, arm in enumerate(order):
            values = [100 * arms[arm][s][key] for s in sorted(arms[arm])]
            ax.scatter([x] * len(values), values, color="C0", alpha=0.7, zorder=3)
            ax.hlines(statistics.fmean(values), x - 0.3, x + 0.3, color="C3", zorder=4)
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "arms.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, arm in enumerate(a for a in order if a != "sft"):
        curves = [arms[arm][s]["reward_curve"] for s in sorted(arms[arm]) if "reward_curve" in arms[arm][s]]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        mean = [statistics.fmean(c[j] for c in curves) for j in range(n)]
        ax.plot(range(1, n + 1), mean, label=arm, color=f"C{i}")
    ax.set_xlabel("RL step")
    ax.set_ylabel("rollout reward (mean over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "rewards.png", dpi=120)
    plt.close(fig)
    return ["arms.png", "rewards.png"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the ablation's run root (runs/rl-ablation)")
    parser.add_argument("--png-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    args = parser.parse_args()
    if not args.root.is_dir():
        raise SystemExit(f"{args.root} is not a directory (run recipes/rl-ablation.sh first)")
    arms = collect(args.root)
    if not arms:
        raise SystemExit(f"no finished job in {args.root}")
    print(table(arms))
    print()
    print(dynamics_table(arms))
    if args.png_dir:
        made = plots(arms, args.png_dir)
        if made:
            print("\n" + " ".join(f"![{m}]({m})" for m in made))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({arm: {str(s): v for s, v in seeds.items()} for arm, seeds in arms.items()},
                                        indent=1) + "\n")
    # the spread a difference has to beat: the binomial standard error of one held-out pass@1 measurement
    if "sft" in arms:
        p, n = arms["sft"][0]["heldout_pass@1"], arms["sft"][0]["heldout_tasks"]
        print(f"\nOne held-out greedy pass@1 on {n} tasks has a binomial standard error of "
              f"{100 * math.sqrt(max(p * (1 - p), 1e-9) / n):.1f} points at p = {100 * p:.1f}%.")


if __name__ == "__main__":
    main()
