"""``unmask generate MODEL [PROMPT]``: denoise a completion, with a live view of the canvas on a terminal.

Without flags the sampler and the decoder are the model's own (generation_config.json); flags override them.
A prompt with mask placeholders (``<|mask|>``, ``<|mask:N|>``) is an infill: every span is filled.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from unmask.commands.common import CLIError, add_model_arguments, check_context, load_model

# statistics shown under the live view, in this order
_TABLE_KEYS = ("forward_passes", "tokens_committed", "useful_tokens", "seconds", "tokens_per_second",
               "tokens_per_forward", "tokens_revised", "local_arness@1", "global_arness@1")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, positionals=("prompt",))
    p.add_argument("prompt", nargs="?", metavar="PROMPT", help="prompt text, or - for stdin")
    p.add_argument("--prompt-file", help="read the prompt from this file (instead of PROMPT)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the ChatML template (Instruct models)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--trace", metavar="FILE", help="write the decode trace (JSON) here")
    p.add_argument("--json", action="store_true", help="print one JSON object (ids, text, statistics, trace)")
    p.add_argument("--tests", metavar="FILE",
                   help="run prompt + completion + this file's asserts in the sandbox and print the verdict")
    p.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                   help="live canvas view (default: on when stdout is a terminal)")


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt_file is not None and args.prompt is not None:
        raise CLIError(f"two prompts given: PROMPT {args.prompt!r} and --prompt-file {args.prompt_file}; pass one")
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


def run(args: argparse.Namespace) -> int:
    import torch

    from unmask.commands.infill import placeholders, print_infill
    from unmask.decoding.dispatch import decode
    from unmask.decoding.eos import useful_lengths

    prompt = read_prompt(args)
    tests = read_tests(args.tests)  # read before the model loads: a missing file costs nothing
    model, tokenizer, config, decoder = load_model(args)
    if args.chat:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    segments = placeholders(prompt)
    if any(not isinstance(s, str) for s in segments):
        if tests is not None:
            raise CLIError("--tests runs a completion; a prompt with mask placeholders is an infill (unmask repair "
                           "runs tests on edited files)")
        return print_infill(model, tokenizer, segments, config.max_new_tokens, config, decoder, args.seed, args.json)
    prompt_ids = tokenizer.encode(prompt)
    if not prompt_ids:
        raise CLIError("the prompt is empty after tokenisation; a dLLM needs at least one real token at position 0")
    check_context(model, len(prompt_ids), config.max_new_tokens)
    generator = torch.Generator(device=model.device).manual_seed(args.seed)
    live = LiveView(tokenizer, config.steps, decoder.decoder) if _live(args) else None
    try:
        result = decode(model, torch.tensor([prompt_ids], device=model.device), config=config, decoder=decoder,
                        generator=generator, trace=bool(args.trace or args.json),
                        on_step=live.show if live else None, stop_ids=tokenizer.special.stop_ids())
    finally:
        if live is not None:
            live.stop()
    if args.trace:
        result.trace.save(args.trace)
    generated = result.generated[0].tolist()
    text = tokenizer.decode(generated)
    summary = _summary(result, decoder, useful_lengths(result.generated[:1], tokenizer.special.stop_ids())[0])
    verdict = None if tests is None else run_tests(prompt + text, tests)
    if args.json:
        print(json.dumps({"prompt": prompt, "prompt_ids": prompt_ids, "generated_ids": generated, "text": text,
                          "config": dataclasses.asdict(config), "decoder": dataclasses.asdict(decoder),
                          "seed": args.seed, "stats": summary, "trace": result.trace.to_json(),
                          **({} if verdict is None else {"verdict": verdict})}))
    elif live is not None:
        live.report(prompt + text, summary)
    else:
        sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
        print(" ".join(f"{k}={v}" for k, v in summary.items()), file=sys.stderr)
    if verdict is not None and not args.json:
        print(f"sandbox verdict: {verdict['status']}" + (f" ({verdict['error_kind']})" if verdict["error_kind"]
                                                         else ""))
    return 0


def read_tests(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise CLIError(f"cannot read tests file {path}: {err.strerror}") from None


def run_tests(code: str, tests: str) -> dict:
    """The sandbox's verdict on ``code`` followed by ``tests`` (asserts), as a small JSON-able dict."""
    from unmask.sandbox import run as run_sandboxed

    outcome = run_sandboxed(code.rstrip("\n") + "\n\n" + tests, timeout=10.0)
    return {"status": outcome.status, "error_kind": outcome.error_kind,
            "stderr": outcome.stderr[-2000:] if outcome.status != "passed" else ""}


def _live(args: argparse.Namespace) -> bool:
    return args.live if args.live is not None else (sys.stdout.isatty() and not args.json)


def _summary(result, decoder, useful: int) -> dict:
    """The run's statistics, plus the AR-ness of its decode order when it was traced."""
    stats = result.stats
    summary = {**stats.to_json(), "decoder": decoder.decoder, "useful_tokens": useful,
               "useful_tokens_per_second": round(useful / stats.seconds, 2) if stats.seconds else 0.0}
    if result.trace is not None:
        from unmask.analysis import arness_profile, flatten_order

        profile = arness_profile(flatten_order(result.trace.order(0)), ks_local=(1, 2, 4), ks_global=(1, 2))
        summary["local_arness@1"] = round(profile["local"][1], 4)
        summary["global_arness@1"] = round(profile["global"][1], 4)
    return summary


class LiveView:
    """The canvas redrawn after every step (rich), then the completion and a statistics table."""

    def __init__(self, tokenizer, steps: int, decoder: str) -> None:
        from rich.console import Console
        from rich.live import Live

        self.tokenizer, self.mask_id = tokenizer, tokenizer.special.mask
        self.total = f"/{steps}" if decoder != "parallel" else ""  # parallel decides its own step count
        self.console = Console()
        self.live = Live(console=self.console, auto_refresh=False, transient=False)
        self.live.start()

    def show(self, event) -> None:
        from unmask.analysis.terminal import render_canvas

        ids = event.canvas[0].tolist()
        revised = None if event.revised is None else event.revised[0].tolist()
        view = render_canvas(self.tokenizer.token_texts(ids), [i == self.mask_id for i in ids],
                             event.committed[0].tolist(), revised=revised)
        view.append(f"\n\nstep {event.step + 1}{self.total}", style="dim")
        if revised is not None and any(revised):
            view.append(f" · {sum(revised)} revised", style="dim")
        self.live.update(view, refresh=True)

    def stop(self) -> None:
        self.live.stop()

    def report(self, completion: str, summary: dict) -> None:
        from rich.table import Table

        self.console.rule("completion")
        self.console.print(completion, markup=False, highlight=False)
        table = Table(show_header=False, box=None)
        for key in _TABLE_KEYS:
            if key in summary:
                table.add_row(key.replace("_", " "), str(summary[key]))
        self.console.rule("statistics")
        self.console.print(table)
