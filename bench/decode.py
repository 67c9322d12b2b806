"""Decoder benchmark: every decoder on the same prompts, against the reference sampler.

For each decoder: tokens committed per (sequential) forward, useful tokens/s (tokens before the first stop
token), wall-time ratio to the reference, pass@1 and its delta to the reference (programs run in the
sandbox via the evaluation harness), and for the lossless decoder whether its output equals the reference.
Prompts default to the procedural held-out split. Prints one JSON line, including the reproduce command.

    unmask init /tmp/small --preset small && python bench/decode.py --model /tmp/small --tasks 8
    python bench/decode.py --model models/unmask-small --tasks 40 --max-new-tokens 128 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time

import torch

import unmask
from unmask.config import DecoderConfig
from unmask.decoding import decode
from unmask.decoding.eos import pad_after_stop
from unmask.evaluate import clean_completion, execute, program_mode, prompt_text

DECODERS = {
    "reference": DecoderConfig(),
    "lossless": DecoderConfig(lossless=True),
    # exact text: stops once every row's text (up to its first stop token) is final; the tail is pad
    "lossless+early-stop": DecoderConfig(lossless=True, early_stop=True),
    "blocks": DecoderConfig(decoder="blocks"),
    "blocks+prefix": DecoderConfig(decoder="blocks", cache="prefix"),
    "parallel": DecoderConfig(decoder="parallel"),
    "parallel+prefix": DecoderConfig(decoder="parallel", cache="prefix"),
    "parallel+dual": DecoderConfig(decoder="parallel", cache="dual"),
    "parallel-factor+dual": DecoderConfig(decoder="parallel", cache="dual", factor=1.0),
}


def batches(prompts: list[list[int]], size: int, pad: int, device):
    """(start, ids, attention mask) of each left-padded chunk of ``size`` prompts, in order."""
    for start in range(0, len(prompts), size):
        chunk = prompts[start:start + size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        yield start, ids, mask


def verdicts(tasks, tokenizer, generated: list[list[int]]) -> str:
    """One character per task, in task order: "1" if its completion passes its tests in the sandbox, else "0"
    (kept in the JSON so that two rows can be compared task by task)."""
    pending = [(t.task_id, 0, clean_completion(tokenizer.decode(g), program_mode(t, False)))
               for t, g in zip(tasks, generated)]
    results = execute({t.task_id: t for t in tasks}, pending, mode_of=lambda t: program_mode(t, False),
                      timeout=5.0, memory_mb=1024)
    passed = {r.task_id for r in results if r.verdict == "passed"}
    return "".join("1" if t.task_id in passed else "0" for t in tasks)


def pass_at_1(tasks, tokenizer, generated: list[list[int]]) -> dict:
    """The ``pass@1`` and per-task ``passes`` entries of a row."""
    passes = verdicts(tasks, tokenizer, generated)
    return {"pass@1": round(passes.count("1") / len(passes), 4), "passes": passes}


def device_sync(device: str):
    """A function that waits for the device's queued work (a no-op on CPU), so that timings are honest."""
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def sampler_config(model, args):
    """The model's generation defaults with the benchmark's length, steps, confidence rule and temperature."""
    return model.generation_defaults.replace(max_new_tokens=args.max_new_tokens,
                                             steps=args.steps or args.max_new_tokens, alg=args.alg,
                                             temperature=args.temperature)


def benchmark_prompts(args, tokenizer) -> tuple[list, list[list[int]]]:
    """(tasks, prompt ids) of ``--benchmark``: the procedural held-out split or an `unmask eval` benchmark."""
    from unmask.data.synthetic import synthetic_tasks

    if args.benchmark == "synthetic":
        tasks = synthetic_tasks("heldout", args.tasks, args.seed)
    else:
        from unmask.evaluate import EvalConfig, load_tasks

        tasks = load_tasks(EvalConfig(benchmark=args.benchmark, limit=args.tasks, seed=args.seed))
    return tasks, [tokenizer.encode(prompt_text(t, tokenizer, chat=False)) for t in tasks]


def measure(model, tokenizer, tasks, prompts, config, settings: dict[str, DecoderConfig], args
            ) -> tuple[dict[str, dict], dict[str, list[list[int]]]]:
    """(row, generated ids) of each named decoder over the same prompts and batches: forwards, tokens per
    forward, useful tokens/s, seconds and (unless --no-exec) pass@1 with per-task verdicts."""
    pad, stops = tokenizer.special.pad, tokenizer.special.stop_ids()
    sync = device_sync(args.device)
    decode(model, torch.tensor([prompts[0]], device=model.device), config=config.replace(max_new_tokens=8, steps=2))
    rows: dict[str, dict] = {}
    outputs: dict[str, list[list[int]]] = {}
    for name, decoder in settings.items():
        if decoder.decoder != "reference" and not args.no_early_stop:
            decoder = decoder.replace(early_stop=True)
        forwards = row_forwards = canvases = committed = useful = 0
        seconds = 0.0
        generated: list[list[int]] = []
        for start, ids, mask in batches(prompts, args.batch, pad, model.device):
            sync()
            began = time.perf_counter()
            out = decode(model, ids, mask, config=config, decoder=decoder, stop_ids=stops,
                         generator=torch.Generator(device=model.device).manual_seed(args.seed + start))
            sync()
            seconds += time.perf_counter() - began
            forwards += out.stats.forward_passes
            row_forwards += out.stats.forward_passes * len(ids)  # per-sequence view of the batched calls
            canvases += out.stats.canvas_forwards
            committed += out.stats.tokens_committed
            useful += out.stats.useful_tokens or 0
            generated += out.generated.tolist()
        outputs[name] = generated
        rows[name] = {"forward_passes": forwards, "canvas_forwards": canvases,
                      "tokens_per_forward": round(committed / row_forwards, 3), "useful_tokens": useful,
                      "useful_tokens_per_s": round(useful / seconds, 2), "seconds": round(seconds, 3)}
        if not args.no_exec:
            rows[name].update(pass_at_1(tasks, tokenizer, generated))
    return rows, outputs


def ar_row(args, tasks, prompts, pad, stops, sync) -> dict:
    """The autoregressive baseline on the same prompts and batches: greedy, one token per forward."""
    from unmask.autoregressive import generate_ar

    model, tokenizer = unmask.load(args.ar_model, dtype=args.dtype, device=args.device)
    if not model.causal:
        raise SystemExit(f"--ar-model {args.ar_model} is not a causal (qwen2-format) checkpoint")
    generate_ar(model, torch.tensor([prompts[0]], device=model.device), max_new_tokens=2)  # warm-up
    forwards = useful = 0
    seconds = 0.0
    generated: list[list[int]] = []
    for _, ids, mask in batches(prompts, args.batch, pad, model.device):
        sync()
        began = time.perf_counter()
        out = generate_ar(model, ids, mask, max_new_tokens=args.max_new_tokens, stop_ids=stops, pad_id=pad)
        sync()
        seconds += time.perf_counter() - began
        forwards += out.forward_passes
        useful += out.useful_tokens  # tokens before the first stop, as the diffusion rows count them
        generated += out.generated.tolist()
    row = {"forward_passes": forwards, "canvas_forwards": forwards, "tokens_per_forward": 1.0,
           "useful_tokens": useful, "useful_tokens_per_s": round(useful / seconds, 2), "seconds": round(seconds, 3),
           "model": args.ar_model}
    if not args.no_exec:
        row.update(pass_at_1(tasks, tokenizer, generated))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory (e.g. from `unmask init DIR --preset small`)")
    parser.add_argument("--tasks", type=int, default=8, help="tasks (prompts) of the benchmark")
    parser.add_argument("--benchmark", default="synthetic",
                        help="synthetic (the procedural held-out split) or any `unmask eval` benchmark, e.g. "
                             "humaneval for timing on real prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None, help="default: max-new-tokens (one token per step)")
    parser.add_argument("--alg", default="entropy")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--sweep-thresholds", default="",
                        help="comma-separated extra thresholds: one parallel+dual row each (the speed/quality curve)")
    parser.add_argument("--draft", type=int, default=4, help="lossless: canvases drafted and verified per forward")
    parser.add_argument("--batch", type=int, default=4, help="prompts decoded together (left padding)")
    parser.add_argument("--decoders", default=",".join(DECODERS), help="comma-separated subset of the names above")
    parser.add_argument("--no-early-stop", action="store_true", help="fast decoders run to the end")
    parser.add_argument("--no-exec", action="store_true", help="skip the sandbox (timing only)")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ar-model", default=None,
                        help="also time an autoregressive baseline (a causal model of the same preset, "
                             "e.g. from recipes/ar-baseline.sh): greedy, KV cache, stops at EOS")
    args = parser.parse_args()

    model, tokenizer = unmask.load(args.model, dtype=args.dtype, device=args.device)
    if getattr(model.config, "block_size", None) is not None:
        parser.error(f"{args.model} is a block-diffusion model: it runs only its exact block decoders, with no "
                     "reference to compare against here; benchmark it with bench/hybrid.py")
    config = sampler_config(model, args)
    tasks, prompts = benchmark_prompts(args, tokenizer)
    pad, stops = tokenizer.special.pad, tokenizer.special.stop_ids()
    names = [n.strip() for n in args.decoders.split(",")]
    unknown = [n for n in names if n not in DECODERS]
    if unknown:
        parser.error(f"unknown decoders {unknown}; choose from {list(DECODERS)}")
    if "reference" not in names:
        names.insert(0, "reference")
    settings = {name: DECODERS[name].replace(block_length=args.block_length, threshold=args.threshold,
                                             draft=args.draft) for name in names}
    for tau in (float(x) for x in args.sweep_thresholds.split(",") if x.strip()):
        settings[f"parallel+dual τ={tau:g}"] = DECODERS["parallel+dual"].replace(block_length=args.block_length,
                                                                                threshold=tau)
    rows, outputs = measure(model, tokenizer, tasks, prompts, config, settings, args)
    if args.ar_model:
        rows["autoregressive"] = ar_row(args, tasks, prompts, pad, stops, device_sync(args.device))
    ref = rows["reference"]
    for row in rows.values():
        row["wall_ratio_vs_reference"] = round(ref["seconds"] / row["seconds"], 3)  # > 1: faster
        row["forward_ratio_vs_reference"] = round(ref["forward_passes"] / row["forward_passes"], 3)
        if "pass@1" in row:
            row["pass@1_delta"] = round(row["pass@1"] - ref["pass@1"], 4)
    if "autoregressive" in rows:
        ar_rate = rows["autoregressive"]["useful_tokens_per_s"]
        for row in rows.values():
            row["tokens_per_s_vs_autoregressive"] = round(row["useful_tokens_per_s"] / ar_rate, 3)
    if "lossless" in outputs:
        rows["lossless"]["identical_to_reference"] = outputs["lossless"] == outputs["reference"]
    if "lossless+early-stop" in outputs:  # the same text: tokens up to the first stop, pad after it
        cut = pad_after_stop(torch.tensor(outputs["reference"]), stops, pad).tolist()
        rows["lossless+early-stop"]["identical_text_to_reference"] = outputs["lossless+early-stop"] == cut
    result = {
        "bench": "decode", "model": args.model, "params_m": round(model.config.num_parameters() / 1e6, 2),
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
        "cpu_threads": torch.get_num_threads(), "benchmark": args.benchmark, "tasks": len(tasks), "batch": args.batch,
        "max_new_tokens": config.max_new_tokens, "steps": config.steps, "alg": config.alg,
        "temperature": config.temperature, "block_length": args.block_length, "threshold": args.threshold,
        "early_stop": not args.no_early_stop, "decoders": rows,
        "torch": torch.__version__, "python": platform.python_version(),
        "command": "python bench/decode.py " + shlex.join(sys.argv[1:]),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
