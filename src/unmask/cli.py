"""The ``unmask`` command: one entry point, one verb per job.

    unmask init DIR --preset tiny                 create a randomly initialised model (+ BPE tokenizer) in HF format
    unmask generate MODEL "def f(x):"             denoise a completion with a live view of the canvas
    unmask eval MODEL --benchmark humaneval --samples 10        pass@k with sandboxed tests
    unmask train [MODEL] --data src/ --run-dir R  masked-diffusion training (pretrain / SFT / AR adaptation)
    unmask rl MODEL --data synthetic-train --estimator coupled  GRPO with sandboxed code rewards
    unmask infill MODEL --prefix a.py --suffix b.py [--length N|auto]   fill the middle
    unmask repair MODEL code.py --tests t.py --rounds 3         test-guided repair (diff per round)
    unmask serve MODEL                            OpenAI-compatible server with a live playground

Every verb that runs a model takes it as its first positional argument, MODEL; ``--model MODEL`` is accepted too
(the older spelling), and ``train`` also reads MODEL as ``--init-from``. Options may come anywhere, before or
after positionals.

A ``generate`` prompt may hold mask placeholders: ``<|mask|>`` is one span of ``--max-new-tokens`` masks,
``<|mask:N|>`` exactly N; every span is filled (an infill), the text around them is kept byte for byte.

Each verb lives in its own module, ``unmask.commands.VERB`` (``add_arguments`` and ``run``); only the verb being
run is imported, and torch only once it runs, so ``--help`` is quick. Sampler and decoder flags are generated
from ``DecodeConfig`` / ``DecoderConfig`` (their help is the field docs); their defaults are the model's
generation_config.json. Errors a user can fix, argument errors included, print one line (``error: …``) and exit
with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from unmask.commands.common import (  # noqa: F401 — re-exported: the CLI's public helpers lived here
    EXIT_USAGE,
    CLIError,
    add_dataclass_arguments,
    dataclass_overrides,
    resolve_model,
)
from unmask.errors import UnmaskError

# verb -> (module with add_arguments/run, one-line help). The table is all that `unmask --help` reads.
VERBS: dict[str, tuple[str, str]] = {
    "init": ("unmask.commands.init", "create a randomly initialised model directory (HF format)"),
    "generate": ("unmask.commands.generate", "denoise a completion for a prompt"),
    "eval": ("unmask.commands.eval", "pass@k of a model on a benchmark, programs run in the sandbox"),
    "infill": ("unmask.commands.infill", "fill the middle between a prefix file and a suffix file"),
    "repair": ("unmask.commands.repair", "test-guided repair: re-mask the least confident spans until tests pass"),
    "tasks": ("unmask.commands.tasks", "write a benchmark's tasks (or SFT prompt/response pairs) as JSONL"),
    "convert": ("unmask.commands.convert", "re-save a model directory (e.g. as bfloat16, or re-sharded)"),
    "train": ("unmask.commands.train", "masked-diffusion training: pretrain, AR adaptation or SFT"),
    "arness": ("unmask.commands.arness",
               "decode-order analysis: AR-ness and pass@k across temperatures, or one trace"),
    "rl": ("unmask.commands.rl", "coupled-GRPO (or diffu-GRPO / decoupled) RL with sandboxed code rewards"),
    "serve": ("unmask.commands.serve", "OpenAI-compatible HTTP server with streaming and a live playground"),
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one ``error: …`` line (exit status 2), not the usage block plus a message."""

    def error(self, message: str):
        raise CLIError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser of one verb (only its module is imported), or with ``verb=None`` the top-level one that lists
    the verbs (for ``unmask --help``, ``--version`` and unknown verbs)."""
    if verb is not None:
        module, help_text = VERBS[verb]
        parser = ArgumentParser(prog=f"unmask {verb}", description=help_text)
        importlib.import_module(module).add_arguments(parser)
        return parser
    from unmask import __version__

    parser = ArgumentParser(prog="unmask", description="Masked diffusion language models for code.",
                            epilog="Run `unmask VERB --help` for a verb's options.")
    parser.add_argument("--version", action="version", version=f"unmask {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, (_, help_text) in VERBS.items():
        verbs.add_parser(name, help=help_text, add_help=False)
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The verb's namespace (``args.verb`` names it). Options and positionals may be interleaved."""
    verb = next((a for a in argv if not a.startswith("-")), None)
    if verb not in VERBS or argv.index(verb) > 0:
        # --help, --version, a missing or unknown verb, or a stray option before the verb: the top-level
        # parser answers (it exits, or raises the one-line error naming the verbs).
        build_parser().parse_args(argv)
    args = build_parser(verb).parse_intermixed_args(argv[1:])
    args.verb = verb
    if "model_flag" in vars(args):  # a verb that runs a model (``add_model_arguments``)
        resolve_model(args, args.model_positionals, required=args.model_required)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse(argv)
        return importlib.import_module(VERBS[args.verb][0]).run(args)
    except (UnmaskError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
