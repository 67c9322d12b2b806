"""Model cards: a Hugging Face-style README.md for a trained model, written from its run directories.

Everything in the card is read from files the training and evaluation runs wrote (run_config.json,
metrics.jsonl, eval_config.json, summary.json), so the card cannot drift from what was measured.

    python -m unmask.modelcard MODEL_DIR --pretrain RUN --sft RUN --eval EVAL_DIR [--eval ...] --command CMD
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unmask.errors import ConfigError
from unmask.fileio import atomic_write_text, parse_jsonl


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err.msg}") from None


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """What a training run did: its config, steps, tokens, last train/validation loss and compute time.

    Compute time is the sum over logged intervals of (tokens in the interval / tokens/s), which counts
    only time spent training (not time between a kill and a resume).
    """
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "run_config.json")
    metrics_path = run_dir / "metrics.jsonl"
    try:
        text = metrics_path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {metrics_path}: {err.strerror}") from None
    # A torn last line (a run killed mid-write) is not a metric.
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines = lines[:-1]
    rows = [row for _, row in parse_jsonl(lines, metrics_path, error=ConfigError)]
    if not rows:
        raise ConfigError(f"{metrics_path} has no metrics (the run never logged a step)")
    seconds, tokens_before = 0.0, 0
    for row in rows:
        if row.get("tokens_per_s"):
            seconds += (row["tokens"] - tokens_before) / row["tokens_per_s"]
        tokens_before = row["tokens"]
    val = [row for row in rows if "val_loss" in row]
    last = rows[-1]
    return {
        "config": config, "steps": last["step"], "tokens": last["tokens"], "epochs": last.get("epoch"),
        "loss": last["loss"], "first_loss": rows[0]["loss"],
        "val_loss": val[-1]["val_loss"] if val else None, "val_step": val[-1]["step"] if val else None,
        "seconds": seconds,
    }


def eval_summary(eval_dir: str | Path) -> dict[str, Any]:
    eval_dir = Path(eval_dir)
    summary = _read_json(eval_dir / "summary.json")
    settings = _read_json(eval_dir / "eval_config.json")
    return {"summary": summary, "eval": settings["eval"], "decode": settings["decode"]}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_model_card(model_dir: str | Path, *, pretrain: dict[str, Any] | None, sft: dict[str, Any] | None,
                      evals: Sequence[dict[str, Any]], command: str) -> str:
    """The README.md text (YAML front matter + markdown) for ``model_dir``."""
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    n_params = _count_parameters(config)
    size_mb = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 1e6
    lines = [
        "---",
        "library_name: unmask",
        "pipeline_tag: text-generation",
        "tags: [masked-diffusion, dream, code]",
        "license: mit",
        "---",
        "",
        f"# {model_dir.name}",
        "",
        f"A {n_params / 1e6:.2f}M-parameter masked diffusion language model for Python in the Dream architecture "
        f"(bidirectional Qwen2 stack, shifted logits), trained on 2 CPU cores by `{command}`. It is the default "
        "model of `make demo` and of the reports under `reports/`: small enough to commit and to run anywhere, "
        "not a useful code assistant.",
        "",
        "## Architecture",
        "",
        f"- layers {config['num_hidden_layers']}, width {config['hidden_size']}, SwiGLU {config['intermediate_size']}, "
        f"heads {config['num_attention_heads']} (KV heads {config['num_key_value_heads']}), RoPE θ "
        f"{config.get('rope_theta')}, vocabulary {config['vocab_size']} (byte-level BPE with Dream's special tokens)",
        f"- weights: {config.get('torch_dtype', 'float32')} safetensors, {size_mb:.1f} MB; "
        "`unmask.load` computes in float32 on CPU",
        "",
        "## Training",
        "",
        "| stage | data | steps | tokens | epochs | first loss | final loss | val loss | compute |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in (("pretrain", pretrain), ("sft", sft)):
        if run is None:
            continue
        c = run["config"]
        data = c["data"] if name == "pretrain" else f"{Path(c['data']).name} (prompt never masked)"
        lines.append(
            f"| {name} | {data} | {run['steps']} | {run['tokens']:,} | {_fmt(run['epochs'], 2)} | "
            f"{_fmt(run['first_loss'])} | {_fmt(run['loss'])} | {_fmt(run['val_loss'])} | "
            f"{run['seconds'] / 60:.1f} min |"
        )
    lines += ["", "Settings of each stage (all other fields at `TrainConfig` defaults):", ""]
    for name, run in (("pretrain", pretrain), ("sft", sft)):
        if run is None:
            continue
        c = run["config"]
        keys = ("preset", "seq_len", "batch_size", "grad_accum", "lr", "warmup_steps", "min_lr_ratio",
                "weight_decay", "t_method", "mask_eps", "loss_normalizer", "seed")
        if c.get("init_from"):  # a continued model: the preset field is unused, say where it started instead
            keys = ("init_from",) + keys[1:]
        lines.append(f"- **{name}**: " + ", ".join(f"{k}={c[k]}" for k in keys if k in c))
    lines += [
        "",
        "Losses are the masked-diffusion ELBO (1/p(t)-weighted cross-entropy on masked tokens, per token). "
        "Compute is time spent in training steps on the machine that ran the recipe (2 CPU cores, shared with "
        "other work part of the time, so it is an upper bound).",
        "",
        "## Evaluation",
        "",
        "Programs run in the `unmask` sandbox; `synthetic` is the procedural benchmark's held-out split (compositions "
        "of primitives never seen in training); `synthetic-train` draws fresh tasks from the training distribution.",
        "",
        "| benchmark | tasks | samples/task | pass@1 | decoding |",
        "|---|---:|---:|---:|---|",
    ]
    for ev in evals:
        s, d, e = ev["summary"], ev["decode"], ev["eval"]
        decoding = (f"{d['max_new_tokens']} tokens, {d['steps']} steps, alg {d['alg']}, temperature "
                    f"{d['temperature']}" + (f", top_p {d['top_p']}" if d.get("top_p") else ""))
        lines.append(f"| {s['benchmark']} (seed {e['seed']}) | {s['tasks']} | {s.get('samples_per_task', 1)} | "
                     f"{_fmt(s['pass@k'].get('pass@1'))} | {decoding} |")
    lines += [
        "",
        "## Use",
        "",
        "```bash",
        f"unmask generate {model_dir} --prompt-file PROMPT.py   # sampler defaults from generation_config.json",
        f"unmask eval {model_dir} --benchmark synthetic",
        "```",
        "",
        "## Reproduce",
        "",
        f"`{command}` (each stage resumes from its last checkpoint if interrupted).",
        "",
    ]
    return "\n".join(lines)


def _count_parameters(config: dict[str, Any]) -> int:
    from unmask.checkpoint import config_from_hf

    return config_from_hf(config)[0].num_parameters()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unmask.modelcard", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model directory to write README.md into")
    parser.add_argument("--pretrain", help="pretraining run directory")
    parser.add_argument("--sft", help="SFT run directory")
    parser.add_argument("--eval", action="append", default=[], help="evaluation run directory (repeatable)")
    parser.add_argument("--command", required=True, help="the command that reproduces the model")
    args = parser.parse_args(argv)
    try:
        text = render_model_card(
            args.model,
            pretrain=run_summary(args.pretrain) if args.pretrain else None,
            sft=run_summary(args.sft) if args.sft else None,
            evals=[eval_summary(e) for e in args.eval],
            command=args.command,
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    atomic_write_text(Path(args.model) / "README.md", text)
    print(f"wrote {Path(args.model) / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
