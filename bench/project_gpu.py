"""Roofline projection to a GPU: tokens/s of each decoder and of a KV-cached AR model, projected, not measured.

One forward of T query tokens over S cached key/value tokens at batch B is costed on a roofline
(src/unmask/analysis/roofline.py):

    time  = max(bytes / bandwidth, FLOPs / peak FLOP/s)
    bytes = params*p + 2*L*(S+T)*kv_heads*head_dim*p*B                (weights, K/V read and written)
    FLOPs = 2*params_non_embedding*B*T + 4*L*B*T*(S+T)*hidden + 2*B*T*hidden*vocab
            (B batch, L layers, p bytes per value: 2 for bf16)

Each decoder's measured tokens per forward and canvases per forward (a `bench/decode.py` JSON line, via
--decode-json) set how many forwards it needs and of what shape; the AR model does one prefill forward and then
one token per forward over a growing cache. Without --decode-json, give decoders as
--decoder NAME:TOKENS_PER_FORWARD:QUERY_TOKENS_PER_FORWARD (labelled example inputs in the output). GPU figures
are vendor datasheet peaks, so every number here is an upper bound from a formula, not a measurement. Prints one
JSON line, including the reproduce command.

    python bench/project_gpu.py --model dream-7b --gpu h100
    python bench/decode.py --model DIR --no-exec > /tmp/d.json && \\
        python bench/project_gpu.py --model dream-7b --gpu h200 --decode-json /tmp/d.json --markdown
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from unmask.analysis.roofline import (
    FORMULA,
    GPUS,
    DecoderShape,
    ar_tokens_per_s,
    decoder_tokens_per_s,
    dtype_bytes,
    forward_cost,
    gpu,
    positive,
    shape_for,
)
from unmask.config import MODEL_PRESETS, ModelConfig
from unmask.errors import UnmaskError

# Used when no --decode-json or --decoder is given: the README's measured CPU rows (tokens per forward,
# reports/decoding.md), so the default run shows the shape of the answer; labelled "example" in the output.
EXAMPLE_DECODERS = {"reference": 1.0, "parallel+dual τ=0.9": 1.97, "parallel+dual τ=0.7": 3.25}


def model_config(name: str) -> ModelConfig:
    """A preset name or a model directory / config.json path."""
    if name in MODEL_PRESETS:
        return ModelConfig.from_name(name)
    from unmask.checkpoint import config_from_hf

    path = Path(name)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise UnmaskError(f"--model {name!r} is neither a preset ({', '.join(MODEL_PRESETS)}) nor a config.json")
    return config_from_hf(json.loads(path.read_text(encoding="utf-8")), str(path))[0]


def decode_json(path: str) -> dict:
    """The last JSON line of a `bench/decode.py` output file."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip().startswith("{")]
    if not lines:
        raise UnmaskError(f"--decode-json {path}: no JSON line found")
    result = json.loads(lines[-1])
    if result.get("bench") != "decode" or "decoders" not in result:
        raise UnmaskError(f"--decode-json {path}: not a bench/decode.py result (no 'decoders')")
    return result


def shapes_from_decode(result: dict, prompt: int, new: int) -> list[DecoderShape]:
    block = result.get("block_length", 32)
    shapes = []
    for name, row in result["decoders"].items():
        if name == "autoregressive":
            continue  # projected from the model config instead
        canvases = row["canvas_forwards"] / row["forward_passes"] if row.get("canvas_forwards") else 1.0
        shapes.append(shape_for(name, row["tokens_per_forward"], prompt=prompt, new=new, block=block,
                                canvases=canvases))
    return shapes


def parse_decoder(text: str) -> DecoderShape:
    parts = text.rsplit(":", 2)
    if len(parts) != 3:
        raise UnmaskError(f"--decoder {text!r}: expected NAME:TOKENS_PER_FORWARD:QUERY_TOKENS_PER_FORWARD")
    try:
        tpf, query = float(parts[1]), float(parts[2])
    except ValueError:
        raise UnmaskError(f"--decoder {text!r}: tokens and query tokens per forward must be numbers") from None
    positive(f"--decoder {parts[0]} tokens per forward", tpf)
    positive(f"--decoder {parts[0]} query tokens per forward", query)
    return DecoderShape(parts[0], tpf, query)


def markdown(result: dict) -> str:
    batches = result["batches"]
    head = "| decoder | tokens/forward | " + " | ".join(f"projected tokens/s, batch {b}" for b in batches) + " |"
    lines = [head, "|---" * (2 + len(batches)) + "|"]
    for name, row in result["decoders"].items():
        cells = " | ".join(f"{row['tokens_per_s'][str(b)]:.0f}" for b in batches)
        lines.append(f"| {name} | {row['tokens_per_forward']:.2f} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dream-7b", help="preset name or a model directory / its config.json")
    parser.add_argument("--dtype", default="bf16", help="bytes per weight and K/V value: bf16/fp16 2, fp32 4, fp8 1")
    parser.add_argument("--gpu", default="h100", help=f"preset: {', '.join(GPUS)} (datasheet figures), "
                        "or custom with --bandwidth and --flops")
    parser.add_argument("--bandwidth", type=float, default=None, help="memory bandwidth in bytes/s (overrides)")
    parser.add_argument("--flops", type=float, default=None, help="peak FLOP/s (overrides)")
    parser.add_argument("--prompt-length", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--block-length", type=int, default=32, help="for the example decoders' cache shapes")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--decode-json", default=None, help="a bench/decode.py output (its last JSON line)")
    parser.add_argument("--decoder", action="append", default=[],
                        help="NAME:TOKENS_PER_FORWARD:QUERY_TOKENS_PER_FORWARD, an example input (repeatable)")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table after the JSON")
    args = parser.parse_args()
    try:
        result = project(args)
    except (UnmaskError, ValueError) as err:
        parser.error(str(err))
    print(json.dumps(result, ensure_ascii=False))
    if args.markdown:
        print(markdown(result))


def project(args: argparse.Namespace) -> dict:
    config = model_config(args.model)
    p = dtype_bytes(args.dtype)
    device = gpu(args.gpu if args.gpu != "custom" else None, bandwidth=args.bandwidth, flops=args.flops)
    prompt, new = args.prompt_length, args.max_new_tokens
    positive("--prompt-length", prompt)
    positive("--max-new-tokens", new)
    positive("--block-length", args.block_length)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    for b in batches:
        positive("batch", b)
    if args.decode_json:
        source, shapes = "measured (" + args.decode_json + ")", shapes_from_decode(decode_json(args.decode_json),
                                                                                  prompt, new)
    elif args.decoder:
        source, shapes = "example inputs (--decoder)", [parse_decoder(d) for d in args.decoder]
    else:
        source = "example inputs (README CPU tokens/forward, reports/decoding.md)"
        shapes = [shape_for(n, t, prompt=prompt, new=new, block=args.block_length)
                  for n, t in EXAMPLE_DECODERS.items()]
    rows = {}
    for s in shapes:
        rows[s.name] = {"tokens_per_forward": s.tokens_per_forward, "query_tokens": s.query,
                        "cached_tokens": s.cached, "canvases_per_forward": round(s.canvases, 3),
                        "full_forwards": s.full_forwards,
                        "tokens_per_s": {str(b): round(decoder_tokens_per_s(config, device, s, prompt=prompt, new=new,
                                                                            batch=b, bytes_per_value=p), 1)
                                         for b in batches}}
    rows["autoregressive (KV cache)"] = {
        "tokens_per_forward": 1.0, "query_tokens": 1, "cached_tokens": f"{prompt}..{prompt + new - 1}",
        "tokens_per_s": {str(b): round(ar_tokens_per_s(config, device, prompt=prompt, new=new, batch=b,
                                                       bytes_per_value=p), 1) for b in batches}}
    one = forward_cost(config, device, query=1, cached=prompt, bytes_per_value=p)
    return {
        "bench": "project_gpu", "projection": True,
        "note": "roofline projection from datasheet peaks, not a measurement",
        "model": args.model, "params_b": round(config.num_parameters() / 1e9, 3), "dtype": args.dtype,
        "gpu": device.name, "bandwidth": device.bandwidth, "flops": device.flops, "formula": FORMULA,
        "prompt_length": prompt, "max_new_tokens": new, "batches": batches, "decoder_inputs": source,
        "one_token_forward_ms": round(one.seconds * 1e3, 3), "one_token_forward_bound": one.bound,
        "decoders": rows,
        "command": "python bench/project_gpu.py " + shlex.join(sys.argv[1:]),
    }


if __name__ == "__main__":
    main()
