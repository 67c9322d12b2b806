"""Numbers, tables and plots of the paper's findings on the default model (recipes/findings.sh, #16).

    PYTHONPATH=src python bench/findings_report.py runs/findings --out reports/findings

Reads the job directories of ``recipes/findings.sh``: ``base`` and ``ARM-sSEED`` (greedy held-out pass@1 at the
full and at half the decoding steps, the RL run's metrics), ``temps-MODEL`` (``unmask arness`` sweeps over
temperatures), ``passk-MODEL`` (10 samples per task at the rollout temperature), ``base-nocache`` (the greedy
evaluation without the prefix cache) and OUT/estimator_variance.json (``bench/estimator_variance.py``). Writes
OUT/results.json (every number), OUT/tables.md (the tables of reports/findings.md) and the plots rewards.png,
arms.png, arness_temperature.png and passk_temperature.png. Paired comparisons pair the same task (and, between
RL arms, the same seed); the McNemar p-value of pooled seeds treats the 3 × N pairs as independent, which they
are not quite (the same task appears once per seed), so the per-seed tests are listed as well.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unmask.evaluate import read_results
from unmask.stats import mcnemar_exact, paired_counts, wilson_interval

ARMS = ("coupled", "decoupled", "diffu-grpo")
JOB = re.compile(r"^(?P<arm>[a-z0-9.-]+?)-s(?P<seed>\d+)$")  # coupled-s0, coupled-t1.0-s2, coupled-loo-s1
Outcomes = dict[tuple[str, int], bool]


def arm_order(names) -> list[str]:
    """The paper's arms in ARMS order, then variants (coupled-t1.0, coupled-loo …) by name."""
    return [a for a in ARMS if a in names] + sorted(set(names) - set(ARMS))


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def outcomes(eval_dir: Path) -> Outcomes | None:
    """Pass/fail per (task, sample) of a finished evaluation (its summary.json written), else None."""
    if not (eval_dir / "summary.json").is_file():
        return None
    return {(r.task_id, r.sample): r.verdict == "passed" for r in read_results(eval_dir / "results.jsonl")}


def rate(result: Outcomes) -> dict[str, Any]:
    passed, n = sum(result.values()), len(result)
    return {"passed": passed, "n": n, "pass@1": passed / n, "wilson95": list(wilson_interval(passed, n))}


def paired(a: Outcomes, b: Outcomes) -> dict[str, Any]:
    counts = paired_counts(a, b)
    return {**counts, "mcnemar_p": mcnemar_exact(counts["only_a"], counts["only_b"])}


def pooled(pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Discordant counts summed over seeds, with the McNemar p of the sums."""
    only_a, only_b = sum(p["only_a"] for p in pairs), sum(p["only_b"] for p in pairs)
    return {"only_a": only_a, "only_b": only_b, "mcnemar_p": mcnemar_exact(only_a, only_b)}


def rl_numbers(metrics: Path) -> dict[str, Any] | None:
    if not metrics.is_file():
        return None
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    if not lines:
        return None
    half = max(1, len(lines) // 2)
    return {
        "steps": len(lines), "seconds": round(sum(x["step_s"] for x in lines), 1),
        "rollout_seconds": round(sum(x["rollout_s"] for x in lines), 1),
        "update_seconds": round(sum(x["update_s"] for x in lines), 1),
        "reward_curve": [x["reward_mean"] for x in lines], "pass_rate_curve": [x["pass_rate"] for x in lines],
        "reward_first_half": statistics.fmean(x["reward_mean"] for x in lines[:half]),
        "reward_second_half": statistics.fmean(x["reward_mean"] for x in lines[half:]),
        "grad_norm_mean": statistics.fmean(x["grad_norm"] for x in lines),
        "grad_norm_max": max(x["grad_norm"] for x in lines),
        "kl_max": max(x["kl"] for x in lines), "kl_last": lines[-1]["kl"],
        "clip_fraction_mean": statistics.fmean(x["clip_fraction"] for x in lines),
    }


def collect(root: Path) -> dict[str, Any]:
    """The finished evaluations of every job: {"base": {...}, "runs": {arm: {seed: {...}}}, sweeps, pass@k}."""
    found: dict[str, Any] = {"base": {}, "runs": {}, "temps": {}, "passk": {}}
    for job in sorted(p for p in root.iterdir() if p.is_dir()):
        evals = {name: outcomes(job / f"eval-{name}") for name in ("heldout", "heldout-half")}
        evals = {k: v for k, v in evals.items() if v is not None}
        if job.name == "base":
            found["base"] = evals
        elif job.name == "base-nocache" and "heldout" in evals:
            found["base_nocache"] = evals["heldout"]
        elif job.name.startswith("temps-"):
            sweep = _json(job / "arness" / "arness.json")
            if sweep:
                found["temps"][job.name[len("temps-"):]] = sweep
        elif job.name.startswith("passk-"):
            summary = _json(job / "eval-heldout-t1.2" / "summary.json")
            if summary:
                found["passk"][job.name[len("passk-"):]] = {**summary,
                                                            "outcomes": outcomes(job / "eval-heldout-t1.2")}
        elif (match := JOB.match(job.name)) and evals:
            run = {"evals": evals, "rl": rl_numbers(job / "rl" / "metrics.jsonl")}
            found["runs"].setdefault(match["arm"], {})[int(match["seed"])] = run
    return found


def arm_numbers(found: dict[str, Any]) -> dict[str, Any]:
    """Per arm: every seed's pass@1 (full and half steps), mean ± sd, and paired tests against the base."""
    base = found["base"]
    arms: dict[str, Any] = {}
    for arm, seeds in found["runs"].items():
        per_seed = {}
        for seed, run in sorted(seeds.items()):
            row: dict[str, Any] = {name: rate(ev) for name, ev in run["evals"].items()}
            if "heldout" in base and "heldout" in run["evals"]:
                row["vs_base"] = paired(run["evals"]["heldout"], base["heldout"])
            if "heldout-half" in base and "heldout-half" in run["evals"]:
                row["vs_base_half"] = paired(run["evals"]["heldout-half"], base["heldout-half"])
            row["rl"] = run["rl"]
            per_seed[seed] = row
        values = [r["heldout"]["pass@1"] for r in per_seed.values() if "heldout" in r]
        halves = [r["heldout-half"]["pass@1"] for r in per_seed.values() if "heldout-half" in r]
        arms[arm] = {
            "seeds": per_seed, "pass@1": values, "mean": statistics.fmean(values) if values else None,
            "sd": statistics.stdev(values) if len(values) > 1 else None,
            "half_pass@1": halves, "half_mean": statistics.fmean(halves) if halves else None,
            "vs_base_pooled": pooled([r["vs_base"] for r in per_seed.values() if "vs_base" in r]),
        }
    return arms


def between_arms(found: dict[str, Any]) -> list[dict[str, Any]]:
    """Paired tests between RL arms: seed s of one arm against seed s of the other, then the pooled counts."""
    rows = []
    names = arm_order(found["runs"])
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            seeds = sorted(set(found["runs"][a]) & set(found["runs"][b]))
            pairs = [paired(found["runs"][a][s]["evals"]["heldout"], found["runs"][b][s]["evals"]["heldout"])
                     for s in seeds if "heldout" in found["runs"][a][s]["evals"]
                     and "heldout" in found["runs"][b][s]["evals"]]
            if pairs:
                rows.append({"a": a, "b": b, "seeds": seeds, "per_seed": pairs, "pooled": pooled(pairs)})
    return rows


def greedy_of(found: dict[str, Any], name: str) -> Outcomes | None:
    """The greedy held-out outcomes of a model named as the jobs name it (base, coupled-s0 …)."""
    if name == "base":
        return found["base"].get("heldout")
    match = JOB.match(name)
    run = found["runs"].get(match["arm"], {}).get(int(match["seed"])) if match else None
    return run["evals"].get("heldout") if run else None


def passk_rows(found: dict[str, Any]) -> list[dict[str, Any]]:
    """Per model: pass@1 and pass@10 of 10 samples at the rollout temperature, against greedy decoding on the
    same tasks — paired per task: solved by some sample but not greedily, or greedily but by no sample."""
    rows = []
    for name, summary in found["passk"].items():
        row = {"model": name, "tasks": summary["tasks"], **summary["pass@k"]}
        greedy = greedy_of(found, name)
        if greedy is not None and summary.get("outcomes"):
            sampled: dict[str, bool] = {}
            for (task, _), ok in summary["outcomes"].items():
                sampled[task] = sampled.get(task, False) or ok
            same = {task: greedy[(task, 0)] for task in sampled if (task, 0) in greedy}
            only_sampled = sum(sampled[t] and not g for t, g in same.items())
            only_greedy = sum(g and not sampled[t] for t, g in same.items())
            row.update({"greedy_pass@1": sum(same.values()) / max(1, len(same)), "paired_tasks": len(same),
                        "only_sampled": only_sampled, "only_greedy": only_greedy,
                        "mcnemar_p": mcnemar_exact(only_sampled, only_greedy)})
        rows.append(row)
    return rows


def sweep_rows(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per temperature of an ``unmask arness`` sweep: pass@k and content AR-ness@1."""
    rows = []
    for t in sweep["temperatures"]:
        content = t["arness_other_positions"] if sweep.get("positions") == "region" else t["arness"]
        rows.append({"temperature": t["temperature"], "tasks": t["tasks"], "samples": t["samples"],
                     **{k: v for k, v in t["pass@k"].items()},
                     "local@1": content["local"]["mean"][0], "global@1": content["global"]["mean"][0],
                     "local@1_sd": content["local"]["std"][0], "global@1_sd": content["global"]["std"][0]})
    return rows


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _p(value: float) -> str:
    return f"{value:.2g}" if value < 0.01 else f"{value:.2f}"


def arms_table(base: dict[str, Any], arms: dict[str, Any]) -> str:
    lines = ["| model | seeds | held-out pass@1, mean ± sd (per seed) | vs base: gained / lost (pooled), McNemar p "
             "| half steps pass@1 | RL s per run (rollout / update) |", "|---|---|---|---|---|---|"]
    if "heldout" in base:
        b = base["heldout"]
        half = _pct(base["heldout-half"]["pass@1"]) if "heldout-half" in base else "—"
        lines.append(f"| base (no RL) | — | {_pct(b['pass@1'])} [{_pct(b['wilson95'][0])}, {_pct(b['wilson95'][1])}] "
                     f"| — | {half} | — |")
    for arm in arm_order(arms):
        n = arms[arm]
        seeds = ", ".join(map(str, n["seeds"]))
        spread = "" if n["sd"] is None else f" ± {100 * n['sd']:.1f}"
        each = ", ".join(_pct(v) for v in n["pass@1"])
        vs = n["vs_base_pooled"]
        rl = [r["rl"] for r in n["seeds"].values() if r.get("rl")]
        wall = "—" if not rl else (f"{statistics.fmean(r['seconds'] for r in rl):.0f} "
                                   f"({statistics.fmean(r['rollout_seconds'] for r in rl):.0f} / "
                                   f"{statistics.fmean(r['update_seconds'] for r in rl):.0f})")
        lines.append(f"| {arm} | {seeds} | {_pct(n['mean'])}{spread} ({each}) | {vs['only_a']} / {vs['only_b']}, "
                     f"p = {_p(vs['mcnemar_p'])} | {_pct(n['half_mean'])} | {wall} |")
    return "\n".join(lines)


def pairs_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| A vs B | per seed: only A / only B (p) | pooled: only A / only B, p |", "|---|---|---|"]
    for r in rows:
        each = "; ".join(f"s{s}: {p['only_a']} / {p['only_b']} ({_p(p['mcnemar_p'])})"
                         for s, p in zip(r["seeds"], r["per_seed"]))
        lines.append(f"| {r['a']} vs {r['b']} | {each} | {r['pooled']['only_a']} / {r['pooled']['only_b']}, "
                     f"p = {_p(r['pooled']['mcnemar_p'])} |")
    return "\n".join(lines)


def dynamics_table(arms: dict[str, Any]) -> str:
    lines = ["| arm | reward, first half → second half of the steps | mean grad norm | max grad norm | max KL "
             "| final KL |", "|---|---|---|---|---|---|"]
    for arm in arm_order(arms):
        rl = [r["rl"] for r in arms[arm]["seeds"].values() if r.get("rl")]
        if rl:
            lines.append(f"| {arm} | {statistics.fmean(r['reward_first_half'] for r in rl):.2f} → "
                         f"{statistics.fmean(r['reward_second_half'] for r in rl):.2f} "
                         f"| {statistics.fmean(r['grad_norm_mean'] for r in rl):.2f} "
                         f"| {max(r['grad_norm_max'] for r in rl):.2f} | {max(r['kl_max'] for r in rl):.3f} "
                         f"| {statistics.fmean(r['kl_last'] for r in rl):.3f} |")
    return "\n".join(lines)


def sweeps_table(sweeps: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| model | temperature | tasks × samples | pass@1 | pass@10 | global AR-ness@1 (sd) | "
             "local AR-ness@1 (sd) |", "|---|---|---|---|---|---|---|"]
    for name, rows in sweeps.items():
        for r in rows:
            lines.append(f"| {name} | {r['temperature']:g} | {r['tasks']} × {r['samples'] // max(1, r['tasks'])} "
                         f"| {_pct(r.get('pass@1'))} | {_pct(r.get('pass@10'))} "
                         f"| {r['global@1']:.3f} ({r['global@1_sd']:.3f}) | {r['local@1']:.3f} "
                         f"({r['local@1_sd']:.3f}) |")
    return "\n".join(lines)


def passk_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| model | tasks | greedy pass@1 (same tasks) | T 1.2 pass@1 | T 1.2 pass@10 | solved only by sampling / "
             "only greedily, McNemar p |", "|---|---|---|---|---|---|"]
    for r in rows:
        paired_text = (f"{r['only_sampled']} / {r['only_greedy']}, p = {_p(r['mcnemar_p'])}" if "only_sampled" in r
                       else "—")
        lines.append(f"| {r['model']} | {r['tasks']} | {_pct(r.get('greedy_pass@1'))} | {_pct(r.get('pass@1'))} "
                     f"| {_pct(r.get('pass@10'))} | {paired_text} |")
    return "\n".join(lines)


def plots(found: dict[str, Any], arms: dict[str, Any], sweeps: dict[str, list[dict]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = arm_order(arms)
    if names:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for i, arm in enumerate(names):
            for row in arms[arm]["seeds"].values():
                if row.get("rl"):
                    curve = row["rl"]["reward_curve"]
                    ax.plot(range(1, len(curve) + 1), curve, color=f"C{i}", alpha=0.3, lw=1)
            curves = [r["rl"]["reward_curve"] for r in arms[arm]["seeds"].values() if r.get("rl")]
            if curves:
                length = min(len(c) for c in curves)
                mean = [statistics.fmean(c[k] for c in curves) for k in range(length)]
                ax.plot(range(1, length + 1), mean, color=f"C{i}", lw=2, label=f"{arm} (mean of {len(curves)})")
        ax.set(xlabel="RL step", ylabel="mean rollout reward", title="Rollout reward per step (thin: seeds)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "rewards.png", dpi=120)
        plt.close(fig)
        written.append("rewards.png")

        fig, ax = plt.subplots(figsize=(6, 3.6))
        labels = ["base"] + names
        for x, arm in enumerate(labels):
            if arm == "base":
                if "heldout" in found["base"]:
                    b = rate(found["base"]["heldout"])
                    ax.errorbar([x], [100 * b["pass@1"]], yerr=[[100 * (b["pass@1"] - b["wilson95"][0])],
                                [100 * (b["wilson95"][1] - b["pass@1"])]], fmt="ks", capsize=4)
                continue
            values = [100 * v for v in arms[arm]["pass@1"]]
            ax.scatter([x] * len(values), values, color=f"C{x - 1}", zorder=3)
            ax.hlines(statistics.fmean(values), x - 0.2, x + 0.2, color=f"C{x - 1}", lw=2)
        ax.set_xticks(range(len(labels)), labels)
        ax.set(ylabel="held-out pass@1 (%)", title="Greedy pass@1 per arm (dots: seeds; base: Wilson 95%)")
        fig.tight_layout()
        fig.savefig(out / "arms.png", dpi=120)
        plt.close(fig)
        written.append("arms.png")
    if sweeps:
        for name, keys, ylabel, file in (
                ("arness", ("global@1", "local@1"), "AR-ness@1 (content)", "arness_temperature.png"),
                ("passk", ("pass@1", "pass@10"), "pass@k (%)", "passk_temperature.png")):
            fig, ax = plt.subplots(figsize=(6, 3.6))
            for i, (model, rows) in enumerate(sweeps.items()):
                for key, style in zip(keys, ("-o", "--s")):
                    ts = [r["temperature"] for r in rows if r.get(key) is not None]
                    ys = [r[key] * (100 if name == "passk" else 1) for r in rows if r.get(key) is not None]
                    ax.plot(ts, ys, style, color=f"C{i}", label=f"{model}: {key}")
            ax.set(xlabel="sampling temperature", ylabel=ylabel)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out / file, dpi=120)
            plt.close(fig)
            written.append(file)
    return written


def report(root: Path, out: Path) -> dict[str, Any]:
    found = collect(root)
    arms = arm_numbers(found)
    sweeps = {name: sweep_rows(s) for name, s in found["temps"].items()}
    base = {k: rate(v) for k, v in found["base"].items()}
    results: dict[str, Any] = {"base": base, "arms": arms, "between_arms": between_arms(found), "sweeps": sweeps,
                               "passk_t1.2": passk_rows(found)}
    if "base_nocache" in found and "heldout" in found["base"]:
        results["prefix_cache_vs_none"] = {"none": rate(found["base_nocache"]),
                                           **paired(found["base"]["heldout"], found["base_nocache"])}
    variance = _json(out / "estimator_variance.json")
    if variance:
        results["estimator_variance"] = variance
    tables = [arms_table(base, arms), pairs_table(results["between_arms"]),
              dynamics_table(arms), sweeps_table(sweeps), passk_table(results["passk_t1.2"])]
    out.mkdir(parents=True, exist_ok=True)
    results["plots"] = plots(found, arms, sweeps, out)
    (out / "tables.md").write_text("\n\n".join(t for t in tables if t.count("\n") > 1) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the run root of recipes/findings.sh")
    parser.add_argument("--out", type=Path, default=Path("reports/findings"))
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"no such run root: {args.root}")
    results = report(args.root, args.out)
    headline = {arm: {"mean": n["mean"], "sd": n["sd"], "seeds": len(n["pass@1"])}
                for arm, n in results["arms"].items()}
    command = "PYTHONPATH=src python bench/findings_report.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    base = results["base"].get("heldout", {}).get("pass@1")
    print(json.dumps({"base_pass@1": base, "arms": headline, "command": command}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
