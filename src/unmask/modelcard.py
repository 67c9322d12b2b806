"""Model cards: a Hugging Face-style README.md for a trained model, written from its run directories.

Everything in the card is read from files the training and evaluation runs wrote (run_config.json,
metrics.jsonl, eval_config.json, summary.json, the model's generation_config.json), so the card cannot drift
from what was measured.

    python -m unmask.modelcard MODEL_DIR --stage NAME=RUN [--stage NAME=RUN ...] --eval EVAL_DIR [--eval ...] \\
        --command CMD

Stages appear in the order given; ``--pretrain RUN`` and ``--sft RUN`` are aliases of ``--stage pretrain=RUN``
and ``--stage sft=RUN``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unmask.errors import ConfigError
from unmask.fileio import atomic_write_text, parse_jsonl
from unmask.stats import wilson_interval

DIFFUCODER = "[DiffuCoder](https://arxiv.org/abs/2506.20639) (arXiv 2506.20639)"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err.msg}") from None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The logged rows of a training run's metrics.jsonl, in order."""
    metrics_path = Path(run_dir) / "metrics.jsonl"
    try:
        text = metrics_path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {metrics_path}: {err.strerror}") from None
    # A torn last line (a run killed mid-write, or one still writing) is not a metric.
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines = lines[:-1]
    rows = [row for _, row in parse_jsonl(lines, metrics_path, error=ConfigError)]
    if not rows:
        raise ConfigError(f"{metrics_path} has no metrics (the run never logged a step)")
    return rows


def compute_seconds(rows: Sequence[Mapping[str, Any]]) -> float:
    """Time spent training: the sum over logged intervals of (tokens in the interval / tokens/s).

    Wall-clock stamps would also count the time between a kill and a resume; the throughput of each interval
    does not. An interval without a throughput (none logged) adds nothing.
    """
    seconds, tokens_before = 0.0, 0
    for row in rows:
        if row.get("tokens_per_s"):
            seconds += (row["tokens"] - tokens_before) / row["tokens_per_s"]
        tokens_before = row["tokens"]
    return seconds


def _last(rows: Sequence[Mapping[str, Any]], key: str) -> Mapping[str, Any] | None:
    hits = [row for row in rows if row.get(key) is not None]
    return hits[-1] if hits else None


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """What a training run did: its config, steps, tokens, first/last train loss, last validation losses and
    compute time (``compute_seconds``)."""
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "run_config.json")
    rows = read_metrics(run_dir)
    val, response = _last(rows, "val_loss"), _last(rows, "val_response_loss")
    last = rows[-1]
    return {
        "config": config, "steps": last["step"], "tokens": last["tokens"], "epochs": last.get("epoch"),
        "loss": last["loss"], "first_loss": rows[0]["loss"],
        "val_loss": val["val_loss"] if val else None, "val_step": val["step"] if val else None,
        "val_response_loss": response["val_response_loss"] if response else None,
        "seconds": compute_seconds(rows),
    }


def eval_summary(eval_dir: str | Path) -> dict[str, Any]:
    """An evaluation's summary and settings; ``decoder`` is None for the reference sampler (recorded only when
    another decoder ran)."""
    eval_dir = Path(eval_dir)
    summary = _read_json(eval_dir / "summary.json")
    settings = _read_json(eval_dir / "eval_config.json")
    return {"summary": summary, "eval": settings["eval"], "decode": settings["decode"],
            "decoder": settings.get("decoder")}


def objective_words(config: Mapping[str, Any]) -> str:
    """A training stage's objective in words (run_config.json written before ``objective`` existed: diffusion)."""
    if config.get("objective", "diffusion") == "autoregressive":
        return "AR next-token"
    words = "masked diffusion"
    if config.get("adapt_from_ar"):
        words = f"AR→diffusion adaptation (anneal_steps {config.get('anneal_steps', 0)})"
    if config.get("block_mask_prob"):
        share, length = float(config["block_mask_prob"]), config.get("block_mask_length", 8)
        words += f", {100 * share:.0f}% semi-AR block rows (blocks of {length})"
    return words


def data_words(config: Mapping[str, Any], name: str) -> str:
    """The stage's data, and for SFT which tokens carry the loss."""
    if config.get("stage", "sft" if name == "sft" else "pretrain") != "sft":
        return str(config["data"])
    data = Path(config["data"]).name
    if config.get("objective") == "autoregressive":
        return f"{data} (loss on the response and its end token)"
    return f"{data} (prompt never masked)"


def adapted_from_ar(configs: Sequence[Mapping[str, Any]]) -> bool:
    """True when an autoregressive stage precedes a diffusion stage that adapts it (``adapt_from_ar``)."""
    seen_ar = False
    for config in configs:
        if config.get("objective") == "autoregressive":
            seen_ar = True
        elif seen_ar and config.get("adapt_from_ar"):
            return True
    return False


def decoder_words(decoder: Mapping[str, Any] | None, *, stop_last: bool = False, causal: bool = False) -> str:
    """The decoder an evaluation (or a generation_config.json) names: reference | blocks | parallel with its block
    length, and stop_last when on. A causal (qwen2) model always decodes left to right."""
    if causal:
        return "left to right (AR)"
    name = (decoder or {}).get("decoder") or "reference"
    words = name if name == "reference" else f"{name}, block {decoder.get('block_length')}"
    return words + (", stop_last" if stop_last else "")


def pass_interval(summary: Mapping[str, Any]) -> tuple[int, int, float, float]:
    """(passed, n, lo, hi): pass@1's 95% Wilson interval with n = every sample scored.

    pass@1 is the mean over tasks of passed/samples, which equals passed/n when every task has the same number
    of samples; summaries without verdict counts recover ``passed`` from pass@1.
    """
    n = summary.get("samples") or summary["tasks"] * summary.get("samples_per_task", 1)
    passed = summary.get("verdicts", {}).get("passed")
    if passed is None:
        passed = round(summary["pass@k"]["pass@1"] * n)
    return (passed, n, *wilson_interval(passed, n))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


DEFAULT_ROLE = ("It is the default model of `make demo`: small enough to commit and to run anywhere, a research "
                "fixture rather than a code assistant.")


def render_model_card(model_dir: str | Path, *, stages: Sequence[tuple[str, Mapping[str, Any]]] = (),
                      pretrain: Mapping[str, Any] | None = None, sft: Mapping[str, Any] | None = None,
                      evals: Sequence[Mapping[str, Any]], command: str, role: str = DEFAULT_ROLE) -> str:
    """The README.md text (YAML front matter + markdown) for ``model_dir``.

    ``stages`` are (name, ``run_summary``) pairs in training order; ``pretrain`` and ``sft`` (older callers)
    go before and after them. ``role``: the sentence that says what the model is for.
    """
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    ordered = [("pretrain", pretrain)] * (pretrain is not None) + list(stages) + [("sft", sft)] * (sft is not None)
    causal = str(config.get("model_type", "")).lower() == "qwen2"
    adapted = adapted_from_ar([run["config"] for _, run in ordered])
    lines = _header(model_dir, config, causal=causal, adapted=adapted, command=command, role=role)
    lines += _training(ordered, causal=causal)
    lines += _evaluation(evals, causal=causal)
    lines += _use(model_dir, causal=causal, block=config.get("block_size"))
    lines += ["", "## Reproduce", "", f"`{command}` (each stage resumes from its last checkpoint if interrupted).", ""]
    return "\n".join(lines)


def _header(model_dir: Path, config: Mapping[str, Any], *, causal: bool, adapted: bool, command: str,
            role: str) -> list[str]:
    n_params = _count_parameters(config)
    size_mb = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 1e6
    block = config.get("block_size")
    if causal:
        what = "autoregressive (causal) language model for Python in the Qwen2 architecture"
    elif block:
        what = (f"block-diffusion language model for Python in the Dream architecture (Qwen2 stack, shifted logits; "
                f"attention causal across blocks of {block} tokens and bidirectional inside one, so its KV cache is "
                "exact)")
    else:
        what = ("masked diffusion language model for Python in the Dream architecture (bidirectional Qwen2 stack, "
                "shifted logits)")
    if adapted:
        # the DiffuCoder recipe: a causal model first, then opened (inside blocks, for a block model) and trained
        # on the ELBO
        opened = "causal to bidirectional inside each block" if block else "causal to full"
        how = (f"adapted from an autoregressive model trained first, as {DIFFUCODER} adapts Qwen2.5-Coder "
               f"(attention annealed from {opened} while training on the diffusion loss); all stages ran on "
               f"2 CPU cores by `{command}`")
    else:
        how = f"trained on 2 CPU cores by `{command}`"
    return [
        "---",
        "library_name: unmask",
        "pipeline_tag: text-generation",
        "tags: [autoregressive, qwen2, code]" if causal else
        "tags: [masked-diffusion, block-diffusion, dream, code]" if block else "tags: [masked-diffusion, dream, code]",
        "license: mit",
        "---",
        "",
        f"# {model_dir.name}",
        "",
        f"A {n_params / 1e6:.2f}M-parameter {what}, {how}. {role}",
        "",
        "## Architecture",
        "",
        f"- layers {config['num_hidden_layers']}, width {config['hidden_size']}, SwiGLU {config['intermediate_size']}, "
        f"heads {config['num_attention_heads']} (KV heads {config['num_key_value_heads']}), RoPE θ "
        f"{config.get('rope_theta')}, vocabulary {config['vocab_size']} (byte-level BPE with Dream's special tokens)",
        f"- weights: {config.get('torch_dtype', 'float32')} safetensors, {size_mb:.1f} MB; "
        "`unmask.load` computes in float32 on CPU",
        "",
    ]


_SETTINGS = ("preset", "seq_len", "batch_size", "grad_accum", "lr", "warmup_steps", "min_lr_ratio", "weight_decay",
             "t_method", "mask_eps", "loss_normalizer", "adapt_from_ar", "anneal_steps", "seed")
_DIFFUSION_ONLY = ("t_method", "mask_eps")  # the noise schedule: meaningless for a next-token loss


def _settings_line(name: str, config: Mapping[str, Any]) -> str:
    keys = list(_SETTINGS)
    if config.get("init_from"):  # a continued model: the preset field is unused, say where it started instead
        keys[0] = "init_from"
    if config.get("objective") == "autoregressive":
        keys = [k for k in keys if k not in _DIFFUSION_ONLY]
    if not config.get("adapt_from_ar"):
        keys = [k for k in keys if k not in ("adapt_from_ar", "anneal_steps")]
    return f"- **{name}**: " + ", ".join(f"{k}={config[k]}" for k in keys if k in config)


def _stage_row(name: str, run: Mapping[str, Any]) -> str:
    c = run["config"]
    return (f"| {name} | {objective_words(c)} | {data_words(c, name)} | {run['steps']} | {run['tokens']:,} | "
            f"{_fmt(run['epochs'], 2)} | {_fmt(run['first_loss'])} | {_fmt(run['loss'])} | {_fmt(run['val_loss'])} | "
            f"{_fmt(run.get('val_response_loss'))} | {run['seconds'] / 60:.1f} min |")


def _loss_note(ordered: Sequence[tuple[str, Mapping[str, Any]]], *, causal: bool) -> str:
    kinds = {run["config"].get("objective", "diffusion") for _, run in ordered}
    kinds = kinds or {"autoregressive" if causal else "diffusion"}
    notes = []
    if "diffusion" in kinds:
        notes.append("Diffusion losses (masked diffusion and adaptation stages) are the masked-diffusion ELBO: "
                     "1/p(t)-weighted cross-entropy on masked tokens, per token. In diffusion SFT the prompt is never "
                     "masked and the pads after the response are learned too; the pads are most of a row and nearly "
                     "free to predict, so the val response loss (response and its end token only) is the number that "
                     "measures the code.")
    if "autoregressive" in kinds:
        notes.append("AR losses are next-token cross-entropy per token (SFT: on the response and its end token).")
    if len(kinds) > 1:
        notes.append("Both are in nats per token, but the ELBO is an upper bound on the diffusion model's negative "
                     "log-likelihood, estimated from one random masking per row, while the AR loss is the exact "
                     "likelihood of its left-to-right factorisation; compare trends within a kind, not levels across.")
    notes.append("Compute is time spent in training steps on the machine that ran the recipe (2 CPU cores, shared "
                 "with other work part of the time, so it is an upper bound).")
    return " ".join(notes)


def _training(ordered: Sequence[tuple[str, Mapping[str, Any]]], *, causal: bool) -> list[str]:
    lines = [
        "## Training",
        "",
        "| stage | objective | data | steps | tokens | epochs | first loss | final loss | val loss | val response loss "
        "| compute |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_stage_row(name, run) for name, run in ordered]
    lines += ["", "Settings of each stage (all other fields at `TrainConfig` defaults):", ""]
    lines += [_settings_line(name, run["config"]) for name, run in ordered]
    return lines + ["", _loss_note(ordered, causal=causal), ""]


def _sampler_words(decode: Mapping[str, Any], *, causal: bool) -> str:
    if causal:  # left to right: one token per forward, no steps or commit order
        return f"{decode['max_new_tokens']} tokens, temperature {decode['temperature']}"
    return (f"{decode['max_new_tokens']} tokens, {decode['steps']} steps, alg {decode['alg']}, temperature "
            f"{decode['temperature']}" + (f", top_p {decode['top_p']}" if decode.get("top_p") else ""))


def _eval_row(ev: Mapping[str, Any], *, causal: bool) -> str:
    s, d, e = ev["summary"], ev["decode"], ev["eval"]
    _, _, lo, hi = pass_interval(s)
    decoder = decoder_words(ev.get("decoder"), stop_last=bool(d.get("stop_last")), causal=causal)
    return (f"| {s['benchmark']} (seed {e['seed']}) | {s['tasks']} | {s.get('samples_per_task', 1)} | "
            f"{_fmt(s['pass@k'].get('pass@1'))} | [{lo:.3f}, {hi:.3f}] | {decoder} | "
            f"{_sampler_words(d, causal=causal)} |")


def _evaluation(evals: Sequence[Mapping[str, Any]], *, causal: bool) -> list[str]:
    return [
        "## Evaluation",
        "",
        "Programs run in the `unmask` sandbox; `synthetic` is the procedural benchmark's held-out split (compositions "
        "of primitives never seen in training); `synthetic-train` draws fresh tasks from the training distribution. "
        "The 95% interval is Wilson's, over every sample scored.",
        "",
        "| benchmark | tasks | samples/task | pass@1 | 95% CI | decoder | decoding |",
        "|---|---:|---:|---:|---|---|---|",
        *[_eval_row(ev, causal=causal) for ev in evals],
        "",
    ]


def recommended_decoding(generation: Mapping[str, Any], *, causal: bool) -> str:
    """A sentence on the decoding a generation_config.json recommends ('' when it has no sampler settings)."""
    if "max_new_tokens" not in generation:
        return ""
    text = (f"Recommended decoding (generation_config.json, the default of `unmask generate` and `unmask eval`): "
            f"{_sampler_words(generation, causal=causal)}")
    if not causal and generation.get("decoder") not in (None, "reference"):
        text += f", the {generation['decoder']} decoder with blocks of {generation.get('block_length')} tokens"
    if not causal and generation.get("stop_last"):
        text += ", stop_last on (no end-of-text or pad is committed while a mask lies to its left)"
    return text + "."


def _use(model_dir: Path, *, causal: bool, block: int | None = None) -> list[str]:
    path = model_dir / "generation_config.json"
    generation = _read_json(path) if path.is_file() else {}
    sentence = recommended_decoding(generation, causal=causal)
    lines = ["## Use", ""] + ([sentence, ""] if sentence else [])
    lines += [
        "```bash",
        f"unmask generate {model_dir} --prompt-file PROMPT.py   # sampler defaults from generation_config.json",
        f"unmask eval {model_dir} --benchmark synthetic",
    ]
    if not causal and generation.get("stop_last"):
        lines.append(f"unmask generate {model_dir} --prompt-file PROMPT.py --no-stop-last   # Dream's sampler exactly")
    if block:  # a block-diffusion model runs only the block decoders (the reference sampler is full-attention)
        lines.append(f"unmask generate {model_dir} --prompt-file PROMPT.py --decoder parallel --block-length {block} "
                     "--threshold 0.9   # several tokens per forward")
    elif not causal and generation.get("decoder") not in (None, "reference"):
        lines.append(f"unmask generate {model_dir} --prompt-file PROMPT.py --decoder reference   # the plain "
                     "Dream sampler")
    return lines + ["```"]


def _count_parameters(config: Mapping[str, Any]) -> int:
    from unmask.checkpoint import config_from_hf

    return config_from_hf(dict(config))[0].num_parameters()


class _StageAction(argparse.Action):
    """Collects ``--stage NAME=DIR`` (and the ``--pretrain``/``--sft`` aliases) in command-line order."""

    def __call__(self, parser, namespace, value, option_string=None):
        if option_string == "--stage":
            name, sep, run = value.partition("=")
            if not (sep and name and run):
                parser.error(f"--stage expects NAME=RUN_DIR, got {value!r}")
        else:
            name, run = option_string.lstrip("-"), value
        namespace.stages = [*(namespace.stages or []), (name, run)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unmask.modelcard", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model directory to write README.md into")
    parser.add_argument("--stage", action=_StageAction, dest="stages", default=[], metavar="NAME=RUN_DIR",
                        help="a training stage's run directory (repeatable, in training order)")
    parser.add_argument("--pretrain", action=_StageAction, dest="stages", metavar="RUN_DIR",
                        help="alias of --stage pretrain=RUN_DIR")
    parser.add_argument("--sft", action=_StageAction, dest="stages", metavar="RUN_DIR",
                        help="alias of --stage sft=RUN_DIR")
    parser.add_argument("--eval", action="append", default=[], help="evaluation run directory (repeatable)")
    parser.add_argument("--command", required=True, help="the command that reproduces the model")
    parser.add_argument("--role", default=DEFAULT_ROLE, help="the sentence that says what the model is for "
                        "(default: the make-demo default model's)")
    args = parser.parse_args(argv)
    try:
        text = render_model_card(
            args.model,
            stages=[(name, run_summary(run)) for name, run in args.stages],
            evals=[eval_summary(e) for e in args.eval],
            command=args.command,
            role=args.role,
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    atomic_write_text(Path(args.model) / "README.md", text)
    print(f"wrote {Path(args.model) / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
