"""Roofline projection (src/unmask/analysis/roofline.py, bench/project_gpu.py) against hand-computed values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unmask.analysis.roofline import (
    GPUS,
    DecoderShape,
    ar_tokens_per_s,
    decoder_tokens_per_s,
    forward_cost,
    gpu,
    shape_for,
)
from unmask.config import ModelConfig
from unmask.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TEST = ModelConfig.from_name("test")  # vocab 128, hidden 32, inter 64, 2 layers, 4 heads, 2 kv heads (head_dim 8)
SLOW = gpu(bandwidth=1e6, flops=1e9)


def test_params_by_hand():
    attn = (32 * 32 + 32) + 2 * (32 * 16 + 16) + 32 * 32  # q+bias, k/v+bias (2 kv heads * 8), o
    block = attn + 3 * 32 * 64 + 2 * 32  # + SwiGLU + two norms
    assert TEST.num_parameters() == 128 * 32 + 2 * block + 32 + 128 * 32 == 26912


def test_forward_time_equals_hand_formula():
    # T=4 query tokens over S=10 cached, batch 2, bf16 (2 bytes)
    moved = 26912 * 2 + 2 * 2 * (10 + 4) * 2 * 8 * 2 * 2  # weights + K/V read and written
    flops = 2 * (26912 - 2 * 128 * 32) * 2 * 4 + 4 * 2 * 2 * 4 * (10 + 4) * 32 + 2 * 2 * 4 * 32 * 128
    assert (moved, flops) == (57408, 393728)
    f = forward_cost(TEST, SLOW, query=4, cached=10, batch=2, bytes_per_value=2)
    assert f.bytes == moved and f.flops == flops
    assert f.seconds == pytest.approx(max(moved / 1e6, flops / 1e9)) and f.bound == "memory"
    fast_memory = gpu(bandwidth=1e12, flops=1e9)
    f = forward_cost(TEST, fast_memory, query=4, cached=10, batch=2)
    assert f.seconds == pytest.approx(flops / 1e9) and f.bound == "compute"


def test_memory_bound_small_compute_bound_large():
    dream, h100 = ModelConfig.from_name("dream-7b"), gpu("h100")
    one = forward_cost(dream, h100, query=1, cached=256)
    block = forward_cost(dream, h100, query=32, cached=480)
    big = forward_cost(dream, h100, query=512, batch=8)
    assert one.bound == "memory" and block.bound == "memory" and big.bound == "compute"
    assert block.seconds < 1.1 * one.seconds  # a 32-token block costs about one token at batch 1
    assert big.seconds == pytest.approx(big.flops / 989e12) and big.seconds > 10 * one.seconds


def test_ar_7b_bf16_h100_is_bandwidth_over_bytes():
    dream = ModelConfig.from_name("dream-7b")
    rate = ar_tokens_per_s(dream, gpu("h100"), prompt=256, new=256, batch=1)
    assert rate == pytest.approx(3.35e12 / 15.2e9, rel=0.10)  # ≈ 220 tokens/s
    assert ar_tokens_per_s(dream, gpu("h200"), prompt=256, new=256) > rate  # more bandwidth, faster
    assert ar_tokens_per_s(dream, gpu("h100"), prompt=256, new=256, batch=8) > 6 * rate  # memory-bound: ~free rows


def test_decoder_projection_by_hand():
    # no cache, 2 tokens per forward: new/2 forwards of the whole canvas
    shape = shape_for("parallel", 2.0, prompt=6, new=8)
    assert (shape.query, shape.cached, shape.full_forwards) == (14, 0, 0)
    step = forward_cost(TEST, SLOW, query=14).seconds
    assert decoder_tokens_per_s(TEST, SLOW, shape, prompt=6, new=8) == pytest.approx(8 / (4 * step))
    # dual cache, block 4: one full forward per block (2 blocks), the rest the block over the other 10 tokens
    dual = shape_for("parallel+dual", 2.0, prompt=6, new=8, block=4)
    assert (dual.query, dual.cached, dual.full_forwards) == (4, 10, 2)
    expect = 8 / (2 * step + 2 * forward_cost(TEST, SLOW, query=4, cached=10).seconds)
    assert decoder_tokens_per_s(TEST, SLOW, dual, prompt=6, new=8) == pytest.approx(expect)
    # drafts verified together: two canvases per forward cost like batch 2
    drafts = DecoderShape("lossless", 2.0, 14, canvases=2.0)
    expect = 8 / (4 * forward_cost(TEST, SLOW, query=14, batch=2).seconds)
    assert decoder_tokens_per_s(TEST, SLOW, drafts, prompt=6, new=8) == pytest.approx(expect)
    # exact block cache (block-diffusion model), block 4, 2 tokens per forward: a prefill of the 6 prompt tokens,
    # then 4 forwards of 4 + 2 query tokens (a block, plus the finished block fed on each block's first of 2
    # steps) over the mean prefix 6 + (8 - 4) / 2 = 8
    exact = shape_for("hybrid parallel (exact)", 2.0, prompt=6, new=8, block=4)
    assert (exact.query, exact.cached, exact.full_forwards, exact.prefill) == (6, 8, 0, 6)
    expect = 8 / (forward_cost(TEST, SLOW, query=6).seconds + 4 * forward_cost(TEST, SLOW, query=6, cached=8).seconds)
    assert decoder_tokens_per_s(TEST, SLOW, exact, prompt=6, new=8) == pytest.approx(expect)


def test_bad_input_names_the_problem():
    with pytest.raises(ConfigError, match="unknown GPU 'tpu'"):
        gpu("tpu")
    with pytest.raises(ConfigError, match="bandwidth"):
        gpu("h100", bandwidth=-1.0)
    with pytest.raises(ConfigError, match="both bandwidth and flops"):
        gpu(bandwidth=1e12)
    with pytest.raises(ConfigError, match="query tokens"):
        forward_cost(TEST, GPUS["h100"], query=0)
    with pytest.raises(ConfigError, match="cached tokens"):
        forward_cost(TEST, GPUS["h100"], query=1, cached=-3)
    with pytest.raises(ConfigError, match="tokens per forward"):
        shape_for("parallel", -1.0, prompt=4, new=4)


def run_bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "project_gpu.py"), *args],
                          capture_output=True, text=True, env=env, check=False)


def test_bench_reads_decode_json_and_prints_formula(tmp_path):
    decode = {"bench": "decode", "block_length": 32, "decoders": {
        "reference": {"forward_passes": 256, "tokens_per_forward": 1.0},
        "lossless": {"forward_passes": 128, "canvas_forwards": 512, "tokens_per_forward": 2.0},
        "parallel+dual": {"forward_passes": 80, "tokens_per_forward": 3.2}}}
    path = tmp_path / "decode.json"
    path.write_text("log line\n" + json.dumps(decode) + "\n")
    out = run_bench("--model", "dream-7b", "--gpu", "h100", "--decode-json", str(path), "--markdown")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[0])
    assert result["projection"] is True and "max(bytes / bandwidth, FLOPs / peak)" in result["formula"]
    assert result["command"].startswith("python bench/project_gpu.py --model dream-7b")
    rows = result["decoders"]
    assert rows["lossless"]["canvases_per_forward"] == 4.0
    assert rows["parallel+dual"]["tokens_per_s"]["1"] > rows["autoregressive (KV cache)"]["tokens_per_s"]["1"]
    assert "| decoder |" in out.stdout
    assert "max(bytes / bandwidth" in run_bench("--help").stdout


def test_bench_bad_input_exits_with_message():
    out = run_bench("--gpu", "tpu")
    assert out.returncode == 2 and "unknown GPU 'tpu'" in out.stderr
    out = run_bench("--decoder", "x:1:-3")
    assert out.returncode == 2 and "query tokens per forward" in out.stderr
