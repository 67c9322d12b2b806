"""``unmask serve MODEL``: the OpenAI-compatible HTTP server (the ``serve`` extra: fastapi, uvicorn)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unmask.commands.common import CLIError, add_dataclass_arguments, add_model_arguments, from_flags, load_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    from unmask.serve.config import ServeConfig

    add_model_arguments(p, sampler=None)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_dataclass_arguments(p, ServeConfig, group="server (address and limits)")


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from unmask.serve.app import create_app
    except ImportError as err:
        raise CLIError(f"unmask serve needs the serve extra (pip install 'unmask[serve]'): {err}") from None
    from unmask.config import GenerationDefaults
    from unmask.serve.config import ServeConfig

    serve = from_flags(ServeConfig, args)
    model, tokenizer, decode, decoder = load_model(args)
    app = create_app(model, tokenizer, serve, model_name=Path(args.model).resolve().name,
                     defaults=GenerationDefaults(decode, decoder))
    print(f"unmask serve: http://{serve.host}:{serve.port}/v1  playground: http://{serve.host}:{serve.port}/playground",
          file=sys.stderr)
    uvicorn.run(app, host=serve.host, port=serve.port, log_level=args.log_level)
    return 0
