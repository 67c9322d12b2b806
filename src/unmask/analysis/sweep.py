"""Decode-order sweep: AR-ness and pass@k of one model across sampling temperatures (docs/arness.md), as a report.

    unmask arness MODEL --benchmark synthetic --temperatures 0.2,0.6,1.0,1.2 --samples 10

For every temperature (a plain loop) the benchmark's prompts are decoded with traces, each completion runs
in the sandbox, and each sample keeps its decode order, its AR-ness profile and its verdict together. The
report directory then holds:

    sweep_config.json         the resolved settings; a rerun with other settings is refused
    T<temp>/results.jsonl     one line per sample: the evaluator's fields (task_id, sample, completion, verdict,
                              error_kind, duration) + ``steps`` (positions committed per forward pass, relative
                              to the generated region, empty steps kept), ``length``, ``useful``, ``local``,
                              ``global`` (this sample's AR-ness@k for ``ks_local`` / ``ks_global``)
    arness.json               per temperature: pass@k, verdicts, AR-ness mean/std over samples (all, passed,
                              failed); no timings, so a resumed sweep writes the same bytes
    summary.md                a short table of the same numbers
    arness_vs_k.png, pass_vs_temperature.png, decode_heatmap_T<temp>.png   (needs the ``plot`` extra)

It reuses the evaluation harness (``unmask.evaluate``): its task loading, prompts, sandbox execution, pass@k
and its resumable loop (``score_chunks``, with a generate that also keeps each decode order): chunk seeds depend only on
(seed, temperature, chunk index), a chunk whose samples are all recorded is skipped, lines are appended per
chunk and fsync'ed, and a torn last line is ignored — so a killed sweep resumed later writes exactly what an
uninterrupted one would.

Which positions AR-ness counts (``positions``):

* ``"region"`` (default): every position of the generated region, trailing pad/EOS included. docs/arness.md defines
  the metrics over the decode order p_1 … p_T of all steps, and with steps = max_new_tokens the sampler spends
  one forward pass per pad just as per code token: when it commits the pads (dLLMs often fill the tail of the
  canvas early) is part of how autoregressive its order is.
* ``"content"``: only positions before the first stop token (pad/EOS) of the final output. The other
  positions are removed from the order *and* from the masked set, as if the region ended there; a sample
  whose first token is a stop has nothing to count and is left out of the AR-ness means (``uncounted``).

Several positions committed in one step follow ``unmask.analysis.arness``: ordered by position, each commit
seeing the mask set without the earlier commits of its step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unmask.analysis.arness import DEFAULT_GLOBAL_KS, DEFAULT_LOCAL_KS, arness_profile, flatten_order, summarize
from unmask.config import doc
from unmask.errors import ConfigError
from unmask.fileio import atomic_write_text, read_records

POSITIONS = ("region", "content")


def _check_ks(name: str, ks: Any) -> tuple[int, ...]:
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence) or not ks:
        raise ConfigError(f"{name} must be a non-empty sequence of integers >= 1, got {ks!r}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"{name} must hold integers >= 1, got {k!r}")
    if len(set(ks)) != len(ks):
        raise ConfigError(f"{name} has a repeated value: {list(ks)}")
    return tuple(ks)


@dataclass(frozen=True)
class SweepConfig:
    """What the sweep varies and measures (benchmark and sampler settings live in EvalConfig / DecodeConfig)."""

    temperatures: tuple[float, ...] = field(default=(0.2, 0.6, 1.0, 1.2), metadata=doc("sampling temperatures"))
    positions: str = field(default="region", metadata=doc("region (all generated positions) | content "
                                                           "(before the first pad/EOS)"))
    ks_local: tuple[int, ...] = field(default=DEFAULT_LOCAL_KS, metadata=doc("k of local AR-ness@k"))
    ks_global: tuple[int, ...] = field(default=DEFAULT_GLOBAL_KS, metadata=doc("k of global AR-ness@k"))
    pass_ks: tuple[int, ...] | None = field(default=None, metadata=doc("k of pass@k (None: 1 and the samples "
                                                                          "per task)"))

    def __post_init__(self) -> None:
        temps = self.temperatures
        if isinstance(temps, (str, bytes)) or not isinstance(temps, Sequence) or not temps:
            raise ConfigError(f"temperatures must be a non-empty sequence of numbers, got {temps!r}")
        for t in temps:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
                raise ConfigError(f"temperatures must be finite numbers >= 0, got {t!r}")
        if len({float(t) for t in temps}) != len(temps):
            raise ConfigError(f"temperatures has a repeated value: {list(temps)}")
        object.__setattr__(self, "temperatures", tuple(float(t) for t in temps))
        if self.positions not in POSITIONS:
            raise ConfigError(f"positions must be one of {', '.join(POSITIONS)}; got {self.positions!r}")
        object.__setattr__(self, "ks_local", _check_ks("ks_local", self.ks_local))
        object.__setattr__(self, "ks_global", _check_ks("ks_global", self.ks_global))
        if self.pass_ks is not None:
            object.__setattr__(self, "pass_ks", _check_ks("pass_ks", self.pass_ks))

    def resolved_pass_ks(self, samples: int) -> tuple[int, ...]:
        return self.pass_ks if self.pass_ks is not None else tuple(sorted({1, samples}))


# ----------------------------------------------------------------------------------------------------------
# which positions count (pure)


def useful_length(ids: Sequence[int], stop_ids: Sequence[int]) -> int:
    """Tokens before the first stop id (pad/EOS): the part of a completion a user gets."""
    stops = set(stop_ids)
    for n, token in enumerate(ids):
        if token in stops:
            return n
    return len(ids)


def counted_order(steps: Sequence[Sequence[int]], length: int, useful: int, positions: str) -> tuple[list[int], int]:
    """(flattened decode order, region length) that AR-ness is computed over; ``([], 0)`` if nothing counts.

    ``steps``: positions committed per step, relative to the region (a trace's ``order(row)``); ``length``:
    the region size; ``useful``: tokens before the first stop. ``positions`` is "region" or "content" (module
    docstring). Content keeps the commits at positions < ``useful`` in their order and shrinks the region.
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {', '.join(POSITIONS)}; got {positions!r}")
    if not 0 <= useful <= length:
        raise ValueError(f"useful length {useful} is outside the region [0, {length}]")
    if positions == "region":
        return flatten_order(steps), length
    kept = [[p for p in step if p < useful] for step in steps]
    if not any(kept):
        return [], 0
    return flatten_order(kept), useful


# ----------------------------------------------------------------------------------------------------------
# sample records


@dataclass(frozen=True)
class SweepSample:
    """One sample: the evaluator's result fields plus its decode order and AR-ness profile."""

    task_id: str
    sample: int
    completion: str
    verdict: str
    error_kind: str
    duration: float
    steps: list[list[int]]  # positions committed per forward pass, relative to the region start
    length: int  # generated region size (max_new_tokens)
    useful: int  # tokens before the first pad/EOS
    local: list[float] | None  # AR-ness@k for SweepConfig.ks_local; None when no position counts
    global_: list[float] | None  # AR-ness@k for SweepConfig.ks_global (JSON key "global")

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["global"] = data.pop("global_")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepSample:
        values = dict(data)
        values["global_"] = values.pop("global")
        return cls(**values)


def read_samples(path: Path) -> list[SweepSample]:
    """Complete lines of a sweep results.jsonl; a torn final line (killed mid-write) is dropped."""
    return read_records(path, SweepSample.from_json, "a sweep record")


def temperature_dir(out_dir: Path, temperature: float) -> Path:
    return out_dir / f"T{float(temperature)!r}"


def temperature_seed(seed: int, temperature: float) -> int:
    """Base seed of one temperature: depends on (seed, temperature) only, so adding a temperature changes
    nothing for the others."""
    from unmask.evaluate import chunk_seed

    return chunk_seed(seed, 1 + round(float(temperature) * 1_000_000))


# ----------------------------------------------------------------------------------------------------------
# the sweep


def _settings(config: SweepConfig, eval_config, decode, decoder=None) -> dict[str, Any]:
    from unmask.config import DecoderConfig

    # The decoder is recorded only when it is not the reference sampler, so older sweeps still resume.
    extra = {} if decoder in (None, DecoderConfig()) else {"decoder": dataclasses.asdict(decoder)}
    return json.loads(json.dumps({"sweep": dataclasses.asdict(config), "eval": dataclasses.asdict(eval_config),
                                  "decode": dataclasses.asdict(decode), **extra}))


def run_sweep(model, tokenizer, config: SweepConfig, eval_config, decode, out_dir: str | os.PathLike, *,
              progress: bool = True, stop_after_chunks: int | None = None, decoder=None) -> dict[str, Any]:
    """Decode, execute and measure at every temperature; resumable from ``out_dir``; returns arness.json's dict.

    ``eval_config`` is an EvalConfig, ``decode`` the DecodeConfig whose temperature each pass replaces (use
    steps = max_new_tokens for one token per step, as the paper), ``decoder`` a DecoderConfig (None: the model's
    recommended decoder, else the reference sampler). ``stop_after_chunks`` ends the run after that many chunks
    in total (to test that resuming equals an uninterrupted run); the report then covers what is done.
    """
    from unmask.config import GenerationDefaults
    from unmask.evaluate import chunk_bar, chunk_plan, load_tasks, score_chunks

    decoder = decoder or GenerationDefaults.of(model).decoder
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = _settings(config, eval_config, decode, decoder)
    config_path = out_dir / "sweep_config.json"
    if config_path.is_file():
        if json.loads(config_path.read_text(encoding="utf-8")) != settings:
            raise ConfigError(f"{out_dir} holds a sweep with different settings; use another directory (or delete it)")
    else:
        atomic_write_text(config_path, json.dumps(settings, indent=2) + "\n")

    tasks = load_tasks(eval_config)
    plan = chunk_plan(tasks, eval_config.samples, eval_config.batch_size)
    bar = chunk_bar(progress, len(plan) * len(config.temperatures), "arness sweep")
    budget = stop_after_chunks
    for temperature in config.temperatures:
        tdir = temperature_dir(out_dir, temperature)
        tdir.mkdir(exist_ok=True)
        if bar is not None:
            bar.set_description(f"arness sweep T={temperature:g}")
        traced = _traced_completions(model, tokenizer, tasks, eval_config, decode.replace(temperature=temperature),
                                     decoder)
        ran = score_chunks(model, tasks, plan, eval_config, tdir / "results.jsonl", traced,
                           seed=temperature_seed(eval_config.seed, temperature), read=read_samples,
                           record=lambda r, extra: _sample(r, *extra, config), bar=bar, budget=budget)
        budget = None if budget is None else budget - ran
    if bar is not None:
        bar.close()
    return write_report(out_dir)


def _traced_completions(model, tokenizer, tasks, eval_config, decode, decoder):
    """``score_chunks``'s ``generate`` for the sweep: each completion with its decode order (empty steps
    kept), region length and useful length."""
    from unmask.decoding.canvas import left_pad
    from unmask.decoding.dispatch import decode as run_decoder
    from unmask.evaluate import clean_completion, program_mode, prompt_text

    prompts = [tokenizer.encode(prompt_text(t, tokenizer, eval_config.chat)) for t in tasks]
    pad, stops = tokenizer.special.pad, tokenizer.special.stop_ids()

    def generate(chunk, generator):
        ids, mask, _ = left_pad([prompts[t] for t, _ in chunk], pad, device=model.device)
        out = run_decoder(model, ids, mask, config=decode, decoder=decoder, generator=generator, trace=True,
                          stop_ids=stops)
        return [(clean_completion(tokenizer.decode(gen), program_mode(tasks[t], eval_config.chat)),
                 (out.trace.order(row, drop_empty=False), len(gen), useful_length(gen, stops)))
                for row, ((t, _), gen) in enumerate(zip(chunk, out.generated.tolist()))]

    return generate


def _sample(result, steps: list[list[int]], length: int, useful: int, config: SweepConfig) -> SweepSample:
    """A sweep record: the sandbox's result with the sample's decode order and its AR-ness profile."""
    order, region = counted_order(steps, length, useful, config.positions)
    local = glob = None
    if order:
        profile = arness_profile(order, config.ks_local, config.ks_global, length=region)
        local = [profile["local"][k] for k in config.ks_local]
        glob = [profile["global"][k] for k in config.ks_global]
    return SweepSample(result.task_id, result.sample, result.completion, result.verdict, result.error_kind,
                       result.duration, steps, length, useful, local, glob)


# ----------------------------------------------------------------------------------------------------------
# the report


def _arness_summary(samples: Sequence[SweepSample], config: SweepConfig) -> dict[str, Any] | None:
    """analysis.summarize over the counted decode orders of ``samples``; None when none counts."""
    orders = []
    for s in samples:
        order, _ = counted_order(s.steps, s.length, s.useful, config.positions)
        if order:
            orders.append(order)
    return summarize(orders, config.ks_local, config.ks_global) if orders else None


def temperature_summary(samples: Sequence[SweepSample], config: SweepConfig, samples_per_task: int
                        ) -> dict[str, Any]:
    """One temperature's entry of arness.json: pass@k and verdicts, then AR-ness over all/passed/failed."""
    from unmask.evaluate import SampleResult
    from unmask.evaluate import summarize as pass_summary

    results = [SampleResult(s.task_id, s.sample, s.completion, s.verdict, s.error_kind, 0.0) for s in samples]
    scores = pass_summary(results, config.resolved_pass_ks(samples_per_task))
    passed = [s for s in samples if s.verdict == "passed"]
    failed = [s for s in samples if s.verdict != "passed"]
    return {
        "tasks": scores["tasks"], "samples": scores["samples"], "pass@k": scores["pass@k"],
        "verdicts": dict(sorted(scores["verdicts"].items())),
        "uncounted": sum(1 for s in samples if s.local is None),
        "mean_useful_tokens": sum(s.useful for s in samples) / len(samples) if samples else 0.0,
        "arness": _arness_summary(samples, config),
        "arness_passed": _arness_summary(passed, config),
        "arness_failed": _arness_summary(failed, config),
        # The other counting rule from the same orders, free to compute: when the sampler commits the
        # trailing pads first, region and content AR-ness tell different stories, and both are worth seeing.
        "arness_other_positions": _arness_summary(samples, dataclasses.replace(config, positions=_other(config))),
    }


def _other(config: SweepConfig) -> str:
    return "content" if config.positions == "region" else "region"


def write_report(out_dir: str | os.PathLike) -> dict[str, Any]:
    """(Re)write arness.json, summary.md and the plots from the results files in ``out_dir``."""
    from unmask.config import DecodeConfig
    from unmask.evaluate import EvalConfig

    out_dir = Path(out_dir)
    try:
        settings = json.loads((out_dir / "sweep_config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{out_dir}: no sweep_config.json, so this is not a sweep directory") from None
    sweep = settings["sweep"]
    config = SweepConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in sweep.items()})
    eval_config = EvalConfig(**settings["eval"])
    decode = DecodeConfig.from_dict(settings["decode"])
    entries = []
    all_samples: dict[float, list[SweepSample]] = {}
    for temperature in config.temperatures:
        samples = sorted(read_samples(temperature_dir(out_dir, temperature) / "results.jsonl"),
                         key=lambda s: (s.task_id, s.sample))
        all_samples[temperature] = samples
        entries.append({"temperature": temperature,
                        **temperature_summary(samples, config, eval_config.samples)})
    report: dict[str, Any] = {
        "benchmark": eval_config.benchmark, "positions": config.positions,
        "steps": decode.steps, "max_new_tokens": decode.max_new_tokens, "alg": decode.alg,
        "ks_local": list(config.ks_local), "ks_global": list(config.ks_global),
        "temperatures": entries,
    }
    plots, skipped = _write_plots(out_dir, entries, all_samples, decode.max_new_tokens)
    report["plots"] = plots
    report["plots_skipped"] = skipped
    atomic_write_text(out_dir / "arness.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "summary.md", summary_markdown(report))
    return report


def _write_plots(out_dir: Path, entries: list[dict[str, Any]], samples: dict[float, list[SweepSample]],
                 length: int) -> tuple[list[str], str | None]:
    """The PNGs of the report, or ([], reason) when matplotlib is missing."""
    try:
        from unmask.analysis import plots

        plots._require_matplotlib()
    except ImportError:
        return [], "matplotlib is not installed (pip install 'unmask[plot]')"
    written = []
    by_t = {e["temperature"]: e["arness"] for e in entries if e["arness"] is not None}
    if by_t:
        plots.plot_arness_vs_k(by_t, out_dir / "arness_vs_k.png", title="AR-ness vs k by sampling temperature")
        written.append("arness_vs_k.png")
    table = {e["temperature"]: e["pass@k"] for e in entries if e["pass@k"]}
    if table:
        plots.plot_pass_vs_temperature(table, out_dir / "pass_vs_temperature.png")
        written.append("pass_vs_temperature.png")
    for temperature, rows in samples.items():
        if not rows:
            continue
        name = f"decode_heatmap_T{temperature!r}.png"
        plots.plot_decode_heatmap([s.steps for s in rows], length, out_dir / name,
                                  title=f"decode order, T={temperature:g}, {len(rows)} decodes")
        written.append(name)
    return written, None


def _fmt(summary: dict[str, Any] | None, kind: str, k: int) -> str:
    if summary is None or k not in summary[kind]["k"]:
        return "–"
    i = summary[kind]["k"].index(k)
    return f"{summary[kind]['mean'][i]:.3f} ± {summary[kind]['std'][i]:.3f}"


def summary_markdown(report: dict[str, Any]) -> str:
    """The short markdown summary of a report dict (arness.json)."""
    entries = report["temperatures"]
    pass_keys = sorted({k for e in entries for k in e["pass@k"]}, key=lambda name: int(name.split("@")[1]))
    k_local = [k for k in (1, 2, 4, 9) if k in report["ks_local"]] or report["ks_local"][:1]
    k_global = [k for k in (1, 4) if k in report["ks_global"]] or report["ks_global"][:1]
    where = ("every position of the generated region (trailing pad/EOS included)" if report["positions"] == "region"
             else "positions before the first pad/EOS of each completion")
    lines = [
        f"# AR-ness sweep: {report['benchmark']}",
        "",
        f"{report['max_new_tokens']} new tokens, {report['steps']} steps, alg `{report['alg']}`. "
        f"AR-ness counts {where}; several positions committed in one step are ordered by position. "
        "Values are mean ± std over samples (definitions: unmask docs/arness.md).",
        "",
    ]
    header = ["T", "samples", *pass_keys, *[f"local@{k}" for k in k_local], *[f"global@{k}" for k in k_global]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in entries:
        cells = [f"{e['temperature']:g}", str(e["samples"])]
        cells += [f"{100 * e['pass@k'][key]:.1f}%" if key in e["pass@k"] else "–" for key in pass_keys]
        cells += [_fmt(e["arness"], "local", k) for k in k_local] + [_fmt(e["arness"], "global", k) for k in k_global]
        lines.append("| " + " | ".join(cells) + " |")
    if any(e.get("arness_other_positions") for e in entries):
        other = "content" if report["positions"] == "region" else "region"
        other_where = ("positions before the first pad/EOS of each completion" if other == "content"
                       else "every position of the generated region")
        lines += ["", f"The same decodes with AR-ness counting {other_where} (`--positions {other}`):", ""]
        header = ["T", *[f"local@{k}" for k in k_local], *[f"global@{k}" for k in k_global]]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for e in entries:
            alt = e.get("arness_other_positions")
            cells = [f"{e['temperature']:g}"]
            cells += [_fmt(alt, "local", k) for k in k_local] + [_fmt(alt, "global", k) for k in k_global]
            lines.append("| " + " | ".join(cells) + " |")
    uncounted = sum(e["uncounted"] for e in entries)
    if uncounted:
        lines += ["", f"{uncounted} samples had no position to count (completion empty before the first stop)."]
    lines.append("")
    if report["plots_skipped"]:
        lines.append(f"Plots skipped: {report['plots_skipped']}.")
    else:
        lines.append("Plots: " + ", ".join(f"[{p}]({p})" for p in report["plots"]) + ".")
    lines.append("Per-sample orders, AR-ness and verdicts: `T<temperature>/results.jsonl`; all numbers: `arness.json`.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# one saved trace


def analyse_trace(trace, row: int = 0, *, stop_ids: Sequence[int] | None = None, positions: str = "region",
                  ks_local: Sequence[int] = DEFAULT_LOCAL_KS, ks_global: Sequence[int] = DEFAULT_GLOBAL_KS
                  ) -> dict[str, Any]:
    """AR-ness of one row of a DecodeTrace, JSON-ready: what ``unmask arness --trace FILE`` prints.

    The region is every position the trace committed (0 … max + 1). ``positions="content"`` needs
    ``stop_ids`` (the tokenizer's pad/EOS) to find where the completion ends. Returns ``row``, ``length``,
    ``useful``, ``positions``, ``local``/``global`` (``{"k": value}``, keys as strings), ``tokens`` (the id
    committed at each region position), ``commit_step`` (the forward pass of its final assignment) and ``revised``
    (whether a revising decoder took it back at some step).
    """
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < len(trace.steps):
        raise ValueError(f"row must be an int in [0, {len(trace.steps)}), got {row!r}")
    if positions == "content" and stop_ids is None:
        raise ValueError("positions='content' needs the tokenizer's stop ids (pass MODEL)")
    steps = trace.order(row, drop_empty=False)
    flat = [p for step in steps for p in step]
    if not flat:
        raise ValueError(f"trace row {row} commits no position: nothing to analyse")
    length = max(flat) + 1
    tokens: list[int | None] = [None] * length
    commit_step: list[int | None] = [None] * length
    start = trace.region_start[row]
    for p, (s, token) in trace.final_assignments(row).items():  # a revised position: its final token and step
        if 0 <= p - start < length:
            tokens[p - start], commit_step[p - start] = int(token), s
    # -1 (never a token id) keeps a never-committed position from ending the completion
    useful = length if stop_ids is None else useful_length([-1 if t is None else t for t in tokens], stop_ids)
    order, region = counted_order(steps, length, useful, positions)
    if not order:
        raise ValueError(f"trace row {row}: the completion is empty before its first stop token; nothing to count")
    profile = arness_profile(order, ks_local, ks_global, length=region)
    return {"row": row, "length": length, "useful": useful, "positions": positions,
            "local": {str(k): v for k, v in profile["local"].items()},
            "global": {str(k): v for k, v in profile["global"].items()},
            "tokens": tokens, "commit_step": commit_step,
            "revised": [any(p == i for _, p, _, _ in trace.revisions(row)) for i in range(length)]}
