"""The GRPO loop for masked diffusion LMs (docs/rl.md): rollouts → rewards → μ updates → ref sync → eval → save.

One plain loop (``rl``). Each step draws ``prompts_per_step`` tasks; for each, ``num_generations``
completions are sampled with the reference diffusion sampler (``unmask.decoding.dispatch.decode``;
DiffuCoder's rollout defaults: temperature 1.2, 256 tokens, 256 steps, entropy order; ``--rollout-decoder``
picks a fast decoder instead, as Dream-Coder's RL does), scored by the
reward registry (``unmask.rl.rewards``; sandboxed tests), turned into group advantages and used for ``mu``
PPO-clipped updates whose per-token log-probs come from masked forward passes (``--estimator``: coupled,
decoupled or diffu-grpo; ``unmask.rl.grpo``). Every pass plan is drawn from per-row generators seeded by
(step, prompt slot, sample, update iteration), so the old, reference and current policy see the same masks
and a resumed run redraws them identically.

Distributed data parallel: the same command under ``torchrun``. Each rank rolls out its share of the
step's prompts; the loss of each rank is its token sum over the *global* completion-token count times the
world size, so DDP's gradient mean equals the single-process token-mean gradient.

Run directory: ``rl_config.json``, ``metrics.jsonl`` (one line per logged step), ``checkpoint-{step}/``
(HF model directory + ``trainer_state.pt``: optimiser, prompt sampler, RNG states and the reference
policy's weights), ``latest``, and ``eval-{step}/`` directories from the periodic held-out evaluation.

LoRA (``lora_r > 0``, ``unmask.lora``): adapters on a frozen base; checkpoints hold ``adapter/`` instead of
weights. The KL reference is then the base itself — the policy's forward with its adapters disabled — so no
second copy of the model is kept; it is never synced (``RLConfig`` refuses ``ref_sync_every`` > 0 with LoRA: a
blend of two adapters, factor by factor, is not the blend of their weights). ``report_to`` copies every
metrics record to TensorBoard or W&B (``unmask.trackers``).

    unmask rl runs/sft/checkpoint-0002000 --data synthetic-train --estimator coupled --run-dir runs/rl
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from unmask import lora, runs, trackers
from unmask.data.benchmarks import Task
from unmask.decoding.canvas import left_pad
from unmask.errors import ConfigError
from unmask.fileio import parse_jsonl
from unmask.rl.config import RLConfig
from unmask.rl.grpo import (
    build_logprob_passes,
    clipped_policy_loss,
    group_advantages,
    mask_seed,
    seeded_generator,
    sequence_logprob_estimates,
)
from unmask.rl.rewards import combine_rewards

__all__ = ["RLConfig", "RLResult", "RolloutBatch", "load_rl_tasks", "policy_update", "rl", "rollout", "sync_reference",
           "update_lr"]

# pass_index values of mask_seed reserved for things other than estimator passes.
_ROLLOUT_PASS = 10_000


RLResult = runs.RunResult


# ----------------------------------------------------------------------------------------------------------
# Tasks


def load_rl_tasks(cfg: RLConfig) -> list[Task]:
    """The training tasks: a JSONL file of Task fields, or a benchmark name accepted by ``load_tasks``."""
    from unmask.evaluate import EvalConfig, load_tasks

    path = Path(cfg.data)
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise ConfigError(f"tasks file {path} does not exist")
        tasks = []
        with path.open(encoding="utf-8") as handle:
            for number, row in parse_jsonl(handle, path, error=ConfigError):
                missing = [k for k in ("task_id", "prompt", "entry_point", "test") if k not in row]
                if not isinstance(row, dict) or missing:
                    raise ConfigError(f"{path}:{number}: a task needs task_id, prompt, entry_point and test "
                                      f"(missing {', '.join(missing) if isinstance(row, dict) else 'all'})")
                try:
                    tasks.append(Task(task_id=row["task_id"], prompt=row["prompt"], entry_point=row["entry_point"],
                                      canonical_solution=row.get("canonical_solution", ""), test=row["test"],
                                      benchmark=row.get("benchmark", "jsonl"), extra=row.get("extra", {})))
                except (TypeError, ValueError) as err:
                    raise ConfigError(f"{path}:{number}: {err}") from None
        tasks = tasks[: cfg.task_limit] if cfg.task_limit else tasks
    else:
        tasks = load_tasks(EvalConfig(benchmark=cfg.data, synthetic_tasks=cfg.synthetic_tasks, seed=cfg.seed,
                                      limit=cfg.task_limit))
    if not tasks:
        raise ConfigError(f"no tasks in {cfg.data}")
    return tasks


# ----------------------------------------------------------------------------------------------------------
# Rollouts


@dataclass
class RolloutBatch:
    """Completed sequences of a rank's share of one step, left-padded to a common length T.

    input_ids (R, T) long; attention_mask (R, T) bool (real tokens); prompt_mask / generated_mask /
    completion_mask (R, T) bool — generated_mask: every generated position (what the estimator passes
    noise, whatever the stops and rewards); completion_mask: the tokens that count in the loss, up to and
    including the first stop token, none for a missing reward (a subset of generated_mask);
    advantages (R,) float32; seeds (R, 2) long: (prompt slot in the step, sample index) for mask seeds.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_mask: torch.Tensor
    generated_mask: torch.Tensor
    completion_mask: torch.Tensor
    advantages: torch.Tensor
    seeds: torch.Tensor


def _completion_mask(generated: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    """(G, L) bool: every token up to and including the first stop id (all of them when none)."""
    is_stop = torch.zeros_like(generated, dtype=torch.bool)
    for s in stop_ids:
        is_stop |= generated == s
    before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()  # stops strictly before each position
    return before == 0


def rollout(model, tokenizer, task: Task, *, cfg: RLConfig, step: int, slot: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """G completions of one task: (prompt ids (P,), generated (G, L), completion mask (G, L), texts)."""
    from unmask.decoding.dispatch import decode
    from unmask.evaluate import clean_completion, program_mode, prompt_text

    ids = tokenizer.encode(prompt_text(task, tokenizer, cfg.chat))
    if not ids:
        raise ConfigError(f"task {task.task_id} has an empty prompt after tokenisation")
    prompt = torch.tensor(ids, dtype=torch.long, device=model.device)
    batch = prompt[None, :].expand(cfg.num_generations, -1).contiguous()  # (G, P)
    generator = torch.Generator(device=model.device).manual_seed(mask_seed(step, slot, 0, _ROLLOUT_PASS, cfg.seed))
    out = decode(model, batch, None, config=cfg.decode_config(), decoder=cfg.rollout_decoder_config(),
                 generator=generator)
    generated = out.generated.clone()  # (G, L); a normal tensor (generate runs in inference mode)
    mode = program_mode(task, cfg.chat)
    texts = [clean_completion(tokenizer.decode(row), mode) for row in generated.tolist()]
    return prompt, generated, _completion_mask(generated, tokenizer.special.stop_ids()), texts


def assemble_rollouts(prompts: list[torch.Tensor], generated: list[torch.Tensor], completion: list[torch.Tensor],
              pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad the (prompt + generated) rows of every group to one length T: ids, attention, prompt, generated
    and completion masks, each (R, T)."""
    length = generated[0].shape[1]  # L: every completion has the same length
    rows = [p.tolist() + row for p, g in zip(prompts, generated) for row in g.tolist()]
    ids, attention, offsets = left_pad(rows, pad_id, device=generated[0].device)  # (R, T)
    column = torch.arange(ids.shape[1], device=ids.device)[None, :]
    gen_mask = (column >= ids.shape[1] - length).expand_as(ids).clone()  # (R, T)
    prompt_mask = (column >= torch.tensor(offsets, device=ids.device)[:, None]) & ~gen_mask
    comp_mask = torch.zeros_like(gen_mask)
    comp_mask[:, ids.shape[1] - length:] = torch.cat(completion)
    return ids, attention.bool(), prompt_mask, gen_mask, comp_mask


# ----------------------------------------------------------------------------------------------------------
# The update


def _estimates(model_fn, batch: RolloutBatch, rows: slice, *, cfg: RLConfig, step: int, iteration: int,
               mask_id: int) -> torch.Tensor:
    """Per-token log-prob estimates (r, T) of ``rows``, masks drawn from per-row generators."""
    gens = [seeded_generator(mask_seed(step, int(s[0]), int(s[1]), iteration, cfg.seed))
            for s in batch.seeds[rows].tolist()]
    ids = batch.input_ids[rows]
    passes = build_logprob_passes(ids, batch.prompt_mask[rows], batch.completion_mask[rows],
                                  generated_mask=batch.generated_mask[rows], estimator=cfg.estimator,
                                  t_range=(cfg.t_low, cfg.t_high), generator=gens, mask_id=mask_id,
                                  prompt_mask_ratio=cfg.prompt_mask_ratio)
    attn = batch.attention_mask[rows]
    return sequence_logprob_estimates(model_fn, ids, batch.prompt_mask[rows], batch.completion_mask[rows],
                                      mask_id=mask_id, passes=passes,
                                      attention_mask=None if bool(attn.all()) else attn.long())


def _rows_per_micro(cfg: RLConfig, length: int) -> int:
    passes = 1 if cfg.estimator == "diffu-grpo" else 3
    return max(1, cfg.pass_token_budget // (passes * length))


def policy_update(model: torch.nn.Module, wrapped: torch.nn.Module, reference: torch.nn.Module | None,
                  optimizer: torch.optim.Optimizer, batch: RolloutBatch, *, cfg: RLConfig, step: int,
                  mask_id: int, world: int = 1, lrs: Sequence[float] | None = None) -> dict[str, float]:
    """``cfg.mu`` clipped-GRPO updates on one batch of rollouts; returns token-mean stats.

    Old and reference log-probs are computed first (no grad) with the same per-row mask seeds the current
    policy uses in each iteration. Rows are processed ``pass_token_budget`` tokens at a time; on a CUDA
    out-of-memory error the iteration restarts with half the micro-batch. ``lrs``: the learning rate of
    each of the ``mu`` updates (the loop passes :func:`update_lr`'s); None leaves the optimiser's as it is.
    """
    if lrs is not None and len(lrs) != cfg.mu:
        raise ValueError(f"lrs must give one learning rate per update (mu = {cfg.mu}), got {len(lrs)}")
    R, T = batch.input_ids.shape
    count = batch.completion_mask.sum().to(torch.float64)
    if world > 1:
        dist.all_reduce(count)
    total_tokens = float(count)
    micro = _rows_per_micro(cfg, T)
    stats = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "ratio": 0.0, "grad_norm": 0.0}
    if total_tokens == 0:
        return stats

    def slices(size: int) -> list[slice]:
        return [slice(a, min(R, a + size)) for a in range(0, R, size)]

    old: list[torch.Tensor | None] = [None] * cfg.mu
    ref: list[torch.Tensor | None] = [None] * cfg.mu
    with torch.no_grad():
        for k in range(cfg.mu):
            if cfg.mu > 1:  # with one update the old policy is the current one (ratio 1, on-policy)
                old[k] = torch.cat([_estimates(model, batch, s, cfg=cfg, step=step, iteration=k, mask_id=mask_id)
                                    for s in slices(micro)])
            if reference is not None and cfg.beta > 0:
                ref[k] = torch.cat([_estimates(reference, batch, s, cfg=cfg, step=step, iteration=k,
                                               mask_id=mask_id) for s in slices(micro)])
    model.train()
    for k in range(cfg.mu):
        while True:
            try:
                sums = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "ratio": 0.0}
                optimizer.zero_grad(set_to_none=True)
                for s in slices(micro):
                    new = _estimates(wrapped, batch, s, cfg=cfg, step=step, iteration=k, mask_id=mask_id)
                    o = old[k][s] if old[k] is not None else None
                    r = ref[k][s] if ref[k] is not None else None
                    loss, st = clipped_policy_loss(new, o, batch.advantages[s], batch.completion_mask[s],
                                                   eps_clip=cfg.eps_clip, logp_ref=r, beta=cfg.beta,
                                                   num_tokens=total_tokens)
                    (loss * world).backward()  # DDP averages over ranks: x world makes it the global sum
                    sums["loss"] += float(loss.detach())
                    for key in ("kl", "clip_fraction", "ratio"):
                        sums[key] += float(st[key])
                break
            except torch.cuda.OutOfMemoryError:
                if micro == 1:
                    raise
                micro = max(1, micro // 2)
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
        norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0
                else torch.zeros(()))
        if lrs is not None:
            for group in optimizer.param_groups:
                group["lr"] = float(lrs[k])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for key in sums:
            stats[key] += sums[key] / cfg.mu
        stats["grad_norm"] += float(norm) / cfg.mu
    model.eval()
    return stats


def update_lr(cfg: RLConfig, update: int) -> float:
    """The learning rate of optimiser update ``update`` (0-based over the run: ``step * mu + k``).

    ``cosine``: from ``lr`` down to ``min_lr_ratio * lr`` at ``max_steps * mu`` updates, no warm-up — the
    shape of DiffuCoder's (TRL's cosine-with-min-LR) schedule (docs/rl.md). Computed from the update index
    alone, so a resumed run continues the schedule exactly without a scheduler state.
    """
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * runs.lr_factor(update, warmup_steps=0, max_steps=cfg.max_steps * cfg.mu,
                                   min_lr_ratio=cfg.min_lr_ratio)


@torch.no_grad()
def sync_reference(reference: torch.nn.Module, policy: torch.nn.Module, alpha: float) -> None:
    """Move the reference toward the policy in place: ``ref = alpha * policy + (1 - alpha) * ref``.

    DiffuCoder's recipe (TRL's reference sync, docs/rl.md) blends with alpha 0.6 instead of copying, so the
    KL anchor trails the policy. ``alpha == 1`` copies exactly. Parameters only (named_parameters lists a
    tied weight once, so it is blended once); buffers are copied.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    source = dict(policy.named_parameters())
    for name, param in reference.named_parameters():
        if alpha == 1.0:
            param.copy_(source[name])
        else:
            param.mul_(1.0 - alpha).add_(source[name], alpha=alpha)
    policy_buffers = dict(policy.named_buffers())
    for name, buffer in reference.named_buffers():
        buffer.copy_(policy_buffers[name])


# ----------------------------------------------------------------------------------------------------------
# The loop


def _held_out_eval(model, tokenizer, cfg: RLConfig, step: int, run_dir: Path) -> float | None:
    from unmask.evaluate import EvalConfig, evaluate_model

    config = EvalConfig(benchmark=cfg.eval_benchmark, samples=cfg.eval_samples, limit=cfg.eval_limit,
                        chat=cfg.chat, timeout=cfg.timeout, memory_mb=cfg.memory_mb, seed=cfg.seed,
                        synthetic_tasks=max(cfg.eval_limit or 0, 1))
    decode = cfg.decode_config().replace(temperature=0.0, top_p=None)
    summary = evaluate_model(model, tokenizer, config, decode, run_dir / f"eval-{step:07d}", progress=False)
    return summary["pass@k"].get("pass@1")


def rl(cfg: RLConfig, *, model=None, tokenizer=None, tasks: list[Task] | None = None,
       on_step: Callable[[int, dict[str, Any]], None] | None = None) -> RLResult:
    """Run GRPO per ``cfg``; ``model``/``tokenizer`` default to ``unmask.load(cfg.model)``, ``tasks`` to
    :func:`load_rl_tasks`. Joins the process group under torchrun (gloo on CPU, nccl on GPU)."""
    with runs.process_group(cfg.device):
        return _rl(cfg, model, tokenizer, tasks, on_step)


@dataclass(frozen=True)
class _Run:
    """What the loop works with, built once by ``_setup``. ``model`` is the policy, ``wrapped`` what its
    gradient passes run through (DDP's wrapper, or ``model``), ``reference`` the KL anchor (None: beta 0)."""

    cfg: RLConfig
    rank: int
    world: int
    run_dir: Path
    model: Any
    wrapped: torch.nn.Module
    reference: torch.nn.Module | None
    tokenizer: Any
    tasks: list[Task]
    weights: dict[str, float]
    device: torch.device
    optimizer: torch.optim.Optimizer
    sampler: Any  # unmask.training_data.EpochSampler over the tasks
    mask_id: int
    start: int  # the step the run starts from: 0, or the resumed checkpoint's
    generation: dict[str, Any]  # the initial policy's generation_config.json, carried by every checkpoint
    base: Path | None  # LoRA: the directory of the frozen base (``model`` is then a PeftModel); None: all weights


@dataclass
class _Rollouts:
    """One rank's rollouts of a step: per task group (prompt, completions, their masks, advantages, mask
    seeds) and per completion (total reward, None where missing; the code reward, for the pass rate)."""

    prompts: list[torch.Tensor]
    generated: list[torch.Tensor]
    completion: list[torch.Tensor]
    advantages: list[torch.Tensor]
    seeds: list[torch.Tensor]
    rewards: list[float | None]
    code_scores: list[float | None]


def _rl(cfg: RLConfig, model, tokenizer, tasks: list[Task] | None,
        on_step: Callable[[int, dict[str, Any]], None] | None) -> RLResult:
    run = _setup(cfg, model, tokenizer, tasks)
    step, history = runs.drive(run, cfg, desc=f"rl {cfg.estimator}", on_step=on_step, steps=_steps)
    return RLResult(step=step, history=history, run_dir=run.run_dir)


def _steps(run: _Run, loop: runs.StepLoop) -> int:
    """Roll out, reward, update, sync, evaluate, log and save until this invocation's last step; that step."""
    cfg, step = run.cfg, run.start
    while step < loop.end:
        t0 = time.perf_counter()
        rollouts = _collect_rollouts(run, step)
        t_rollout = time.perf_counter() - t0
        batch = _rollout_batch(run, rollouts)
        t1 = time.perf_counter()
        lrs = [update_lr(cfg, step * cfg.mu + k) for k in range(cfg.mu)]
        stats = policy_update(run.model, run.wrapped, run.reference, run.optimizer, batch, cfg=cfg, step=step,
                              mask_id=run.mask_id, world=run.world, lrs=lrs)
        t_update = time.perf_counter() - t1
        step += 1
        if run.reference is not None and cfg.ref_sync_every and step % cfg.ref_sync_every == 0:
            sync_reference(run.reference, run.model, cfg.ref_sync_alpha)
        rewards, gen_tokens = _reward_metrics(run, rollouts)
        step_s = time.perf_counter() - t0
        record: dict[str, Any] = {
            "step": step,
            **rewards,
            **{k: stats[k] for k in ("loss", "kl", "clip_fraction", "ratio", "grad_norm")},
            "lr": lrs[-1],
            "rollout_s": round(t_rollout, 3),
            "update_s": round(t_update, 3),
            "step_s": round(step_s, 3),
            "rollout_tokens_per_s": round(gen_tokens / max(t_rollout, 1e-9), 1),
        }
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps) and run.rank == 0:
            record["eval_pass@1"] = _held_out_eval(run.model, run.tokenizer, cfg, step, run.run_dir)
        if run.rank == 0 and (loop.due(step, cfg.log_every) or "eval_pass@1" in record):
            loop.log(record)
        loop.finished(step, record, reward=f"{record['reward_mean']:.3f}±{record['reward_std']:.2f}",
                      pass_=f"{record['pass_rate']:.2f}", kl=f"{stats['kl']:.4f}",
                      clip=f"{stats['clip_fraction']:.3f}", len=f"{record['completion_length']:.0f}",
                      tok_s=f"{record['rollout_tokens_per_s']:.0f}")
        if loop.due(step, cfg.save_every):
            _save(run, step)
    return step


def _setup(cfg: RLConfig, model, tokenizer, tasks: list[Task] | None) -> _Run:
    """Everything before the first step: checks, the policy on its device, optimiser, reference, resume."""
    from unmask.checkpoint import read_generation_config
    from unmask.training_data import EpochSampler

    rank, world = runs.distributed()
    if cfg.prompts_per_step % world:
        raise ConfigError(f"prompts_per_step {cfg.prompts_per_step} must be divisible by the number of "
                          f"processes ({world})")
    trackers.check_installed(cfg.report_to)
    run_dir = Path(cfg.run_dir)
    resume_from = runs.resume_point(run_dir, cfg.resume)
    if resume_from is not None:
        lora.check_resume(resume_from, cfg.lora_r)
    source = resume_from or cfg.model
    if (model is None or tokenizer is None) and source is None:
        raise ConfigError("give the initial policy: unmask rl MODEL (or --model MODEL)")
    model, tokenizer, base, device = _policy(cfg, model, tokenizer, resume_from, run_dir, rank)
    generation = read_generation_config(source) if source is not None else {}
    mask_id = int(model.config.mask_token_id)
    tasks = load_rl_tasks(cfg) if tasks is None else tasks
    weights = cfg.reward_weight_map()
    model.eval()  # rollouts and no-grad passes; policy_update switches to train mode around its backward

    optimizer = runs.adamw(model, cfg)
    sampler = EpochSampler(len(tasks), cfg.seed + 1)
    reference = _reference(cfg, model)
    step = 0 if resume_from is None else _resume(resume_from, model, optimizer, sampler, reference)
    wrapped: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if rank == 0:
        runs.start_run_dir(run_dir, "rl_config.json", cfg.to_dict(), resumed_at=None if resume_from is None else step,
                      logs=("metrics.jsonl",))
    return _Run(cfg, rank, world, run_dir, model, wrapped, reference, tokenizer, tasks, weights, device, optimizer,
                sampler, mask_id, step, generation, base)


def _policy(cfg: RLConfig, model, tokenizer, resume_from: Path | None, run_dir: Path, rank: int
            ) -> tuple[Any, Any, Path | None, torch.device]:
    """(policy on its device, tokenizer, LoRA base directory or None, device). The weights come from ``model``
    (given in memory) or ``cfg.model``; a resumed run restores them later, except a LoRA run's frozen base,
    which is read here from the directory its checkpoint names, and then gets its adapters attached."""
    base = lora.base_of(resume_from) if resume_from is not None and cfg.lora_r else None
    device = runs.resolve_device(cfg.device, rank)
    dtype = lora.base_dtype(device) if cfg.lora_r else torch.float32
    in_memory = model is not None and tokenizer is not None
    if not in_memory:
        import unmask

        model, tokenizer = unmask.load(base or resume_from or cfg.model, dtype=dtype)
    elif base is not None:
        lora.restore_base(model, base)
    if model.config.mask_token_id is None:
        raise ConfigError("the model config has no mask_token_id; a diffusion model needs one")
    model = model.to(device=device, dtype=dtype)
    if cfg.lora_r:
        base = base or lora.keep_base(run_dir, None if in_memory else cfg.model, model, tokenizer, write=rank == 0)
        model = lora.attach(model, cfg, seed=cfg.seed)
    return model, tokenizer, base, device


def _reference(cfg: RLConfig, model) -> torch.nn.Module | None:
    """The KL anchor (None: beta 0): a frozen copy of the initial policy; under LoRA the policy with its adapters
    off, which is the base the adapters start from, at no extra memory (and never synced: ``RLConfig``)."""
    if cfg.beta == 0:
        return None
    if cfg.lora_r:
        return lora.AdaptersOff(model)
    return copy.deepcopy(model).requires_grad_(False)


def _resume(checkpoint: Path, model, optimizer: torch.optim.Optimizer, sampler,
            reference: torch.nn.Module | None) -> int:
    """Restore the policy (a LoRA run: its adapters), optimiser, prompt sampler, RNG and reference policy; the
    checkpoint's step."""
    from unmask.checkpoint import load_model

    if lora.is_lora_checkpoint(checkpoint):
        lora.load_adapter(model, checkpoint)
    else:
        with torch.no_grad():
            model.load_state_dict(load_model(checkpoint, dtype="float32").state_dict())
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    sampler.load_state_dict(state["sampler"])
    runs.set_rng_state(state["rng"])
    if reference is not None and state.get("reference") is not None:
        reference.load_state_dict(state["reference"])  # under LoRA an empty state: the reference is the base
    return int(state["step"])


def _collect_rollouts(run: _Run, step: int) -> _Rollouts:
    """Roll out and score this rank's prompt slots of the step."""
    from unmask.evaluate import program_mode

    cfg = run.cfg
    local = cfg.prompts_per_step // run.world
    indices = run.sampler.next(cfg.prompts_per_step).tolist()  # every rank draws all, keeps its slots
    out = _Rollouts([], [], [], [], [], [], [])
    for slot in range(run.rank * local, (run.rank + 1) * local):
        task = run.tasks[indices[slot]]
        prompt, gen, comp, texts = rollout(run.model, run.tokenizer, task, cfg=cfg, step=step, slot=slot)
        totals, parts = combine_rewards(texts, {"task": task, "mode": program_mode(task, cfg.chat)}, run.weights,
                                        timeout=cfg.timeout, memory_mb=cfg.memory_mb)
        adv = group_advantages(totals, baseline=cfg.baseline, scale_std=cfg.scale_std)  # (G,)
        # A missing reward (sandbox failure) is skipped entirely: no policy term, no KL term.
        comp = comp & torch.tensor([r is not None for r in totals], device=comp.device)[:, None]
        out.prompts.append(prompt)
        out.generated.append(gen)
        out.completion.append(comp)
        out.advantages.append(adv)
        out.seeds.append(torch.tensor([[slot, i] for i in range(cfg.num_generations)]))
        out.rewards.extend(totals)
        out.code_scores.extend(parts.get("code", [None] * len(texts)))
    return out


def _rollout_batch(run: _Run, rollouts: _Rollouts) -> RolloutBatch:
    ids, attn, prompt_mask, gen_mask, comp_mask = assemble_rollouts(rollouts.prompts, rollouts.generated,
                                                            rollouts.completion, run.tokenizer.special.pad)
    return RolloutBatch(ids, attn, prompt_mask, gen_mask, comp_mask, torch.cat(rollouts.advantages).to(run.device),
                        torch.cat(rollouts.seeds))


def _reward_metrics(run: _Run, rollouts: _Rollouts) -> tuple[dict[str, Any], float]:
    """The step's reward and length metrics over all ranks, and the tokens generated over all ranks."""
    # Sums over ranks: rewards (sum, sum of squares, count), missing, passes, completions, tokens.
    rewards = rollouts.rewards
    valid = [r for r in rewards if r is not None]
    lengths = torch.cat([c.sum(1) for c in rollouts.completion]).float()
    generated_tokens = sum(int(g.numel()) for g in rollouts.generated)
    vec = torch.tensor([sum(valid), sum(r * r for r in valid), len(valid), len(rewards) - len(valid),
                        sum(1 for c in rollouts.code_scores if c == 1.0), len(rewards), float(lengths.sum()),
                        float(generated_tokens)], dtype=torch.float64)
    if run.world > 1:
        vec = vec.to(run.device)
        dist.all_reduce(vec)
        vec = vec.cpu()
    rsum, rsq, n, missing, passes, total, length_sum, gen_tokens = vec.tolist()
    mean = rsum / n if n else float("nan")
    return {
        "reward_mean": mean,
        "reward_std": math.sqrt(max(0.0, rsq / n - mean * mean)) if n else float("nan"),
        "pass_rate": passes / total,
        "reward_missing": int(missing),
        "completion_length": length_sum / total,
    }, gen_tokens


def _save(run: _Run, step: int) -> None:
    """A checkpoint of ``step``, written by rank 0 (the reference policy's weights go with it)."""
    if run.rank == 0:
        trainer_state = {
            "step": step,
            "optimizer": run.optimizer.state_dict(),
            "sampler": run.sampler.state_dict(),
            "rng": runs.rng_state(),
            "reference": None if run.reference is None else run.reference.state_dict(),
            "config": run.cfg.to_dict(),
        }
        adapter = None if run.base is None else functools.partial(lora.save_adapter, run.model, base=run.base)
        runs.save_checkpoint(run.run_dir, run.model, run.tokenizer, trainer_state, run.cfg.keep_checkpoints,
                             generation=run.generation, adapter=adapter)
    if run.world > 1:
        dist.barrier()
