"""Training throughput: tokens/s of the masked-diffusion training step for model presets (CPU by default).

Runs the real loop (``unmask.train.train``) on random token rows for a few warm-up steps and then a timed
window, and prints one JSON line (results per preset + the command that reproduces it). Each result also
gives the model FLOPs per token (``model_flops_per_token``) and the achieved GFLOP/s; on CUDA, the model
FLOPs utilisation (MFU) against the GPU's dense bf16 peak (``PEAK_BF16_FLOPS``).

    python bench/train.py --presets tiny small --seq-len 256 --batch-size 8 --steps 6
    python bench/train.py --presets base --device cuda --batch-size 32 --seq-len 1024      # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time

import torch

from unmask.config import ModelConfig
from unmask.model import DreamModel
from unmask.train import TrainConfig, TrainData, train
from unmask.training_data import TokenRows

# Dense (no 2:4 sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, in FLOP/s. Assumption: the SXM
# parts at their boost clocks; H200 has H100's compute (only memory differs), so both are 989 TFLOP/s. PCIe
# / NVL variants are slower, so MFU measured on them reads low. Matched by substring of the device name.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def model_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 N (forward 2 N + backward 4 N multiply-adds over the matmul weights) plus
    the attention scores and values, 12 L h T (Q K^T and A V, each 2 h T per layer, times 3 for fwd + bwd).

    N counts the parameters a token multiplies with: every block, the final norm and lm_head, but not the
    input embedding (a lookup). Attention is bidirectional, so the full T (no causal halving) is right.
    Gradient-checkpointing recompute is not counted: MFU measures useful model FLOPs."""
    n = config.num_parameters() - config.vocab_size * config.hidden_size  # drop the embedding lookup
    if config.tie_word_embeddings:
        n += config.vocab_size * config.hidden_size  # lm_head still multiplies with the tied matrix
    return 6.0 * n + 12.0 * config.num_hidden_layers * config.hidden_size * seq_len


def peak_flops(device: str) -> float | None:
    """The dense bf16 peak of the CUDA device (None on CPU or for a GPU not in the table)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def bench_preset(preset: str, args: argparse.Namespace) -> dict:
    config = ModelConfig.from_name(preset)
    config = config.replace(
        mask_token_id=config.vocab_size - 1, pad_token_id=0, eos_token_id=0, bos_token_id=0
    )
    model = DreamModel(config)
    model.init_weights(torch.Generator().manual_seed(0))
    n_rows = args.batch_size * (args.warmup + args.steps) + 1
    ids = torch.randint(
        1, config.vocab_size - 1, (n_rows, args.seq_len), generator=torch.Generator().manual_seed(0)
    )
    rows = TokenRows(ids, torch.ones(n_rows, dtype=torch.long))
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = TrainConfig(
            run_dir=run_dir,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            max_steps=args.warmup + args.steps,
            warmup_steps=1,
            eval_every=0,
            save_every=10**9,
            log_every=10**9,
            progress=False,
            device=args.device,
            gradient_checkpointing=args.gradient_checkpointing,
        )
        if args.device.startswith("cuda"):

            def on_step(step: int, record: dict) -> None:
                torch.cuda.synchronize()
                stamps.append(time.perf_counter())
        else:

            def on_step(step: int, record: dict) -> None:
                stamps.append(time.perf_counter())

        # save_every is huge, but the loop always checkpoints the last step; that save is outside the window
        train(cfg, model=model, data=TrainData(rows, rows), on_step=on_step)
    window = stamps[-1] - stamps[args.warmup - 1]
    tokens = args.steps * args.batch_size * args.seq_len
    tokens_per_s = tokens / window
    flops_per_token = model_flops_per_token(config, args.seq_len)
    result = {
        "preset": preset,
        "parameters_m": round(config.num_parameters() / 1e6, 2),
        "tokens_per_s": round(tokens_per_s, 1),
        "step_s": round(window / args.steps, 4),
        "model_flops_per_token": flops_per_token,
        "achieved_gflops": round(flops_per_token * tokens_per_s / 1e9, 2),
    }
    peak = peak_flops(args.device)
    if peak is not None:
        result["mfu"] = round(flops_per_token * tokens_per_s / peak, 4)
        result["peak_flops"] = peak
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the timed window starts after a step)")
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [bench_preset(p, args) for p in args.presets]
    print(
        json.dumps(
            {
                "benchmark": "train",
                "results": results,
                "seq_len": args.seq_len,
                "batch_size": args.batch_size,
                "device": args.device,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
                "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            }
        )
    )


if __name__ == "__main__":
    main()
