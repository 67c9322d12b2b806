"""GPU check (#19): what one H100/H200 does with this project's code, in one JSON, in under 8 minutes.

Sections, in the order they run (cheap ones first, so a tight budget cuts the decoders, not the rest):

- forward: a random-init ``dream-7b`` in bf16, one forward of a 256-token canvas at batch 1 and 8, beside the
  roofline's lower bound on its time (``unmask.analysis.roofline``; GPU figures from the device's name);
- autoregressive: the AR baseline, ``autoregressive.generate_ar`` (KV cache, one token per forward) on the same
  weights under a causal mask: Qwen2-7B has exactly dream-7b's shape (Dream-7B is a Qwen2.5-7B adapted);
- train: one training step of the diffusion loss as ``unmask.train`` runs it (bf16 autocast over fp32 master
  weights, AdamW), on dream-7b's width with ``--train-layers`` of its 28 layers (fp32 weights + AdamW states of
  all 7.6B parameters, 122 GB, fit no single GPU), and its MFU: model FLOPs (6 N per token + attention, as
  bench/train.py) / step time / the GPU's peak;
- fsdp: the same step with the model sharded by ``unmask.train.fsdp_shard`` over a process group of one;
- cuda_tests: ``pytest -m cuda`` in a subprocess (tests/test_cuda.py);
- decoders: tokens/s at batch 1 and 8 of the reference, blocks + prefix cache, parallel τ 0.9 + dual cache and
  the lossless reference, 256 new tokens after a 256-token random prompt (``unmask.decoding.dispatch.decode``),
  beside each one's roofline projection.

Weights and prompts are random, so the tokens are meaningless: what this measures is forwards/s and, for the
fixed-step decoders (reference and blocks with steps = new tokens), tokens per forward that do not depend on the
weights (exactly 1). parallel and lossless commit whatever random weights make them commit.

Budget (``--budget-s``): each section runs under an interval timer set to what is left; when it fires the section
stops where it is (its finished parts kept), later sections are skipped, and the JSON is still written. The JSON
is rewritten atomically after every section, so a killed run leaves what it finished. Exit status: 0 all ok,
1 a section failed (an error, or a failed CUDA test), 2 the budget cut the run short.

    bench/gpu.sh                  # on the GPU machine: reports/gpu/<date>-<gpu>.json and a one-line summary
    bench/gpu.sh --dry-run        # every code path on CPU with the tiny `test` preset, in seconds (CI runs it)
    bench/gpu.sh --gpu custom --bandwidth 2e12 --flops 3e14   # a GPU the roofline presets do not name
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from unmask import runs
from unmask.analysis.roofline import GPU, GPUS, ar_tokens_per_s, decoder_tokens_per_s, forward_cost, gpu, shape_for
from unmask.autoregressive import generate_ar
from unmask.config import DecodeConfig, DecoderConfig, ModelConfig
from unmask.decoding.dispatch import decode
from unmask.diffusion import diffusion_loss
from unmask.errors import ConfigError
from unmask.fileio import atomic_write_text
from unmask.model import DreamModel
from unmask.train import Batch, TrainConfig, fsdp_shard, make_batch

ROOT = Path(__file__).resolve().parents[1]
DTYPE = torch.bfloat16  # of the inference sections, in the dry run too (the same code on CPU)


@dataclass(frozen=True)
class Sizes:
    """What a run measures: the GPU run's sizes or the dry run's tiny ones (the same code paths)."""

    preset: str
    canvas: int  # tokens of the forward-latency canvas
    prompt: int  # random prompt tokens before the generated ones
    new: int  # tokens each decoder and the AR model generate
    block: int  # block length of the blocks and parallel decoders
    batches: tuple[int, ...]
    reps: int  # timed forwards per batch, after an untimed one
    train_layers: int | None  # None: the preset's depth
    train_batch: int
    train_seq: int
    train_steps: int  # timed training steps, after an untimed one


# Training: 8 layers at 2 x 1024 tokens keep weights, gradients, AdamW states (16 bytes a parameter, 47 GB) and
# activations inside an H100's 80 GB.
GPU_RUN = Sizes("dream-7b", canvas=256, prompt=256, new=256, block=32, batches=(1, 8), reps=10, train_layers=8,
                train_batch=2, train_seq=1024, train_steps=3)
DRY_RUN = Sizes("test", canvas=16, prompt=8, new=16, block=8, batches=(1, 2), reps=2, train_layers=None,
                train_batch=2, train_seq=16, train_steps=2)
# Where the CUDA-only tests live: collecting the whole suite for one marked file would cost more than the dry run
# itself, and would need every optional dependency on the GPU machine.
CUDA_TESTS = "tests/test_cuda.py"

# Names carry the cache kind that roofline.shape_for reads ("+prefix", "+dual"); no cache = full-canvas forwards.
DECODERS = {
    "reference": DecoderConfig(),
    "blocks+prefix": DecoderConfig(decoder="blocks", cache="prefix"),
    "parallel+dual τ=0.9": DecoderConfig(decoder="parallel", cache="dual", threshold=0.9),
    "lossless": DecoderConfig(lossless=True),
}
# With steps = new tokens these commit one token per forward whatever the weights: a check of the counting.
FIXED_TOKENS_PER_FORWARD = {"reference": 1.0, "blocks+prefix": 1.0}

NOTES = {
    "weights": "random init, random prompts: the tokens are meaningless. What counts is forwards/s and the tokens "
               "per forward of the fixed-step decoders (reference, blocks: steps = new tokens, exactly 1.0); "
               "parallel and lossless commit whatever random weights make them commit.",
    "roofline": "roofline_ms / projected_tokens_per_s: the bound from the GPU's datasheet bandwidth and peak "
                "(src/unmask/analysis/roofline.py); roofline_fraction = bound time / measured time, <= 1 "
                "unless the formula undercounts.",
    "autoregressive": "dream-7b's weights under a causal mask with a KV cache (generate_ar): the shape of "
                      "Qwen2-7B, of which Dream-7B is an adaptation.",
    "train": "bf16 autocast over fp32 weights and AdamW, as unmask.train; dream-7b's width, train_layers of its "
             "28 layers. mfu = (6 N per token + attention FLOPs, N without the embedding lookup) / step time / "
             "the GPU's peak (bench/train.py's model FLOPs).",
}
DRY_NOTE = ("dry run: the code paths on a CPU with the tiny `test` preset. The roofline figures are a GPU's, the "
            "times a CPU's: they are not compared (roofline_fraction and within_roofline are null) and the MFU "
            "against a GPU's peak means nothing.")


# ----------------------------------------------------------------------------------------------------------
# The budget


class BudgetExceeded(Exception):
    """Raised inside a section by the interval timer when the run's budget is spent."""


@dataclass
class Budget:
    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Raise ``BudgetExceeded`` in the block when the budget runs out. Signals reach only the main thread;
        elsewhere the runner's check between sections is the only guard."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def fire(signum, frame):
            raise BudgetExceeded(f"the {self.seconds:g} s budget ran out")

        previous = signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, max(self.left(), 1e-3))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


class SectionFailed(Exception):
    """A section ran but what it checks failed (CUDA tests)."""


# ----------------------------------------------------------------------------------------------------------
# What every section works with


@dataclass
class Check:
    sizes: Sizes
    device: torch.device
    gpu: GPU
    dry_run: bool
    seed: int = 0
    _model: DreamModel | None = None  # the bf16 inference model, shared by forward, autoregressive, decoders

    def model_config(self, layers: int | None = None) -> ModelConfig:
        config = ModelConfig.from_name(self.sizes.preset)
        if config.mask_token_id is None:  # small presets take their ids from a tokenizer; random prompts need none
            config = config.replace(mask_token_id=config.vocab_size - 1, pad_token_id=0, eos_token_id=0,
                                    bos_token_id=0)
        return config if layers is None else config.replace(num_hidden_layers=layers)

    def inference_model(self) -> DreamModel:
        if self._model is None:
            self._model = random_model(self.model_config(), self.device, DTYPE, self.seed).eval()
        return self._model

    def release(self) -> None:
        """Free every model and cached block of device memory (the next section needs the room)."""
        self._model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def random_ids(self, batch: int, length: int, offset: int = 0) -> torch.Tensor:
        """(batch, length) token ids below the first special id, from a CPU generator (the same on any device)."""
        config = self.model_config()
        special = [i for i in (config.mask_token_id, config.pad_token_id, config.eos_token_id,
                               config.bos_token_id) if i]
        generator = torch.Generator().manual_seed(self.seed + offset)
        return torch.randint(1, min(special), (batch, length), generator=generator).to(self.device)

    def timed(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
        """(seconds, result) of ``fn(*args, **kwargs)``, the device synchronised on both sides (CUDA runs
        asynchronously)."""
        self.sync()
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.sync()
        return time.perf_counter() - start, result

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def versus_bound(self, bound_s: float, measured_s: float) -> dict[str, Any]:
        """The bound against the measurement; null in a dry run (a GPU's bound, a CPU's time)."""
        if self.dry_run:
            return {"roofline_fraction": None, "within_roofline": None}
        return {"roofline_fraction": sig(bound_s / measured_s), "within_roofline": measured_s >= bound_s}


def random_model(config: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int) -> DreamModel:
    """Random init straight on ``device`` in ``dtype``: built on the meta device, so a 7B model never exists in
    fp32 (30 GB) or in host memory."""
    with torch.device("meta"):
        model = DreamModel(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    model.init_weights(torch.Generator(device=device).manual_seed(seed))
    return model


def sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits (an MFU of 3e-9 must not round to 0)."""
    return float(f"{x:.{digits}g}")


# ----------------------------------------------------------------------------------------------------------
# Sections: each fills ``out`` as it goes, so a section cut by the budget keeps what it finished


def forward_latency(check: Check, out: dict) -> None:
    """One forward of a random canvas, no cache: the median of ``reps`` timed calls after an untimed one."""
    model, config, s = check.inference_model(), check.model_config(), check.sizes
    for batch in s.batches:
        ids = check.random_ids(batch, s.canvas)
        with torch.inference_mode():
            model(ids)  # kernel selection and allocations happen here, not in the timed calls
            times = [check.timed(model, ids)[0] for _ in range(s.reps)]
        bound = forward_cost(config, check.gpu, query=s.canvas, batch=batch, bytes_per_value=DTYPE.itemsize)
        measured = statistics.median(times)
        out[str(batch)] = {"canvas": s.canvas, "ms": sig(measured * 1e3), "ms_min": sig(min(times) * 1e3),
                           "roofline_ms": sig(bound.seconds * 1e3), "roofline_bound": bound.bound,
                           **check.versus_bound(bound.seconds, measured)}


def autoregressive(check: Check, out: dict) -> None:
    """Greedy KV-cached decoding of ``new`` tokens after a random prompt; no stop tokens, so every row runs on."""
    model, config, s = check.inference_model(), check.model_config(), check.sizes
    for batch in s.batches:
        prompts = check.random_ids(batch, s.prompt)
        generate_ar(model, prompts, max_new_tokens=2)  # warm-up: the prefill and the one-token step
        seconds, result = check.timed(generate_ar, model, prompts, max_new_tokens=s.new)
        tokens = result.generated.numel()
        projected = ar_tokens_per_s(config, check.gpu, prompt=s.prompt, new=s.new, batch=batch,
                                    bytes_per_value=DTYPE.itemsize)
        out[str(batch)] = {"tokens_per_s": sig(tokens / seconds), "forwards": result.forward_passes,
                           "tokens_per_forward": sig(tokens / (batch * result.forward_passes)),
                           "ms_per_forward": sig(seconds / result.forward_passes * 1e3),
                           "projected_tokens_per_s": sig(projected),
                           **check.versus_bound(tokens / projected, seconds)}


def decoders(check: Check, out: dict) -> None:
    """Every decoder at every batch on the same random prompts, temperature 0, steps = new tokens. The lossless
    decoder's output is compared with the reference's: equal on CPU (tested), and on a GPU only if its batched
    draft forwards round like the reference's single ones."""
    model, s = check.inference_model(), check.sizes
    sampler = DecodeConfig(max_new_tokens=s.new, steps=s.new)
    for batch in s.batches:
        prompts = check.random_ids(batch, s.prompt, offset=batch)
        reference = None
        for name, decoder in DECODERS.items():
            decoder = decoder.replace(block_length=s.block)
            decode(model, prompts[:1], config=sampler.replace(max_new_tokens=s.block, steps=2), decoder=decoder,
                   stop_ids=())  # warm-up
            seconds, result = check.timed(decode, model, prompts, config=sampler, decoder=decoder, stop_ids=(),
                                          seed=check.seed)
            row = decoder_row(check, name, result.stats, seconds, batch)
            if name == "reference":
                reference = result.sequences
            elif decoder.lossless and reference is not None:
                row["identical_to_reference"] = torch.equal(result.sequences, reference)
            out.setdefault(name, {})[str(batch)] = row


def decoder_row(check: Check, name: str, stats, seconds: float, batch: int) -> dict:
    """Measured speed of one decode and its roofline projection from its own tokens and canvases per forward."""
    s = check.sizes
    per_forward = stats.tokens_committed / (stats.forward_passes * batch)  # per row, as bench/decode.py
    canvases = stats.canvas_forwards / stats.forward_passes
    shape = shape_for(name, per_forward, prompt=s.prompt, new=s.new, block=s.block, canvases=canvases)
    projected = decoder_tokens_per_s(check.model_config(), check.gpu, shape, prompt=s.prompt, new=s.new, batch=batch,
                                     bytes_per_value=DTYPE.itemsize)
    row = {"tokens_per_s": sig(stats.tokens_committed / seconds), "forwards": stats.forward_passes,
           "forwards_per_s": sig(stats.forward_passes / seconds), "tokens_per_forward": sig(per_forward),
           "canvases_per_forward": sig(canvases), "projected_tokens_per_s": sig(projected),
           **check.versus_bound(stats.tokens_committed / projected, seconds)}
    if name in FIXED_TOKENS_PER_FORWARD:
        row["expected_tokens_per_forward"] = FIXED_TOKENS_PER_FORWARD[name]
    return row


def training(check: Check, out: dict) -> None:
    """One process, no sharding: ``unmask.train``'s step on a model that fits."""
    model = random_model(check.model_config(check.sizes.train_layers), check.device, torch.float32, check.seed)
    out.update(time_train_steps(check, model.train()))


def fsdp(check: Check, out: dict) -> None:
    """The same step with the model sharded by ``fsdp_shard`` (FSDP2) over a process group of one: the all-gathers
    in bf16 and the fp32 reduce-scatters run, over one rank."""
    with process_group(check.device) as world:
        model = random_model(check.model_config(check.sizes.train_layers), check.device, torch.float32, check.seed)
        model = fsdp_shard(model.train(), world, check.device)
        out.update(time_train_steps(check, model), world_size=world)
        del model
        gc.collect()  # FSDP modules collected while the group exists (see runs.process_group)


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[int]:
    """The process group FSDP shards over: one that is already running, else this process alone, rendezvoused
    in memory (a HashStore: no launcher, no port). Yields the world size."""
    if dist.is_initialized():
        yield dist.get_world_size()
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield 1
    finally:
        dist.destroy_process_group()


def time_train_steps(check: Check, model: torch.nn.Module) -> dict:
    """One untimed step, then ``train_steps`` timed ones on random rows; step time, tokens/s and MFU."""
    s, config = check.sizes, check.model_config(check.sizes.train_layers)
    cfg = TrainConfig(seq_len=s.train_seq, batch_size=s.train_batch)
    optimizer = runs.adamw(model, cfg)
    noise = torch.Generator().manual_seed(check.seed)
    clean = check.random_ids(s.train_batch, s.train_seq).cpu()
    starts = torch.ones(s.train_batch, dtype=torch.long)  # pretraining rows: position 0 stays clean
    times, losses = [], []
    for step in range(1 + s.train_steps):
        batch = make_batch(clean, starts, step=step, cfg=cfg, mask_token_id=config.mask_token_id,
                           generator=noise).to(check.device)
        seconds, loss = check.timed(train_step, model, optimizer, batch, cfg)
        times.append(seconds)
        losses.append(loss)
    step_s = statistics.median(times[1:])
    tokens = s.train_batch * s.train_seq
    # 3 forwards' FLOPs (forward + a backward of two) = bench/train.py's model_flops_per_token * tokens
    flops = 3 * forward_cost(config, check.gpu, query=s.train_seq, batch=s.train_batch).flops
    return {"layers": config.num_hidden_layers, "params_b": sig(config.num_parameters() / 1e9),
            "tokens_per_step": tokens, "step_s": sig(step_s), "tokens_per_s": sig(tokens / step_s),
            "model_flops_per_step": sig(flops), "mfu": sig(flops / step_s / check.gpu.flops),
            "losses": [sig(x) for x in losses]}


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, cfg: TrainConfig) -> float:
    """``unmask.train``'s step for one process and one micro-batch: a bf16-autocast forward on CUDA, the ELBO
    loss over maskable tokens (the "tokens" normaliser), backward, clipping, AdamW."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=batch.input_ids.is_cuda):
        logits = model(batch.input_ids, attention_mask=batch.attention_mask)  # (B, T, V)
    loss, _ = diffusion_loss(logits, batch.targets, batch.masked, batch.t, maskable=batch.maskable,
                             eps=cfg.mask_eps, row_weight=batch.row_weight)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def cuda_tests(check: Check, out: dict) -> None:
    """``pytest -m cuda`` in a subprocess (on CPU every one of them skips); counts from its JUnit XML."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "cuda",
                   CUDA_TESTS, f"--junitxml={xml}"]
        out["command"] = shlex.join(["python", *command[1:-1]])
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if not xml.is_file():
            raise SectionFailed(f"pytest wrote no results (exit {done.returncode}): {tail(done)}")
        out.update(junit_counts(xml), returncode=done.returncode)
    if out["failed"] or out["errors"]:
        raise SectionFailed(f"{out['failed']} failed, {out['errors']} errors: {', '.join(out['failed_tests'])}")
    if done.returncode not in (0, 5):  # 5: no test carries the mark; anything else is pytest failing to run
        raise SectionFailed(f"pytest exit {done.returncode}: {tail(done)}")


def junit_counts(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    count = {key: sum(int(suite.get(key, 0)) for suite in suites) for key in ("tests", "failures", "errors",
                                                                              "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return {"passed": count["tests"] - count["failures"] - count["errors"] - count["skipped"],
            "failed": count["failures"], "errors": count["errors"], "skipped": count["skipped"],
            "failed_tests": failed}


def tail(done: subprocess.CompletedProcess, lines: int = 5) -> str:
    return " | ".join((done.stdout + done.stderr).strip().splitlines()[-lines:])


# Sections that use the shared bf16 inference model: kept from one of them to the next.
SHARE_MODEL = ("forward", "autoregressive", "decoders")
SECTIONS: dict[str, Callable[[Check, dict], None]] = {
    "forward": forward_latency,
    "autoregressive": autoregressive,
    "train": training,
    "fsdp": fsdp,
    "cuda_tests": cuda_tests,
    "decoders": decoders,
}


# ----------------------------------------------------------------------------------------------------------
# The run


def run_sections(check: Check, names: list[str], budget: Budget, save: Callable[[dict], None]) -> dict:
    """Each section in turn while the budget lasts, the rest skipped; ``save`` gets the records so far after
    each one. Device memory is freed between sections, except the inference model between two that share it."""
    done: dict[str, dict] = {}
    for i, name in enumerate(names):
        if budget.left() > 0:
            done[name] = run_section(check, name, budget)
        else:
            done[name] = {"status": "skipped (budget)", "seconds": 0.0}
        following = names[i + 1] if i + 1 < len(names) else None
        if not (name in SHARE_MODEL and following in SHARE_MODEL):
            check.release()
        save(done)
    return done


def run_section(check: Check, name: str, budget: Budget) -> dict:
    """One section's record: status, seconds, peak device memory and whatever it measured before it ended. A
    failure is recorded, not raised, so that it does not cost the sections after it."""
    out: dict = {}
    start = time.perf_counter()
    if check.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(check.device)
    try:
        with budget.guard():
            SECTIONS[name](check, out)
        status = "ok"
    except BudgetExceeded:
        status = "aborted (budget)"
    except Exception as err:
        traceback.print_exc()
        status = f"error: {type(err).__name__}: {err}"
    record = {"status": status, "seconds": round(time.perf_counter() - start, 2), **out}
    if check.device.type == "cuda":
        record["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(check.device) / 1e9, 2)
    return record


def outcome(sections: dict) -> tuple[str, int]:
    """(overall status, exit code): failed 1 if any section failed, incomplete 2 if the budget cut any, ok 0."""
    statuses = [s["status"] for s in sections.values()]
    if any(s.startswith("error") for s in statuses):
        return "failed", 1
    if any(s != "ok" for s in statuses):
        return "incomplete", 2
    return "ok", 0


def pick_gpu(args: argparse.Namespace, device: torch.device) -> GPU:
    """The roofline figures: ``--gpu`` (a preset, or custom with --bandwidth and --flops), or on ``auto`` the
    preset the CUDA device's name contains. A dry run on CPU borrows the H100's, only to run the code."""
    name = args.gpu
    if name == "auto" and device.type != "cuda":
        name = "h100"
    elif name == "auto":
        device_name = torch.cuda.get_device_name(device)
        name = next((key for key in GPUS if key in device_name.lower()), None)
        if name is None:
            raise ConfigError(f"no roofline preset matches {device_name!r}: pass --gpu {'|'.join(GPUS)}, or "
                              f"--gpu custom --bandwidth BYTES_PER_S --flops FLOP_PER_S")
    return gpu(None if name == "custom" else name, bandwidth=args.bandwidth, flops=args.flops)


def pick_device(dry_run: bool) -> torch.device:
    if dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("no CUDA device here: `bench/gpu.sh --dry-run` runs the code paths on CPU")
    return torch.device("cuda", torch.cuda.current_device())


def report_path(out_dir: Path, device: torch.device, dry_run: bool) -> Path:
    """reports/gpu/<UTC date and time>-<device name>.json (a run never overwrites another)."""
    name = "cpu-dry-run" if dry_run else torch.cuda.get_device_name(device)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return out_dir / f"{time.strftime('%Y-%m-%d-%H%M%S', time.gmtime())}-{slug}.json"


def header(check: Check, args: argparse.Namespace, argv: list[str]) -> dict:
    device = torch.cuda.get_device_name(check.device) if check.device.type == "cuda" else "cpu"
    sizes = dataclasses.asdict(check.sizes)
    return {"bench": "gpu_check", "dry_run": check.dry_run, "device": device,
            "gpu_figures": dataclasses.asdict(check.gpu), "dtype": str(DTYPE).removeprefix("torch."),
            "sizes": sizes, "budget_s": args.budget_s,
            "notes": {**NOTES, **({"dry_run": DRY_NOTE} if check.dry_run else {})},
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "command": "bench/gpu.sh " + shlex.join(argv)}


def summary(report: dict, path: Path) -> str:
    """One line: the headline number of each section that ran, the status and where the JSON is."""
    parts = []
    sections = report["sections"]
    big = str(max(report["sizes"]["batches"]))
    if sections.get("forward", {}).get(big):
        row = sections["forward"][big]
        parts.append(f"forward b{big} {row['ms']:g} ms (roofline {row['roofline_ms']:g} ms)")
    if sections.get("autoregressive", {}).get(big):
        parts.append(f"AR b{big} {sections['autoregressive'][big]['tokens_per_s']:g} tok/s")
    rates = [f"{name} {rows[big]['tokens_per_s']:g}" for name, rows in sections.get("decoders", {}).items()
             if isinstance(rows, dict) and big in rows]
    if rates:
        parts.append(f"decoders b{big} tok/s: " + ", ".join(rates))
    for name in ("train", "fsdp"):
        if "mfu" in sections.get(name, {}):
            parts.append(f"{name} MFU {sections[name]['mfu']:g}")
    if "passed" in sections.get("cuda_tests", {}):
        tests = sections["cuda_tests"]
        parts.append(f"cuda tests {tests['passed']} passed {tests['failed']} failed {tests['skipped']} skipped")
    where = f"{report['status']} in {report['seconds']:g} s → {path}"
    return f"gpu check ({report['device']}{', dry run' if report['dry_run'] else ''}): " + " · ".join(parts + [where])


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, the tiny `test` preset, batches 1 and 2")
    parser.add_argument("--budget-s", type=float, default=450.0, help="total seconds for all sections")
    parser.add_argument("--gpu", default="auto", help=f"roofline figures: auto (from the device name), "
                        f"{', '.join(GPUS)}, or custom (with --bandwidth and --flops)")
    parser.add_argument("--bandwidth", type=float, default=None, help="memory bandwidth in bytes/s (overrides)")
    parser.add_argument("--flops", type=float, default=None, help="peak FLOP/s (overrides; the MFU's denominator)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset, run in this order")
    parser.add_argument("--train-layers", type=int, default=None, help="layers of the training sections' model")
    parser.add_argument("--out-dir", default=str(ROOT / "reports" / "gpu"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.names = [n.strip() for n in args.sections.split(",") if n.strip()]
    unknown = [n for n in args.names if n not in SECTIONS]
    if unknown or not args.names:
        parser.error(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    if args.budget_s <= 0 or (args.train_layers is not None and args.train_layers < 1):
        parser.error("--budget-s and --train-layers must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    sizes = DRY_RUN if args.dry_run else GPU_RUN
    if args.train_layers is not None:
        sizes = dataclasses.replace(sizes, train_layers=args.train_layers)
    try:
        device = pick_device(args.dry_run)
        check = Check(sizes, device, pick_gpu(args, device), args.dry_run, args.seed)
    except ConfigError as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 1
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = report_path(out_dir, device, args.dry_run)
    report = header(check, args, argv)
    budget = Budget(args.budget_s)

    def save(sections: dict) -> None:
        status, _ = outcome(sections)
        report.update(status=status if len(sections) == len(args.names) else "running",
                      seconds=round(time.perf_counter() - budget.start, 1), sections=sections)
        atomic_write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")

    sections = run_sections(check, args.names, budget, save)
    print(summary(report, path))
    return outcome(sections)[1]


if __name__ == "__main__":
    sys.exit(main())
