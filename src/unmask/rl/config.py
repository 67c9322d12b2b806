"""``RLConfig``: the settings of an RL run (``unmask rl``), apart from the GRPO loop.

Kept free of torch so that ``unmask rl --help`` (whose flags are generated from these fields) starts in a
fraction of a second; ``unmask.rl.loop`` re-exports ``RLConfig``, ``unmask.rl.grpo`` the two choice lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unmask import trackers
from unmask.config import (
    ALGS,
    CACHES,
    DECODERS,
    DecodeConfig,
    DecoderConfig,
    RunOptions,
    check_choices,
    check_device,
    check_ints,
    check_lora,
    check_numbers,
    doc,
)
from unmask.errors import ConfigError
from unmask.rl.rewards import get_reward

ESTIMATORS = ("coupled", "decoupled", "diffu-grpo")
BASELINES = ("mean", "leave_one_out")
LR_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class RLConfig(RunOptions):
    """Everything an RL run needs; saved as ``rl_config.json`` in the run directory."""

    _what = "RL"

    model: str | None = field(default=None, metadata=doc("initial policy: an HF model directory"))
    data: str = field(default="synthetic-train", metadata=doc("benchmark name for load_tasks, or a tasks .jsonl"))
    run_dir: str = field(default="runs/rl", metadata=doc("run directory (checkpoints, metrics)"))
    synthetic_tasks: int = field(default=200, metadata=doc("tasks drawn when data is a synthetic benchmark"))
    task_limit: int | None = field(default=None, metadata=doc("use only the first N tasks"))
    chat: bool = field(default=False, metadata=doc("ChatML prompts + code-fence prefill (Instruct models)"))
    estimator: str = field(default="coupled", metadata=doc("per-token log-prob estimator", choices=ESTIMATORS))
    num_generations: int = field(default=10, metadata=doc("completions per prompt (G)"))
    prompts_per_step: int = field(default=2, metadata=doc("prompts per step, summed over ranks"))
    max_steps: int = field(default=100, metadata=doc("RL steps of the whole run"))
    stop_after_steps: int | None = field(default=None, metadata=doc("stop this invocation after N steps"))
    mu: int = field(default=2, metadata=doc("gradient updates per batch of rollouts"))
    lr: float = field(default=1e-6, metadata=doc("AdamW peak learning rate (see lr_schedule)"))
    lr_schedule: str = field(
        default="cosine",
        metadata=doc("cosine (lr down to min_lr_ratio x lr at max_steps) or constant", choices=LR_SCHEDULES),
    )
    min_lr_ratio: float = field(default=0.1, metadata=doc("cosine: final LR as a fraction of lr"))
    weight_decay: float = field(default=0.1, metadata=doc("AdamW weight decay (matrices only)"))
    beta1: float = field(default=0.9, metadata=doc("AdamW beta1"))
    beta2: float = field(default=0.99, metadata=doc("AdamW beta2"))
    grad_clip: float = field(default=0.2, metadata=doc("clip the global grad norm (0 = off)"))
    eps_clip: float = field(default=0.5, metadata=doc("PPO ratio clip epsilon"))
    beta: float = field(default=0.01, metadata=doc("k3 KL weight to the reference policy (0 = no reference)"))
    ref_sync_every: int = field(default=64, metadata=doc("sync the reference every N steps (0 = never)"))
    ref_sync_alpha: float = field(
        default=0.6, metadata=doc("sync: reference = alpha x policy + (1 - alpha) x reference (1 = copy)")
    )
    baseline: str = field(default="mean", metadata=doc("advantage baseline", choices=BASELINES))
    scale_std: bool = field(default=False, metadata=doc("divide advantages by the group's reward std"))
    t_low: float = field(default=0.2, metadata=doc("coupled/decoupled: t ~ U(t_low, t_high)"))
    t_high: float = field(default=0.8, metadata=doc("coupled/decoupled: t ~ U(t_low, t_high)"))
    prompt_mask_ratio: float = field(
        default=0.0,
        metadata=doc("diffu-grpo: share of prompt tokens masked (0: the paper's row; 0.15: d1's variant)"),
    )
    max_new_tokens: int = field(default=256, metadata=doc("rollout completion length"))
    steps: int = field(default=256, metadata=doc("rollout denoising steps"))
    temperature: float = field(default=1.2, metadata=doc("rollout temperature"))
    top_p: float | None = field(default=0.95, metadata=doc("rollout nucleus filter"))
    alg: str = field(default="entropy", metadata=doc("rollout unmasking order", choices=ALGS))
    alg_temp: float = field(default=0.0, metadata=doc("rollout order randomness"))
    rollout_decoder: str = field(default="reference", metadata=doc(
        "decoder of the rollouts: reference (Dream, the paper's) | blocks | parallel; the estimators always "
        "score the full canvas", choices=DECODERS))
    rollout_block_length: int = field(default=8, metadata=doc("rollouts: tokens per block (blocks, parallel)"))
    rollout_threshold: float = field(default=0.9, metadata=doc("rollouts: parallel decoder's confidence threshold"))
    rollout_cache: str = field(default="none", metadata=doc(
        "rollouts: approximate KV cache none | prefix | dual (blocks, parallel)", choices=CACHES))
    rollout_early_stop: bool = field(default=False, metadata=doc(
        "rollouts: stop a canvas once its eos is committed and pad the rest (saves forwards)"))
    rewards: str = field(default="code,code_format", metadata=doc("comma-separated reward function names"))
    reward_weights: str = field(default="2.0,0.5", metadata=doc("comma-separated weights, one per reward"))
    timeout: float = field(default=5.0, metadata=doc("seconds per sandboxed test"))
    memory_mb: int = field(default=1024, metadata=doc("address-space limit per sandboxed test"))
    pass_token_budget: int = field(default=32768, metadata=doc("max tokens (rows x length) per masked forward"))
    eval_every: int = field(default=0, metadata=doc("held-out evaluation every N steps (0 = off)"))
    eval_benchmark: str = field(default="synthetic", metadata=doc("benchmark of the held-out evaluation"))
    eval_limit: int | None = field(default=40, metadata=doc("tasks in the held-out evaluation"))
    eval_samples: int = field(default=1, metadata=doc("greedy samples per held-out task"))
    save_every: int = field(default=50, metadata=doc("checkpoint every N steps (and at the end)"))
    keep_checkpoints: int = field(default=2, metadata=doc("newest checkpoints kept"))
    log_every: int = field(default=1, metadata=doc("metrics.jsonl line every N steps"))
    seed: int = field(default=0, metadata=doc("seed of prompt order, rollouts and masks"))
    device: str = field(default="auto", metadata=doc("auto | cpu | cuda"))
    resume: bool = field(default=False, metadata=doc("continue from the run's latest checkpoint"))
    progress: bool = field(default=True, metadata=doc("tqdm progress bar on rank 0"))

    def __post_init__(self) -> None:
        check_ints(self, ("synthetic_tasks", "num_generations", "prompts_per_step", "max_steps", "mu",
                          "max_new_tokens", "steps", "rollout_block_length", "memory_mb", "pass_token_budget",
                          "eval_samples", "save_every", "keep_checkpoints", "log_every"))
        check_ints(self, ("ref_sync_every", "eval_every", "seed"), minimum=0)
        check_ints(self, ("stop_after_steps", "task_limit", "eval_limit"), optional=True)
        if self.num_generations < 2:
            raise ConfigError("num_generations must be at least 2 (advantages are relative to the group)")
        check_choices(self)
        if not 0.0 < self.t_low <= self.t_high < 1.0:
            raise ConfigError(f"need 0 < t_low <= t_high < 1, got t_low={self.t_low}, t_high={self.t_high}")
        check_numbers(self, ("eps_clip",), "(0, 1)")
        check_numbers(self, ("prompt_mask_ratio", "min_lr_ratio"), "[0, 1]")
        check_numbers(self, ("beta1", "beta2"), "[0, 1)")
        # 0 would never move the reference (ref_sync_every 0 says that); 1 is a hard copy.
        check_numbers(self, ("ref_sync_alpha",), "(0, 1]")
        check_numbers(self, ("lr", "timeout"), "(0, inf)")
        check_numbers(self, ("beta", "weight_decay", "grad_clip", "temperature", "alg_temp"), "[0, inf)")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        check_device(self.device)
        check_lora(self)
        if self.lora_r and self.beta > 0 and self.ref_sync_every:
            # Blending adapters factor by factor is not the blend of the weights (B1 A1 and B2 A2 do not mix
            # linearly), so there is no honest LoRA version of the synced reference: the anchor stays the base.
            raise ConfigError("ref_sync_every must be 0 with LoRA (lora_r > 0): the KL reference is the base model "
                              "(the policy with its adapters off), which cannot be blended toward the policy")
        trackers.parse(self.report_to)
        self.rollout_decoder_config()  # the decoder's own checks (a cache needs blocks or parallel, ...)
        weights = self.reward_weight_map()  # validates names, counts and numbers
        for name in weights:
            try:
                get_reward(name)
            except ValueError as err:
                raise ConfigError(str(err)) from None

    def reward_weight_map(self) -> dict[str, float]:
        names = [n.strip() for n in self.rewards.split(",") if n.strip()]
        raw = [w.strip() for w in self.reward_weights.split(",") if w.strip()]
        if not names or len(names) != len(raw):
            raise ConfigError(f"rewards ({self.rewards!r}) and reward_weights ({self.reward_weights!r}) must "
                              "list the same number of entries")
        try:
            values = [float(w) for w in raw]
        except ValueError:
            raise ConfigError(f"reward_weights must be numbers, got {self.reward_weights!r}") from None
        if len(set(names)) != len(names):
            raise ConfigError(f"a reward function is listed twice in {self.rewards!r}")
        return dict(zip(names, values))

    def decode_config(self) -> DecodeConfig:
        return DecodeConfig(max_new_tokens=self.max_new_tokens, steps=self.steps, temperature=self.temperature,
                            top_p=self.top_p, alg=self.alg, alg_temp=self.alg_temp)


    def rollout_decoder_config(self) -> DecoderConfig:
        return DecoderConfig(decoder=self.rollout_decoder, block_length=self.rollout_block_length,
                             threshold=self.rollout_threshold, cache=self.rollout_cache,
                             early_stop=self.rollout_early_stop)
