"""Evaluation harness: k samples per task -> sandbox -> pass@k -> results files and a table.

    unmask eval MODEL --benchmark humaneval --samples 10 --temperature 0.8

A run directory holds ``results.jsonl`` (one line per sample: task_id, sample, completion, verdict,
error_kind, duration), ``summary.json`` and ``eval_config.json``. Runs are resumable: samples are generated in
fixed chunks whose seeds depend only on (seed, chunk index), and a chunk whose samples are all in
``results.jsonl`` is skipped, so an interrupted run resumed later produces exactly the lines an uninterrupted
run would. Lines are appended per chunk and fsync'ed; a torn last line (a kill mid-write) is ignored on load.

Infilling benchmarks (``humaneval-infilling-*``) are real infills: the canvas is prefix + masks + suffix and the
completion is the decoded middle; how many masks is ``EditConfig.infill_length`` (auto: a small length search
scored by the model, see ``unmask.editing.infill``; oracle: the canonical middle's token count; or N fixed).
With ``EditConfig.repair_rounds`` > 0, every failed sample is then repaired (``unmask.editing.repair``) and
``repair.jsonl`` + ``summary["repair"]`` report pass@1 before and after, and the forwards spent.

Completions are text at this edge only: the sampler works on ids (``unmask.decoding``), the sandbox on
programs (``unmask.sandbox``), and program assembly lives in ``unmask.programs``.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unmask.config import check_ints, check_numbers, doc
from unmask.data.benchmarks import Task, load_benchmark
from unmask.errors import ConfigError
from unmask.fileio import append_records, atomic_write_text, read_records
from unmask.passk import pass_at_k
from unmask.programs import INSTRUCT_PREFILL, build_program, default_mode

SYNTHETIC = ("synthetic", "synthetic-train")
# A base model continues past the function it was asked for; these mark where the next top-level thing
# starts (the usual HumanEval stop sequences).
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ", '\n"""', "\n#")


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how programs are run (sampler settings live in DecodeConfig)."""

    benchmark: str = field(default="humaneval", metadata=doc("humaneval, humaneval+, mbpp, mbpp+, synthetic, …"))
    samples: int = field(default=1, metadata=doc("completions per task (n of pass@k)"))
    limit: int | None = field(default=None, metadata=doc("evaluate only the first N tasks"))
    batch_size: int = field(default=8, metadata=doc("prompts decoded together"))
    chat: bool = field(default=False, metadata=doc("instruct prompts: ChatML + the code-fence prefill"))
    timeout: float = field(default=5.0, metadata=doc("seconds per test program"))
    memory_mb: int = field(default=1024, metadata=doc("address-space limit per test program"))
    seed: int = field(default=0, metadata=doc("base seed; each chunk's seed derives from it"))
    synthetic_tasks: int = field(default=200, metadata=doc("tasks drawn for the synthetic benchmark"))

    def __post_init__(self) -> None:
        check_ints(self, ("samples", "batch_size", "memory_mb"))
        check_ints(self, ("limit",), optional=True)
        check_numbers(self, ("timeout",), "(0, inf)")


@dataclass(frozen=True)
class EditConfig:
    """Infilling length rule and test-guided repair for ``unmask eval``. Recorded in ``eval_config.json`` only
    when not the default, so run directories made before these settings existed still resume."""

    infill_length: str = field(default="auto", metadata=doc(
        "infilling benchmarks: middle length rule: auto (search scored by the model) | oracle (the canonical "
        "middle's token count) | N (fixed)"))
    repair_rounds: int = field(default=0, metadata=doc(
        "after generation, repair failed samples for up to N rounds and report pass@1 before and after"))
    repair_spans: int = field(default=1, metadata=doc("repair: spans (lines) re-masked per round"))

    def __post_init__(self) -> None:
        if self.infill_length not in ("auto", "oracle") and not (self.infill_length.isdigit()
                                                                 and int(self.infill_length) > 0):
            raise ConfigError(f"infill_length must be auto, oracle or a positive integer, got {self.infill_length!r}")
        check_ints(self, ("repair_rounds",), minimum=0)
        check_ints(self, ("repair_spans",))

    def recorded(self) -> dict:
        """What eval_config.json holds for these settings: nothing when they are the defaults."""
        return {} if self == EditConfig() else {"edit": dataclasses.asdict(self)}


@dataclass(frozen=True)
class SampleResult:
    task_id: str
    sample: int
    completion: str
    verdict: str  # passed | failed | timeout | infra_error
    error_kind: str
    duration: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_tasks(config: EvalConfig) -> list[Task]:
    if config.benchmark in SYNTHETIC:
        from unmask.data.synthetic import synthetic_tasks

        split = "heldout" if config.benchmark == "synthetic" else "train"
        tasks = synthetic_tasks(split, config.synthetic_tasks, config.seed)
    else:
        try:
            tasks = load_benchmark(config.benchmark)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    return tasks[: config.limit] if config.limit else tasks


# ----------------------------------------------------------------------------------------------------------
# prompts and completions (text edge)


def prompt_text(task: Task, tokenizer, chat: bool) -> str:
    if not chat:
        return task.prompt
    query = f"Complete the following python code:\n{task.prompt}"
    return tokenizer.apply_chat_template([{"role": "user", "content": query}], assistant_prefix=INSTRUCT_PREFILL)


def program_mode(task: Task, chat: bool) -> str:
    return "instruct" if chat else default_mode(task)


def clean_completion(text: str, mode: str) -> str:
    """Cut a base model's continuation where the asked-for function ends (not needed for instruct)."""
    if mode not in ("humaneval", "infilling"):
        return text
    cut = min((i for i in (text.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(text))
    return text[:cut]


def check_context(model, tokenizer, tasks: Sequence[Task], chat: bool, max_new_tokens: int) -> None:
    """Refuse, before any decoding, prompts that with ``max_new_tokens`` masks exceed the model's context:
    past ``max_position_embeddings`` a model only produces garbage. (Infilling canvases are sized per task.)"""
    context = model.config.max_position_embeddings
    lengths = [len(tokenizer.encode(prompt_text(t, tokenizer, chat))) for t in tasks
               if program_mode(t, chat) != "infilling"]
    longest = max(lengths, default=0)
    if lengths and longest + max_new_tokens > context:
        raise ConfigError(f"the longest prompt ({longest} tokens) + {max_new_tokens} new tokens (--max-new-tokens) "
                          f"= {longest + max_new_tokens} exceed the model's max_position_embeddings ({context})")


def chunk_plan(tasks: Sequence[Task], samples: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """Fixed chunks of (task index, sample index): the same for a fresh and a resumed run."""
    pairs = [(t, s) for t in range(len(tasks)) for s in range(samples)]
    return [pairs[i:i + batch_size] for i in range(0, len(pairs), batch_size)]


def chunk_seed(base: int, chunk: int) -> int:
    return (base * 1_000_003 + chunk * 7_919 + 17) % (2**63 - 1)


# ----------------------------------------------------------------------------------------------------------
# results files


def read_results(path: Path) -> list[SampleResult]:
    """Complete lines of results.jsonl; a torn final line (killed mid-write) is dropped."""
    return read_records(path, lambda row: SampleResult(**row), "a result record")


def append_results(path: Path, results: Sequence[Any]) -> None:
    """Append records (``SampleResult``, or anything with ``to_json``) to a results file, fsync'ed."""
    append_records(path, (r.to_json() for r in results))


def summarize(results: Sequence[SampleResult], ks: Sequence[int] = (1, 10)) -> dict[str, Any]:
    """pass@k (unbiased estimator, averaged over tasks) for every k <= the scored samples per task.

    An ``infra_error`` is no verdict (the sandbox failed, not the program): it is counted in ``infra_errors``
    and left out of pass@k, which averages over the tasks with at least one scored sample.
    """
    per_task: dict[str, list[bool]] = {}
    for r in results:
        if r.verdict != "infra_error":
            per_task.setdefault(r.task_id, []).append(r.verdict == "passed")
    n_min = min((len(v) for v in per_task.values()), default=0)
    passk = {f"pass@{k}": sum(pass_at_k(len(v), sum(v), k) for v in per_task.values()) / len(per_task)
             for k in ks if k <= n_min}
    return {
        "tasks": len({r.task_id for r in results}), "samples": len(results), "samples_per_task": n_min,
        "pass@k": passk,
        "verdicts": dict(Counter(r.verdict for r in results)),
        "error_kinds": dict(Counter(r.error_kind for r in results if r.verdict != "passed").most_common()),
        "infra_errors": sum(r.verdict == "infra_error" for r in results),
    }


# ----------------------------------------------------------------------------------------------------------
# the run


def execute(tasks_by_id: dict[str, Task], pending: Sequence[tuple[str, int, str]], *, mode_of: Callable[[Task], str],
            timeout: float, memory_mb: int) -> list[SampleResult]:
    """Run (task_id, sample, completion) triples in the sandbox (both cores busy), each task's completions
    assembled the way ``mode_of(task)`` says."""
    modes = [mode_of(tasks_by_id[t]) for t, _, _ in pending]
    return execute_modes(tasks_by_id, pending, modes, timeout=timeout, memory_mb=memory_mb)


def execute_modes(tasks_by_id: dict[str, Task], pending: Sequence[tuple[str, int, str]], modes: Sequence[str], *,
                  timeout: float, memory_mb: int) -> list[SampleResult]:
    """``execute`` with one program mode per triple (``unmask.programs.build_program``)."""
    from unmask.sandbox import run_many

    programs = [build_program(tasks_by_id[t], c, mode=m) for (t, _, c), m in zip(pending, modes)]
    # HumanEval+/MBPP+ programs also run the reference solution on every input: give them twice the time.
    scale = [2.0 if tasks_by_id[t].benchmark.endswith("+") else 1.0 for t, _, _ in pending]
    timeout = timeout * max(scale, default=1.0)
    outcomes = run_many(programs, timeout=timeout, memory_mb=memory_mb)
    return [SampleResult(t, s, c, o.status, o.error_kind, round(o.duration, 4))
            for (t, s, c), o in zip(pending, outcomes)]


def run_settings(config: EvalConfig, decode, decoder, edit: EditConfig) -> dict[str, Any]:
    """What ``eval_config.json`` holds (JSON types): a rerun with other settings is refused. The decoder and the
    editing settings are recorded only when not the defaults, so older run directories still resume."""
    from unmask.config import DecoderConfig

    extra = {} if decoder == DecoderConfig() else {"decoder": dataclasses.asdict(decoder)}
    settings = {"eval": dataclasses.asdict(config), "decode": dataclasses.asdict(decode), **extra, **edit.recorded()}
    return json.loads(json.dumps(settings))


def evaluate_model(model, tokenizer, config: EvalConfig, decode, out_dir: Path, *, progress: bool = True,
                   stop_after_chunks: int | None = None, decoder=None, edit=None) -> dict[str, Any]:
    """Generate, execute and score; resumable from ``out_dir``. ``decode`` is a DecodeConfig, ``decoder`` a
    DecoderConfig (None = the model's recommended decoder, else the reference sampler), ``edit`` an EditConfig
    (None = defaults).

    ``stop_after_chunks`` ends the run early (used to test that resuming equals an uninterrupted run).
    """
    from unmask.config import GenerationDefaults

    tasks = load_tasks(config)
    check_context(model, tokenizer, tasks, config.chat, decode.max_new_tokens)
    out_dir.mkdir(parents=True, exist_ok=True)
    decoder = decoder or GenerationDefaults.of(model).decoder
    edit = edit or EditConfig()
    atomic_write_text(out_dir / "eval_config.json",
                      json.dumps(run_settings(config, decode, decoder, edit), indent=2) + "\n")
    plan = chunk_plan(tasks, config.samples, config.batch_size)
    bar = chunk_bar(progress, len(plan), f"eval {config.benchmark}")
    completions = _completions(model, tokenizer, tasks, config, decode, decoder, edit)
    score_chunks(model, tasks, plan, config, out_dir / "results.jsonl", completions, seed=config.seed, bar=bar,
                 budget=stop_after_chunks)
    if bar is not None:
        bar.close()
    summary = finish(out_dir, config)
    if edit.repair_rounds > 0 and (stop_after_chunks is None or stop_after_chunks >= len(plan)):
        by_id = {t.task_id: t for t in tasks}
        summary["repair"] = repair_results(model, tokenizer, config, decode, decoder, edit, out_dir, by_id)
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def chunk_bar(progress: bool, total: int, desc: str) -> Any:
    """A tqdm bar counting chunks, or None."""
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="chunk")


def score_chunks(model, tasks: Sequence[Task], plan: list[list[tuple[int, int]]], config: EvalConfig, path: Path,
                 generate: Callable, *, seed: int, read: Callable[[Path], list] | None = None,
                 record: Callable | None = None, bar: Any = None, budget: int | None = None) -> int:
    """The resumable loop of ``unmask eval`` and the AR-ness sweep: generate a chunk, score it, append.

    For each chunk of ``plan`` with a sample not yet in ``path``, ``generate(chunk, generator)`` returns one
    (completion text, extra) per (task index, sample); the new samples run in the sandbox and are appended to
    ``path`` (fsync'ed), each as ``record(result, extra)`` (default: the ``SampleResult``). A chunk's generator is
    seeded from (``seed``, chunk index) alone, so a resumed run writes exactly the lines of an uninterrupted one.
    ``read`` reads the records already in ``path`` (default ``read_results``); ``budget`` runs at most that
    many chunks (to test resuming). Returns the chunks run.
    """
    import torch

    done = {(r.task_id, r.sample) for r in (read or read_results)(path)}
    by_id = {t.task_id: t for t in tasks}
    ran = 0
    for index, chunk in enumerate(plan):
        if all((tasks[t].task_id, s) in done for t, s in chunk):
            if bar is not None:
                bar.update(1)
            continue
        if budget is not None and ran >= budget:
            break
        ran += 1
        generator = torch.Generator(device=model.device).manual_seed(chunk_seed(seed, index))
        fresh = [(tasks[t].task_id, s, out) for (t, s), out in zip(chunk, generate(chunk, generator))
                 if (tasks[t].task_id, s) not in done]
        results = execute(by_id, [(t, s, text) for t, s, (text, _) in fresh],
                          mode_of=lambda task: program_mode(task, config.chat), timeout=config.timeout,
                          memory_mb=config.memory_mb)
        records = [r if record is None else record(r, extra) for r, (_, _, (_, extra)) in zip(results, fresh)]
        append_results(path, records)
        done.update((r.task_id, r.sample) for r in records)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(passed=f"{sum(r.verdict == 'passed' for r in records)}/{len(records)}")
    return ran


def _completions(model, tokenizer, tasks: Sequence[Task], config: EvalConfig, decode, decoder, edit) -> Callable:
    """``score_chunks``'s ``generate`` for evaluation: infills for infilling tasks, the AR baseline left to
    right, otherwise ``decode`` over the left-padded prompts; completions cut by ``clean_completion``."""
    from unmask.decoding.canvas import left_pad
    from unmask.decoding.dispatch import decode as run_decoder

    causal, special = getattr(model, "causal", False), tokenizer.special

    def generate(chunk: list[tuple[int, int]], generator) -> list[tuple[str, None]]:
        chosen = [tasks[t] for t, _ in chunk]
        if all(program_mode(task, config.chat) == "infilling" for task in chosen):
            if causal:
                raise ConfigError(f"{config.benchmark} needs infilling, which a causal (qwen2) model cannot do")
            return [(text, None) for text in infill_middles(chosen, model, tokenizer, decode, decoder, edit,
                                                            generator)]
        prompts = [tokenizer.encode(prompt_text(task, tokenizer, config.chat)) for task in chosen]
        ids, mask, _ = left_pad(prompts, special.pad, device=model.device)
        # a causal model (the AR baseline) decodes left to right inside decode(), whatever the decoder says
        generated = run_decoder(model, ids, mask, config=decode, decoder=decoder, generator=generator,
                                stop_ids=special.stop_ids()).generated
        return [(clean_completion(tokenizer.decode(row), program_mode(task, config.chat)), None)
                for task, row in zip(chosen, generated.tolist())]

    return generate


def infill_middles(tasks: Sequence[Task], model, tokenizer, decode, decoder, edit, generator) -> list[str]:
    """Middles for infilling tasks: prefix (prompt) + masks + suffix, the length by ``edit.infill_length``."""
    from unmask.editing.infill import infill
    from unmask.editing.placeholders import Hole

    requests = []
    for task in tasks:
        size = max(1, len(tokenizer.encode(task.canonical_solution))) if edit.infill_length == "oracle" else None
        requests.append([part for part in (task.prompt, Hole(size), task.extra["suffix"]) if part != ""])
    length: int | str = "auto" if edit.infill_length in ("auto", "oracle") else int(edit.infill_length)
    results = infill(model, tokenizer, requests, length=length, config=decode, decoder=decoder, generator=generator)
    return [r.middles[0] for r in results]


def repair_results(model, tokenizer, config: EvalConfig, decode, decoder, edit, out_dir: Path,
                   by_id: dict[str, Task]) -> dict[str, Any]:
    """Repair every failed sample of ``results.jsonl``; write ``repair.jsonl`` and return pass@1 before/after.

    The code is prompt + completion (+ suffix for infilling); only the completion's characters may change.
    Recomputed from scratch on every run (not resumable), with a generator seeded from ``config.seed``.
    """
    import torch

    from unmask.editing.repair import RepairConfig, repair
    from unmask.programs import build_program

    rcfg = RepairConfig(rounds=edit.repair_rounds, spans_per_round=edit.repair_spans, timeout=config.timeout,
                        memory_mb=config.memory_mb)
    generator = torch.Generator(device=model.device).manual_seed(chunk_seed(config.seed, 1_000_000))
    rows, before, after, forwards = [], 0, 0, 0
    results = read_results(out_dir / "results.jsonl")
    for r in results:
        task = by_id[r.task_id]
        mode = program_mode(task, config.chat)
        passed_after, completion, used, rounds = r.verdict == "passed", r.completion, 0, 0
        if not passed_after and mode in ("humaneval", "infilling"):
            suffix = task.extra.get("suffix", "") if mode == "infilling" else ""
            code = task.prompt + r.completion + suffix
            fixed = repair(model, tokenizer, code, lambda c, t=task: build_program(t, c, mode="mbpp"),
                           editable=(len(task.prompt), len(code) - len(suffix)), config=rcfg, decode=decode,
                           decoder=decoder, generator=generator)
            passed_after, used, rounds = fixed.passed, fixed.forwards, len(fixed.rounds)
            completion = fixed.code[len(task.prompt):len(fixed.code) - len(suffix)]
        before += r.verdict == "passed"
        after += passed_after
        forwards += used
        rows.append({"task_id": r.task_id, "sample": r.sample, "passed_before": r.verdict == "passed",
                     "passed_after": passed_after, "rounds": rounds, "forwards": used, "completion": completion})
    atomic_write_text(out_dir / "repair.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    n = max(1, len(results))
    return {"rounds": edit.repair_rounds, "samples": len(results), "pass@1_before": before / n,
            "pass@1_after": after / n, "forwards": forwards}


def sample_program(row: dict[str, Any], task: Task) -> tuple[str, str]:
    """(text, program mode) of one EvalPlus sample, decided per row as EvalPlus decides: a ``solution`` is the
    whole program; a ``completion`` continues the task's prompt (for MBPP too, whose prompt is a docstring)."""
    if "solution" in row:
        return row["solution"], "mbpp"  # "mbpp" mode runs the text as-is, then the task's tests
    if "completion" not in row:
        raise ConfigError(f"sample for {row['task_id']!r} has neither 'solution' nor 'completion'")
    mode = default_mode(task)
    return (task.prompt + row["completion"], "mbpp") if mode == "mbpp" else (row["completion"], mode)


def evaluate_samples(samples: Sequence[dict[str, Any]], config: EvalConfig, out_dir: Path) -> dict[str, Any]:
    """Score externally produced samples (EvalPlus jsonl: task_id + solution or completion, per row)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_id = {t.task_id: t for t in load_tasks(config)}
    counts: Counter[str] = Counter()
    pending, modes = [], []
    for row in samples:
        if row["task_id"] not in by_id:
            raise ConfigError(f"sample for unknown task {row['task_id']!r} (benchmark {config.benchmark})")
        text, mode = sample_program(row, by_id[row["task_id"]])
        pending.append((row["task_id"], counts[row["task_id"]], text))
        modes.append(mode)
        counts[row["task_id"]] += 1
    results = execute_modes(by_id, pending, modes, timeout=config.timeout, memory_mb=config.memory_mb)
    (out_dir / "results.jsonl").unlink(missing_ok=True)
    append_results(out_dir / "results.jsonl", results)
    return finish(out_dir, config)


def finish(out_dir: Path, config: EvalConfig) -> dict[str, Any]:
    summary = {"benchmark": config.benchmark, **summarize(read_results(out_dir / "results.jsonl"))}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def export_evalplus(out_dir: Path, tasks: Sequence[Task], path: Path, *, chat: bool) -> int:
    """Write results as EvalPlus samples (``solution`` = the full code a checker runs)."""
    from unmask.data.benchmarks import write_evalplus_samples
    from unmask.programs import extract_code

    by_id = {t.task_id: t for t in tasks}
    rows = []
    for r in read_results(out_dir / "results.jsonl"):
        task = by_id[r.task_id]
        mode = program_mode(task, chat)
        code = extract_code(r.completion, entry_point=task.entry_point) if mode == "instruct" else (
            r.completion if mode == "mbpp" else task.prompt + r.completion)
        rows.append({"task_id": r.task_id, "solution": code})
    write_evalplus_samples(path, rows)
    return len(rows)


def summary_table(summary: dict[str, Any]):
    from rich.table import Table

    table = Table(title=f"{summary['benchmark']}: {summary['tasks']} tasks × {summary.get('samples_per_task', 0)}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary["pass@k"].items():
        table.add_row(key, f"{100 * value:.2f}%")
    for key, value in summary["verdicts"].items():
        table.add_row(f"verdict {key}", str(value))
    for key, value in list(summary["error_kinds"].items())[:8]:
        table.add_row(f"error {key or '(none)'}", str(value))
    if summary.get("infra_errors"):  # the sandbox failed on these: say so where the numbers are read
        table.caption = (f"[red]{summary['infra_errors']} samples got no verdict (sandbox infra_error): "
                         "left out of pass@k[/red]")
    return table
