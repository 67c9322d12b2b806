"""What several verbs share: flags generated from config dataclasses, the model argument with the device and
sampler flags, loading a model with its recommended sampler and decoder, and the one-line user error.

Nothing here imports torch at module level: ``unmask VERB --help`` builds its parser from this module and the
config dataclasses alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from pathlib import Path

from unmask.errors import UnmaskError

EXIT_USAGE = 2
SAMPLER_GROUP = "sampler (defaults: the model's generation_config.json)"
DECODER_GROUP = "decoder (speed: blocks, threshold, KV cache, early EOS; defaults: the model's generation_config.json)"
# For flags whose real default is the model's own (its generation_config.json), not the dataclass's.
FROM_MODEL = "generation_config.json, else {default}"


class CLIError(UnmaskError):
    """A mistake the user can fix: printed as one ``error: …`` line, exit status 2."""


# ----------------------------------------------------------------------------------------------------------
# dataclass <-> argparse


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp):
    if isinstance(tp, str):
        tp = eval(tp, vars(typing))  # annotations are strings under `from __future__ import annotations`
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, *, group: str, default_help: str = "{default}"
                            ) -> None:
    """One ``--flag`` per field; defaults are None so unset flags can fall back to file defaults.

    ``default_help`` words the default in ``--help`` (``{default}`` is the field's), e.g. ``FROM_MODEL``.
    """
    section = parser.add_argument_group(group)
    own = set(cls.__dict__.get("__annotations__", {}))
    # a config's own fields first, then the shared ones it inherits (config.RunOptions: LoRA, trackers)
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own):
        tp = _base_type(f.type)
        doc = f.metadata.get("doc", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        kwargs = dict(default=None, help=f"{doc} (default: {default_help.format(default=default)})")
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if tp is bool:
            section.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
        else:
            section.add_argument(flag(f.name), type=tp, metavar=tp.__name__.upper(), **kwargs)


def dataclass_overrides(cls, args: argparse.Namespace) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def from_flags(cls, args: argparse.Namespace):
    """``cls`` (a config dataclass) with the flags that were given, defaults for the rest."""
    return cls(**dataclass_overrides(cls, args))


# ----------------------------------------------------------------------------------------------------------
# the model argument: positional (``unmask VERB MODEL``), ``--model MODEL`` still accepted


def add_model_arguments(parser: argparse.ArgumentParser, *, required: bool = True, positionals: tuple[str, ...] = (),
                        sampler: str | None = SAMPLER_GROUP) -> None:
    """MODEL as the first positional (``--model`` too, the older spelling), ``--dtype``, ``--device`` and, unless
    ``sampler`` is None, the DecodeConfig flags (under the group title ``sampler``) and the DecoderConfig flags,
    whose defaults are the model's. Call it before the verb's own positionals and name them in ``positionals``:
    ``unmask.cli.parse`` then puts the model into ``args.model`` whichever way it came (``resolve_model``)."""
    what = "model directory (Hugging Face Dream format)" + ("" if required else "; optional")
    parser.add_argument("model", nargs="?", metavar="MODEL", help=what)
    parser.add_argument("--model", dest="model_flag", metavar="MODEL", help="the model directory, as an option")
    parser.add_argument("--dtype", default="auto",
                        help="auto (float32 on CPU, as stored on GPU) | float32 | bfloat16 | float16")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 …")
    parser.set_defaults(model_positionals=positionals, model_required=required)
    if sampler is not None:
        from unmask.config import DecodeConfig, DecoderConfig

        add_dataclass_arguments(parser, DecodeConfig, group=sampler, default_help=FROM_MODEL)
        add_dataclass_arguments(parser, DecoderConfig, group=DECODER_GROUP, default_help=FROM_MODEL)


def resolve_model(args: argparse.Namespace, positionals: tuple[str, ...] = (), *, required: bool = True) -> None:
    """Put the model into ``args.model`` whichever way it came (once: a second call changes nothing).

    All positionals are optional to argparse, so with ``--model`` the words the user typed fill MODEL first:
    they belong to the positionals after it (``repair FILE --model DIR``: FILE is the file, not the model).
    """
    names = ("model", *positionals)
    if args.model_flag is not None:
        values = [getattr(args, n) for n in names]
        if values[-1] is not None:
            raise CLIError(f"the model is given twice: {values[0]!r} and --model {args.model_flag!r}")
        for name, value in zip(names, [args.model_flag, *values[:-1]]):
            setattr(args, name, value)
        args.model_flag = None
    if required and args.model is None:
        raise CLIError(f"no model given: pass the model directory as MODEL (or --model MODEL); "
                       f"see unmask {getattr(args, 'verb', 'VERB')} --help")


# ----------------------------------------------------------------------------------------------------------
# running a model


def load_model(args: argparse.Namespace):
    """(model, tokenizer, DecodeConfig, DecoderConfig) of ``args.model`` on ``args.device``: the sampler and
    decoder the model recommends (generation_config.json) with the flags given on top. Naming another decoder
    than the recommended one starts from that decoder's defaults. An unusable device fails before any loading."""
    import unmask
    from unmask.checkpoint import load_generation_defaults
    from unmask.config import DecodeConfig, DecoderConfig

    model, tokenizer = unmask.load(args.model, dtype=args.dtype, device=args.device)
    flags = dataclass_overrides(DecodeConfig, args), dataclass_overrides(DecoderConfig, args)
    return model, tokenizer, *load_generation_defaults(args.model).updated(*flags)


def check_context(model, prompt_tokens: int, new_tokens: int, *, what: str = "the prompt",
                  new: str = "new tokens (--max-new-tokens)") -> None:
    """Refuse a canvas longer than the model's context before any decoding (it would only produce garbage)."""
    context = model.config.max_position_embeddings
    if prompt_tokens + new_tokens > context:
        raise CLIError(f"{what} ({prompt_tokens} tokens) + {new_tokens} {new} = {prompt_tokens + new_tokens} "
                       f"exceed the model's max_position_embeddings ({context})")


def read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CLIError(f"cannot read {what} {path}: {getattr(err, 'strerror', None) or err}") from None


# ----------------------------------------------------------------------------------------------------------
# the run verbs (train, rl): one resolved-config path


def add_run_arguments(parser: argparse.ArgumentParser, cls, *, start_help: str, group: str) -> None:
    """MODEL (the model a run starts from), ``--config FILE`` and one flag per field of ``cls``."""
    parser.add_argument("start", nargs="?", metavar="MODEL", help=start_help)
    parser.add_argument("--config", metavar="FILE", help=f"JSON/YAML file of {cls.__name__} fields; flags override")
    add_dataclass_arguments(parser, cls, group=group)


def run_settings(cls, args: argparse.Namespace, *, start_field: str, saved: str) -> dict:
    """A run's config values in order of precedence: flags (MODEL is ``start_field``) > ``--config FILE`` > the
    resumed run's saved config (``saved`` in its run directory, with ``--resume``)."""
    flags = dataclass_overrides(cls, args)
    if args.start is not None:
        if start_field in flags:
            raise CLIError(f"the model is given twice: {args.start!r} and {flag(start_field)} {flags[start_field]!r}")
        flags[start_field] = args.start
    values: dict = read_config_file(Path(args.config)) if args.config else {}
    saved_path = Path(flags.get("run_dir") or values.get("run_dir") or cls.run_dir) / saved
    if flags.get("resume") and saved_path.is_file():
        values = {**json.loads(saved_path.read_text(encoding="utf-8")), **values}
    return {**values, **flags}


def read_config_file(path: Path) -> dict:
    """A JSON or YAML mapping of config fields."""
    text = read_text(str(path), "config file")
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
    return loaded


def print_run_summary(result, keys: tuple[str, ...]) -> int:
    """One JSON line on rank 0: the run directory and the last step's ``keys`` (those it logged)."""
    last = result.history[-1] if result.history else {}
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"run_dir": str(result.run_dir), **{k: last[k] for k in keys if k in last}}))
    return 0
