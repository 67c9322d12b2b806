"""Reference-sampler throughput: forward passes/s and committed tokens/s for a randomly initialised preset.

Prints one JSON line (results + the command that reproduces it). Random weights are fine for timing: the
reference sampler's cost does not depend on what the model predicts (fixed steps, no early stop).

    python bench/sampler.py --preset small --max-new-tokens 256 --steps 256
    python bench/sampler.py --preset dream-7b --device cuda --dtype bfloat16      # on a GPU machine
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
from unmask.checkpoint import parse_dtype
from unmask.config import ModelConfig
from unmask.model import DreamModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--alg", default="entropy")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top-p", type=float, default=0.95, help="1.0 turns the nucleus filter (a vocab sort) off")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = ModelConfig.from_name(args.preset)
    config = config.replace(mask_token_id=config.vocab_size - 1, pad_token_id=0, eos_token_id=0)
    dtype = parse_dtype(args.dtype)
    with torch.device(args.device):
        model = DreamModel(config).to(dtype)
    model.init_weights(torch.Generator(device=args.device).manual_seed(0))
    model.eval()
    prompt = torch.randint(1, config.vocab_size - 1, (args.batch, args.prompt_len),
                           generator=torch.Generator().manual_seed(0)).to(args.device)
    params = dict(max_new_tokens=args.max_new_tokens, steps=args.steps, alg=args.alg, temperature=args.temperature,
                  top_p=args.top_p)

    unmask.generate(model, prompt, **{**params, "steps": 2, "max_new_tokens": 8})  # warm-up
    timings = []
    for r in range(args.repeats):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = unmask.generate(model, prompt, seed=r, **params)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    best = min(timings)
    result = {
        "bench": "sampler/reference", "preset": args.preset, "params_m": round(config.num_parameters() / 1e6, 2),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "cpu_threads": torch.get_num_threads(), "dtype": args.dtype, "batch": args.batch,
        "prompt_len": args.prompt_len, "max_new_tokens": args.max_new_tokens, "steps": args.steps,
        "alg": args.alg, "temperature": args.temperature, "top_p": args.top_p,
        "seconds_best": round(best, 3), "seconds_all": [round(t, 3) for t in timings],
        "forward_passes_per_s": round(out.stats.forward_passes / best, 2),
        "committed_tokens_per_s": round(args.batch * args.max_new_tokens / best, 2),
        "seconds_per_sample": round(best / args.batch, 3),
        "torch": torch.__version__, "python": platform.python_version(),
        "command": "python bench/sampler.py " + shlex.join(sys.argv[1:]),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
