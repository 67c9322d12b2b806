"""The ``unmask`` command: one entry point, one verb per job.

    unmask init DIR --preset tiny            create a randomly initialised model (+ BPE tokenizer) in HF format
    unmask generate DIR "def f(x):"          denoise a completion with a live view of the canvas
    unmask eval --model DIR --benchmark humaneval --samples 10      pass@k with sandboxed tests
    unmask train --data src/ --run-dir R     masked-diffusion training (pretrain / SFT / AR adaptation)
    unmask rl --model DIR --data synthetic-train --estimator coupled     GRPO with sandboxed code rewards
    unmask infill --model DIR --prefix a.py --suffix b.py [--length N|auto]   fill the middle
    unmask repair --model DIR --tests t.py code.py --rounds 3      test-guided repair (diff per round)

A ``generate`` prompt may hold mask placeholders: ``<|mask|>`` is one span of ``--max-new-tokens`` masks,
``<|mask:N|>`` exactly N; every span is filled (an infill), the text around them is kept byte for byte.

Sampler flags are generated from ``DecodeConfig`` (their help is the field docs). Errors a user can fix
print one line (``error: …``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path

from unmask.errors import UnmaskError

EXIT_USAGE = 2


class CLIError(UnmaskError):
    pass


# ----------------------------------------------------------------------------------------------------------
# dataclass <-> argparse


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp):
    if isinstance(tp, str):
        tp = eval(tp, vars(typing))  # annotations are strings under `from __future__ import annotations`
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, *, group: str) -> None:
    """One ``--flag`` per field; defaults are None so unset flags can fall back to file defaults."""
    section = parser.add_argument_group(group)
    for f in dataclasses.fields(cls):
        tp = _base_type(f.type)
        doc = f.metadata.get("doc", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        kwargs = dict(default=None, help=f"{doc} (default: {default})")
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if tp is bool:
            section.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
        else:
            section.add_argument(_flag(f.name), type=tp, metavar=tp.__name__.upper(), **kwargs)


def dataclass_overrides(cls, args: argparse.Namespace) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


# ----------------------------------------------------------------------------------------------------------
# init


def cmd_init(args: argparse.Namespace) -> int:
    import torch

    from unmask.checkpoint import save_model
    from unmask.config import ModelConfig
    from unmask.corpus import stdlib_texts
    from unmask.model import DreamModel
    from unmask.tokenizer import train_bpe

    out = Path(args.directory)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise CLIError(f"{out} already exists and is not empty (use --force to overwrite)")
    texts = stdlib_texts(max_bytes=args.tokenizer_bytes)
    tokenizer = train_bpe(texts, args.vocab_size)
    special = tokenizer.special
    config = ModelConfig.from_name(args.preset, vocab_size=tokenizer.vocab_size, mask_token_id=special.mask,
                                   pad_token_id=special.pad, eos_token_id=special.eos, bos_token_id=special.bos)
    model = DreamModel(config)
    model.init_weights(torch.Generator().manual_seed(args.seed))
    save_model(model, out, tokenizer=tokenizer)
    print(f"created {out}: preset {args.preset}, {config.num_parameters() / 1e6:.2f}M parameters, "
          f"vocab {config.vocab_size} (random weights, seed {args.seed})")
    return 0


# ----------------------------------------------------------------------------------------------------------
# generate


def _read_prompt(args: argparse.Namespace) -> str:
    if args.prompt_file:
        try:
            return Path(args.prompt_file).read_text(encoding="utf-8")
        except OSError as err:
            raise CLIError(f"cannot read prompt file {args.prompt_file}: {err.strerror}") from None
    if args.prompt is not None and args.prompt != "-":
        return args.prompt
    if args.prompt == "-" or not sys.stdin.isatty():
        return sys.stdin.read()
    raise CLIError("no prompt given: pass it as an argument, with --prompt-file, or on stdin")


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    import unmask
    from unmask.config import DecodeConfig, DecoderConfig
    from unmask.decoding.dispatch import decode

    prompt = _read_prompt(args)
    model, tokenizer = unmask.load(args.model, dtype=args.dtype, device=args.device)
    config = model.generation_defaults.replace(**dataclass_overrides(DecodeConfig, args))
    decoder = DecoderConfig(**dataclass_overrides(DecoderConfig, args))
    if args.chat:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    segments = _placeholders(prompt)
    if any(not isinstance(s, str) for s in segments):
        return _print_infill(model, tokenizer, segments, config.max_new_tokens, config, decoder, args.seed, args.json)
    prompt_ids = tokenizer.encode(prompt)
    if not prompt_ids:
        raise CLIError("the prompt is empty after tokenisation; a dLLM needs at least one real token at position 0")
    mask_id = tokenizer.special.mask
    generator = torch.Generator(device=model.device).manual_seed(args.seed)

    live_view = args.live if args.live is not None else (sys.stdout.isatty() and not args.json)
    live = console = show = None
    if live_view:
        from rich.console import Console
        from rich.live import Live

        from unmask.analysis.terminal import render_canvas

        console = Console()
        live = Live(console=console, auto_refresh=False, transient=False)

        def show(event) -> None:
            ids = event.canvas[0].tolist()
            view = render_canvas(tokenizer.token_texts(ids), [i == mask_id for i in ids], event.committed[0].tolist())
            total = f"/{config.steps}" if decoder.decoder != "parallel" else ""
            view.append(f"\n\nstep {event.step + 1}{total}", style="dim")
            live.update(view, refresh=True)

        live.start()
    try:
        result = decode(model, torch.tensor([prompt_ids], device=model.device), config=config, decoder=decoder,
                        generator=generator, trace=bool(args.trace or args.json), on_step=show,
                        stop_ids=tokenizer.special.stop_ids())
    finally:
        if live is not None:
            live.stop()
    stats, trace = result.stats, result.trace

    generated = result.generated[0].tolist()
    text = tokenizer.decode(generated)
    useful = _useful_length(generated, tokenizer.special.stop_ids())
    if args.trace:
        trace.save(args.trace)
    summary = {**stats.to_json(), "decoder": decoder.decoder, "useful_tokens": useful,
               "useful_tokens_per_second": round(useful / stats.seconds, 2) if stats.seconds else 0.0}
    if trace is not None:
        from unmask.analysis import arness_profile, flatten_order

        profile = arness_profile(flatten_order(trace.order(0)), ks_local=(1, 2, 4), ks_global=(1, 2))
        summary["local_arness@1"] = round(profile["local"][1], 4)
        summary["global_arness@1"] = round(profile["global"][1], 4)
    if args.json:
        print(json.dumps({"prompt": prompt, "prompt_ids": prompt_ids, "generated_ids": generated, "text": text,
                          "config": dataclasses.asdict(config), "decoder": dataclasses.asdict(decoder),
                          "seed": args.seed, "stats": summary,
                          "trace": trace.to_json()}))
    elif console is not None:
        from rich.table import Table

        console.rule("completion")
        console.print(prompt + text, markup=False, highlight=False)
        table = Table(show_header=False, box=None)
        for key in ("forward_passes", "tokens_committed", "useful_tokens", "seconds", "tokens_per_second",
                    "tokens_per_forward", "local_arness@1", "global_arness@1"):
            if key in summary:
                table.add_row(key.replace("_", " "), str(summary[key]))
        console.rule("statistics")
        console.print(table)
    else:
        sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
        print(" ".join(f"{k}={v}" for k, v in summary.items()), file=sys.stderr)
    return 0


def _placeholders(text: str) -> list:
    from unmask.editing.placeholders import parse_placeholders

    try:
        return parse_placeholders(text)
    except ValueError as err:
        raise CLIError(str(err)) from None


def _print_infill(model, tokenizer, segments: list, length, config, decoder, seed: int, as_json: bool) -> int:
    """Fill the holes of ``segments`` and print the whole text (or one JSON object)."""
    from unmask.editing.infill import infill

    try:
        result = infill(model, tokenizer, [segments], length=length, config=config, decoder=decoder, seed=seed)[0]
    except ValueError as err:
        raise CLIError(str(err)) from None
    if as_json:
        print(json.dumps({"text": result.text, "middles": result.middles, "middle_ids": result.middle_ids,
                          "lengths": result.lengths, "score": result.score, "candidates": result.candidates,
                          "forwards": result.forwards, "config": dataclasses.asdict(config),
                          "decoder": dataclasses.asdict(decoder), "seed": seed}))
    else:
        sys.stdout.write(result.text)
        print(f"lengths={result.lengths} forwards={result.forwards}", file=sys.stderr)
    return 0


def cmd_infill(args: argparse.Namespace) -> int:
    import unmask
    from unmask.config import DecodeConfig, DecoderConfig
    from unmask.editing.placeholders import Hole

    parts = []
    for flag, name in (("--prefix", args.prefix), ("--suffix", args.suffix)):
        try:
            parts.append(Path(name).read_bytes().decode("utf-8") if name else "")
        except (OSError, UnicodeDecodeError) as err:
            raise CLIError(f"cannot read {flag} file {name}: {err}") from None
    if args.length == "auto":
        length: int | str = "auto"
    elif args.length.isdigit() and int(args.length) > 0:
        length = int(args.length)
    else:
        raise CLIError(f"--length must be a positive integer or auto, got {args.length!r}")
    model, tokenizer = unmask.load(args.model, dtype=args.dtype, device=args.device)
    config = model.generation_defaults.replace(**dataclass_overrides(DecodeConfig, args))
    decoder = DecoderConfig(**dataclass_overrides(DecoderConfig, args))
    segments = [p for p in (parts[0], Hole(), parts[1]) if p != ""]
    return _print_infill(model, tokenizer, segments, length, config, decoder, args.seed, args.json)


def cmd_repair(args: argparse.Namespace) -> int:
    import unmask
    from unmask.config import DecodeConfig, DecoderConfig
    from unmask.editing.repair import RepairConfig, repair
    from unmask.fileio import atomic_write_text

    try:
        code = Path(args.file).read_bytes().decode("utf-8")
        tests = Path(args.tests).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CLIError(f"cannot read the code or the tests: {err}") from None
    try:
        rcfg = RepairConfig(rounds=args.rounds, spans_per_round=args.spans_per_round, timeout=args.timeout)
    except ValueError as err:
        raise CLIError(str(err)) from None
    model, tokenizer = unmask.load(args.model, dtype=args.dtype, device=args.device)
    config = model.generation_defaults.replace(**dataclass_overrides(DecodeConfig, args))
    decoder = DecoderConfig(**dataclass_overrides(DecoderConfig, args))

    def show(index: int, record) -> None:
        print(f"--- round {index + 1}: re-masked {len(record.spans)} span(s), tests "
              f"{'pass' if record.passed else 'fail (' + record.error_kind + ')'}, {record.forwards} forwards"
              + ("" if record.kept else "; undone, the next round tries other spans"))
        sys.stdout.write(record.diff or "(no change)\n")

    result = repair(model, tokenizer, code, lambda c: c + "\n\n" + tests, config=rcfg, decode=config,
                    decoder=decoder, seed=args.seed, on_round=show)
    if result.passed_before:
        print("tests already pass: nothing to repair")
    else:
        state = "pass" if result.passed else "still fail"
        print(f"tests {state} after {len(result.rounds)} round(s), {result.forwards} forwards")
    if args.out and result.rounds:
        atomic_write_text(Path(args.out), result.code)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0 if result.passed else 1


def _useful_length(ids: Sequence[int], stops: Sequence[int]) -> int:
    """Tokens before the first eos/pad: what a user actually gets (SPEC §3.2, early EOS)."""
    stop = set(stops)
    for n, i in enumerate(ids):
        if i in stop:
            return n
    return len(ids)


# ----------------------------------------------------------------------------------------------------------
# eval


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    from unmask.config import DecodeConfig, DecoderConfig
    from unmask.data.benchmarks import read_evalplus_samples
    from unmask.editing.config import EditConfig
    from unmask.evaluate import EvalConfig, evaluate_model, evaluate_samples, export_evalplus, load_tasks, summary_table

    config = EvalConfig(**dataclass_overrides(EvalConfig, args))
    edit = EditConfig(**dataclass_overrides(EditConfig, args))
    if args.model is None and args.import_samples is None:
        raise CLIError("give --model DIR to generate samples, or --import-samples FILE to score existing ones")
    name = Path(args.model).name if args.model else Path(args.import_samples).stem
    out = Path(args.out) if args.out else Path("runs") / f"eval-{config.benchmark}-{name}"
    if args.import_samples:
        try:
            samples = read_evalplus_samples(args.import_samples)
        except (OSError, ValueError) as err:
            raise CLIError(f"cannot read samples {args.import_samples}: {err}") from None
        summary = evaluate_samples(samples, config, out)
    else:
        import unmask

        model, tokenizer = unmask.load(args.model, dtype=args.dtype, device=args.device)
        decode = model.generation_defaults.replace(**dataclass_overrides(DecodeConfig, args))
        decoder = DecoderConfig(**dataclass_overrides(DecoderConfig, args))
        previous = out / "eval_config.json"
        if previous.is_file():
            old = json.loads(previous.read_text())
            new = {"eval": dataclasses.asdict(config), "decode": dataclasses.asdict(decode),
                   **({} if decoder == DecoderConfig() else {"decoder": dataclasses.asdict(decoder)}),
                   **edit.recorded()}
            if old != json.loads(json.dumps(new)):
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
    Console().print(summary_table(summary))
    print(f"results: {out / 'results.jsonl'}  summary: {out / 'summary.json'}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------------------
# tasks, convert


def cmd_tasks(args: argparse.Namespace) -> int:
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


def cmd_convert(args: argparse.Namespace) -> int:
    import unmask

    src, dst = Path(args.source), Path(args.destination)
    if dst.exists() and any(dst.iterdir()) and not args.force:
        raise CLIError(f"{dst} already exists and is not empty (use --force to overwrite)")
    from unmask.config import DecodeConfig

    if args.max_shard_mb <= 0:
        raise CLIError(f"--max-shard-mb must be positive, got {args.max_shard_mb}")
    model, tokenizer = unmask.load(src, dtype=None)
    generation = dataclasses.asdict(model.generation_defaults)
    for item in args.generation:
        key, sep, raw = item.partition("=")
        if not sep or key not in generation:
            raise CLIError(f"--generation {item!r}: expected KEY=VALUE with KEY one of {', '.join(generation)}")
        try:
            generation[key] = json.loads(raw)
        except json.JSONDecodeError:
            generation[key] = raw  # a bare string such as alg=entropy
    unmask.save(model, dst, tokenizer=tokenizer, generation=DecodeConfig(**generation), dtype=args.dtype,
                max_shard_bytes=args.max_shard_mb * 2**20)
    size = sum(f.stat().st_size for f in dst.iterdir() if f.is_file())
    print(f"wrote {dst}: {model.config.num_parameters() / 1e6:.2f}M parameters as "
          f"{args.dtype or next(model.parameters()).dtype}, {size / 1e6:.1f} MB")
    return 0


# ----------------------------------------------------------------------------------------------------------
# train


def _train_settings(args: argparse.Namespace) -> dict:
    """Config values in order of precedence: flags > --config FILE > the run's run_config.json (--resume)."""
    from unmask.train import TrainConfig

    values: dict = {}
    flags = dataclass_overrides(TrainConfig, args)
    run_dir = flags.get("run_dir")
    if args.config:
        path = Path(args.config)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise CLIError(f"cannot read config file {path}: {err.strerror}") from None
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise CLIError("YAML configs need pyyaml (pip install pyyaml); or use JSON") from None
            loaded = yaml.safe_load(text)
        else:
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError as err:
                raise CLIError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        if not isinstance(loaded, dict):
            raise CLIError(f"{path}: the config must be a mapping of field names to values")
        values.update(loaded)
        run_dir = run_dir or loaded.get("run_dir")
    if flags.get("resume") and run_dir and (Path(run_dir) / "run_config.json").is_file():
        saved = json.loads((Path(run_dir) / "run_config.json").read_text(encoding="utf-8"))
        values = {**saved, **values}
    values.update(flags)
    return values


def cmd_train(args: argparse.Namespace) -> int:
    from unmask.train import TrainConfig, train

    config = TrainConfig.from_dict(_train_settings(args))
    result = train(config)
    last = result.history[-1] if result.history else {}
    summary = {k: last[k] for k in ("step", "loss", "val_loss", "tokens_per_s") if k in last}
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"run_dir": str(result.run_dir), **summary}))
    return 0


# ----------------------------------------------------------------------------------------------------------
# arness


def _number_list(text: str, flag: str, kind: type) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CLIError(f"{flag} must be a comma-separated list of {kind.__name__}s, got {text!r}") from None
    if not values:
        raise CLIError(f"{flag} is empty")
    return values


def cmd_arness(args: argparse.Namespace) -> int:
    """Sweep temperatures (--model) or analyse one saved trace (--trace); SPEC §4."""
    if args.trace:
        return _arness_of_trace(args)
    import unmask
    from unmask.analysis.sweep import SweepConfig, run_sweep
    from unmask.config import DecodeConfig
    from unmask.evaluate import EvalConfig

    if args.model is None:
        raise CLIError("give --model DIR to run a temperature sweep, or --trace FILE to analyse a saved trace")
    if args.temperature is not None:
        raise CLIError("the sweep sets the temperature itself: use --temperatures 0.2,0.6,1.0,1.2")
    if args.png:
        raise CLIError("--png is for --trace FILE; a sweep writes its plots into --out")
    sweep = SweepConfig(temperatures=_number_list(args.temperatures, "--temperatures", float),
                        positions=args.positions,
                        pass_ks=_number_list(args.pass_k, "--pass-k", int) if args.pass_k else None)
    eval_config = EvalConfig(**dataclass_overrides(EvalConfig, args))
    model, tokenizer = unmask.load(args.model, dtype=args.dtype, device=args.device)
    overrides = dataclass_overrides(DecodeConfig, args)
    decode = model.generation_defaults.replace(**overrides)
    if "steps" not in overrides:  # one token per step, as the paper measures AR-ness
        decode = decode.replace(steps=decode.max_new_tokens)
    out = Path(args.out) if args.out else Path("runs") / f"arness-{eval_config.benchmark}-{Path(args.model).name}"
    report = run_sweep(model, tokenizer, sweep, eval_config, decode, out, progress=not args.no_progress)
    sys.stdout.write((out / "summary.md").read_text(encoding="utf-8"))  # markdown: printed as is, never wrapped
    if report["plots_skipped"]:
        print(f"plots skipped: {report['plots_skipped']}", file=sys.stderr)
    print(f"report: {out / 'arness.json'}  summary: {out / 'summary.md'}", file=sys.stderr)
    return 0


def _arness_of_trace(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

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
        from unmask.analysis import plots

        try:
            if texts is not None:
                plots.plot_decode_order(texts, result["commit_step"], args.png,
                                        title=f"{Path(args.trace).name}: tokens coloured by commit step")
            else:
                plots.plot_decode_heatmap(trace.order(args.row, drop_empty=False), result["length"], args.png)
        except ImportError as err:
            raise CLIError(str(err)) from None
    if args.json:
        print(json.dumps(result))
        return 0
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
    if args.png:
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------------------
# rl


def cmd_rl(args: argparse.Namespace) -> int:
    from unmask.rl.loop import RLConfig, rl

    values = dataclass_overrides(RLConfig, args)
    run_dir = Path(values.get("run_dir", RLConfig.run_dir))
    saved = run_dir / "rl_config.json"
    if values.get("resume") and saved.is_file():  # flags override the resumed run's settings
        values = {**json.loads(saved.read_text(encoding="utf-8")), **values}
    result = rl(RLConfig.from_dict(values))
    last = result.history[-1] if result.history else {}
    summary = {k: last[k] for k in ("step", "reward_mean", "pass_rate", "kl", "eval_pass@1") if k in last}
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"run_dir": str(result.run_dir), **summary}))
    return 0


# ----------------------------------------------------------------------------------------------------------
# parser


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from unmask.serve.app import create_app
    except ImportError as err:
        raise CLIError(f"unmask serve needs the serve extra (pip install 'unmask[serve]'): {err}") from None
    import unmask
    from unmask.serve.config import ServeConfig

    serve = ServeConfig(**dataclass_overrides(ServeConfig, args))
    model, tokenizer = unmask.load(args.model, dtype=args.dtype, device=args.device)
    app = create_app(model, tokenizer, serve, model_name=Path(args.model).resolve().name)
    print(f"unmask serve: http://{serve.host}:{serve.port}/v1  playground: http://{serve.host}:{serve.port}/playground",
          file=sys.stderr)
    uvicorn.run(app, host=serve.host, port=serve.port, log_level=args.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from unmask import __version__
    from unmask.config import MODEL_PRESETS, DecodeConfig, DecoderConfig

    parser = argparse.ArgumentParser(prog="unmask", description="Masked diffusion language models for code.")
    parser.add_argument("--version", action="version", version=f"unmask {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = verbs.add_parser("init", help="create a randomly initialised model directory (HF format)")
    p.add_argument("directory", help="output model directory")
    p.add_argument("--preset", default="tiny", choices=sorted(MODEL_PRESETS), help="architecture preset")
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size (trained on the stdlib)")
    p.add_argument("--tokenizer-bytes", type=int, default=2_000_000, help="stdlib bytes to train the BPE on")
    p.add_argument("--seed", type=int, default=0, help="weight-init seed")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty directory")
    p.set_defaults(func=cmd_init)

    p = verbs.add_parser("generate", help="denoise a completion for a prompt")
    p.add_argument("model", help="model directory (Hugging Face Dream format)")
    p.add_argument("prompt", nargs="?", help="prompt text, or - for stdin")
    p.add_argument("--prompt-file", help="read the prompt from this file")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the ChatML template (Instruct models)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--trace", metavar="FILE", help="write the decode trace (JSON) here")
    p.add_argument("--json", action="store_true", help="print one JSON object (ids, text, statistics, trace)")
    p.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                   help="live canvas view (default: on when stdout is a terminal)")
    p.add_argument("--dtype", default="auto",
                   help="auto (float32 on CPU, as stored on GPU) | float32 | bfloat16 | float16")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 …")
    add_dataclass_arguments(p, DecodeConfig, group="sampler (defaults: the model's generation_config.json)")
    add_dataclass_arguments(p, DecoderConfig, group="decoder (speed: blocks, threshold, KV cache, early EOS)")
    p.set_defaults(func=cmd_generate)

    from unmask.evaluate import EvalConfig

    p = verbs.add_parser("eval", help="pass@k of a model on a benchmark, programs run in the sandbox")
    p.add_argument("--model", help="model directory (Hugging Face Dream format)")
    p.add_argument("--out", help="run directory (default runs/eval-BENCHMARK-MODEL); reruns resume")
    p.add_argument("--import-samples", metavar="FILE", help="score EvalPlus-format samples instead of generating")
    p.add_argument("--export-evalplus", metavar="FILE", help="also write the samples in EvalPlus jsonl format")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dtype", default="auto",
                   help="auto (float32 on CPU, as stored on GPU) | float32 | bfloat16 | float16")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 …")
    add_dataclass_arguments(p, EvalConfig, group="evaluation")
    add_dataclass_arguments(p, DecodeConfig, group="sampler (defaults: the model's generation_config.json)")
    add_dataclass_arguments(p, DecoderConfig, group="decoder (speed: blocks, threshold, KV cache, early EOS)")
    from unmask.editing.config import EditConfig

    add_dataclass_arguments(p, EditConfig, group="editing (infilling length rule, test-guided repair)")
    p.set_defaults(func=cmd_eval)

    p = verbs.add_parser("infill", help="fill the middle between a prefix file and a suffix file")
    p.add_argument("--model", required=True, help="model directory (Hugging Face Dream format)")
    p.add_argument("--prefix", help="file with the text before the hole (default: empty)")
    p.add_argument("--suffix", help="file with the text after the hole (default: empty)")
    p.add_argument("--length", default="auto",
                   help="middle tokens: N (fixed) or auto (a few lengths, the one the model scores best)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--json", action="store_true", help="print one JSON object (text, middles, lengths, forwards)")
    p.add_argument("--dtype", default="auto",
                   help="auto (float32 on CPU, as stored on GPU) | float32 | bfloat16 | float16")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 …")
    add_dataclass_arguments(p, DecodeConfig, group="sampler (defaults: the model's generation_config.json)")
    add_dataclass_arguments(p, DecoderConfig, group="decoder (speed: blocks, threshold, KV cache, early EOS)")
    p.set_defaults(func=cmd_infill)

    p = verbs.add_parser("repair", help="test-guided repair: re-mask the least confident spans until tests pass")
    p.add_argument("file", help="the Python file to repair")
    p.add_argument("--model", required=True, help="model directory (Hugging Face Dream format)")
    p.add_argument("--tests", required=True, help="test code appended to the file (asserts; raises on failure)")
    p.add_argument("--rounds", type=int, default=3, help="most repair rounds")
    p.add_argument("--spans-per-round", type=int, default=1, help="lines re-masked per round")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per test run")
    p.add_argument("--out", help="write the repaired code here (default: only print the diffs)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--dtype", default="auto",
                   help="auto (float32 on CPU, as stored on GPU) | float32 | bfloat16 | float16")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 …")
    add_dataclass_arguments(p, DecodeConfig, group="sampler (defaults: the model's generation_config.json)")
    add_dataclass_arguments(p, DecoderConfig, group="decoder (speed: blocks, threshold, KV cache)")
    p.set_defaults(func=cmd_repair)

    from unmask.train import TrainConfig

    p = verbs.add_parser("tasks", help="write a benchmark's tasks (or SFT prompt/response pairs) as JSONL")
    p.add_argument("benchmark", help="benchmark name (synthetic, synthetic-train, humaneval, mbpp, ...)")
    p.add_argument("--format", choices=("tasks", "sft"), default="tasks",
                   help="tasks: HumanEval-shaped rows; sft: {prompt, response} pairs for unmask train --stage sft")
    p.add_argument("--n", type=int, default=200, help="tasks to draw (procedural benchmarks)")
    p.add_argument("--seed", type=int, default=0, help="seed of the procedural draw")
    p.add_argument("--limit", type=int, default=None, help="keep only the first N tasks")
    p.add_argument("--out", default=None, help="output .jsonl (default: stdout)")
    p.set_defaults(func=cmd_tasks)

    p = verbs.add_parser("convert", help="re-save a model directory (e.g. as bfloat16, or re-sharded)")
    p.add_argument("source", help="model directory (Dream or Qwen2 HF format)")
    p.add_argument("destination", help="output model directory")
    p.add_argument("--dtype", default=None, help="cast to float32 | bfloat16 | float16 (default: as stored)")
    p.add_argument("--max-shard-mb", type=int, default=5000, help="largest safetensors shard in MiB")
    p.add_argument("--generation", action="append", default=[], metavar="KEY=VALUE",
                   help="set a generation_config.json default (repeatable), e.g. steps=64 alg=entropy")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty directory")
    p.set_defaults(func=cmd_convert)

    p = verbs.add_parser("train", help="masked-diffusion training: pretrain, AR adaptation or SFT")
    p.add_argument("--config", metavar="FILE", help="JSON/YAML file of TrainConfig fields; flags override")
    add_dataclass_arguments(p, TrainConfig, group="training (TrainConfig)")
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser("arness", help="decode-order analysis: AR-ness and pass@k across temperatures, or one trace")
    p.add_argument("--model", help="model directory (a sweep; with --trace: token texts for the picture)")
    p.add_argument("--trace", metavar="FILE", help="analyse this saved decode trace instead of sweeping")
    p.add_argument("--row", type=int, default=0, help="which row of the trace (default 0)")
    p.add_argument("--png", metavar="OUT.png", help="with --trace: decode-order picture (heat map without --model)")
    p.add_argument("--json", action="store_true", help="with --trace: print one JSON object")
    p.add_argument("--temperatures", default="0.2,0.6,1.0,1.2", help="comma-separated sampling temperatures")
    p.add_argument("--positions", default="region", choices=("region", "content"),
                   help="AR-ness over the whole generated region, or only before the first pad/EOS")
    p.add_argument("--pass-k", help="comma-separated k of pass@k (default: 1 and --samples)")
    p.add_argument("--out", help="report directory (default runs/arness-BENCHMARK-MODEL); reruns resume")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dtype", default="auto",
                   help="auto (float32 on CPU, as stored on GPU) | float32 | bfloat16 | float16")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 …")
    add_dataclass_arguments(p, EvalConfig, group="evaluation")
    add_dataclass_arguments(p, DecodeConfig, group="sampler (defaults: generation_config.json; steps = max_new_tokens)")
    p.set_defaults(func=cmd_arness)

    from unmask.rl.loop import RLConfig

    p = verbs.add_parser("rl", help="coupled-GRPO (or diffu-GRPO / decoupled) RL with sandboxed code rewards")
    add_dataclass_arguments(p, RLConfig, group="reinforcement learning (RLConfig)")
    p.set_defaults(func=cmd_rl)

    from unmask.serve.config import ServeConfig

    p = verbs.add_parser("serve", help="OpenAI-compatible HTTP server with streaming and a live playground")
    p.add_argument("--model", required=True, help="model directory (Hugging Face Dream format)")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 …")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_dataclass_arguments(p, ServeConfig, group="server (address and limits)")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (UnmaskError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
