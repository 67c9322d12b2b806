"""``RLConfig``: the settings of an RL run (``unmask rl``), apart from the GRPO loop.

Kept free of torch so that ``unmask rl --help`` (whose flags are generated from these fields) starts in a
fraction of a second; ``unmask.rl.loop`` re-exports ``RLConfig``, ``unmask.rl.grpo`` the two choice lists.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from unmask.config import ALGS, DecodeConfig, config_from_dict
from unmask.errors import ConfigError
from unmask.rl.rewards import get_reward

ESTIMATORS = ("coupled", "decoupled", "diffu-grpo")
BASELINES = ("mean", "leave_one_out")
LR_SCHEDULES = ("cosine", "constant")


def _doc(text: str, **extra: Any) -> dict[str, Any]:
    return {"doc": text, **extra}


@dataclass(frozen=True)
class RLConfig:
    """Everything an RL run needs; saved as ``rl_config.json`` in the run directory."""

    model: str | None = field(default=None, metadata=_doc("initial policy: an HF model directory"))
    data: str = field(default="synthetic-train", metadata=_doc("benchmark name for load_tasks, or a tasks .jsonl"))
    run_dir: str = field(default="runs/rl", metadata=_doc("run directory (checkpoints, metrics)"))
    synthetic_tasks: int = field(default=200, metadata=_doc("tasks drawn when data is a synthetic benchmark"))
    task_limit: int | None = field(default=None, metadata=_doc("use only the first N tasks"))
    chat: bool = field(default=False, metadata=_doc("ChatML prompts + code-fence prefill (Instruct models)"))
    estimator: str = field(default="coupled", metadata=_doc("per-token log-prob estimator", choices=ESTIMATORS))
    num_generations: int = field(default=10, metadata=_doc("completions per prompt (G)"))
    prompts_per_step: int = field(default=2, metadata=_doc("prompts per step, summed over ranks"))
    max_steps: int = field(default=100, metadata=_doc("RL steps of the whole run"))
    stop_after_steps: int | None = field(default=None, metadata=_doc("stop this invocation after N steps"))
    mu: int = field(default=2, metadata=_doc("gradient updates per batch of rollouts"))
    lr: float = field(default=1e-6, metadata=_doc("AdamW peak learning rate (see lr_schedule)"))
    lr_schedule: str = field(
        default="cosine",
        metadata=_doc("cosine (lr down to min_lr_ratio x lr at max_steps) or constant", choices=LR_SCHEDULES),
    )
    min_lr_ratio: float = field(default=0.1, metadata=_doc("cosine: final LR as a fraction of lr"))
    weight_decay: float = field(default=0.1, metadata=_doc("AdamW weight decay (matrices only)"))
    beta1: float = field(default=0.9, metadata=_doc("AdamW beta1"))
    beta2: float = field(default=0.99, metadata=_doc("AdamW beta2"))
    grad_clip: float = field(default=0.2, metadata=_doc("clip the global grad norm (0 = off)"))
    eps_clip: float = field(default=0.5, metadata=_doc("PPO ratio clip epsilon"))
    beta: float = field(default=0.01, metadata=_doc("k3 KL weight to the reference policy (0 = no reference)"))
    ref_sync_every: int = field(default=64, metadata=_doc("sync the reference every N steps (0 = never)"))
    ref_sync_alpha: float = field(
        default=0.6, metadata=_doc("sync: reference = alpha x policy + (1 - alpha) x reference (1 = copy)")
    )
    baseline: str = field(default="mean", metadata=_doc("advantage baseline", choices=BASELINES))
    scale_std: bool = field(default=False, metadata=_doc("divide advantages by the group's reward std"))
    t_low: float = field(default=0.2, metadata=_doc("coupled/decoupled: t ~ U(t_low, t_high)"))
    t_high: float = field(default=0.8, metadata=_doc("coupled/decoupled: t ~ U(t_low, t_high)"))
    prompt_mask_ratio: float = field(
        default=0.0,
        metadata=_doc("diffu-grpo: share of prompt tokens masked (0: the paper's row; 0.15: d1's variant)"),
    )
    max_new_tokens: int = field(default=256, metadata=_doc("rollout completion length"))
    steps: int = field(default=256, metadata=_doc("rollout denoising steps"))
    temperature: float = field(default=1.2, metadata=_doc("rollout temperature"))
    top_p: float | None = field(default=0.95, metadata=_doc("rollout nucleus filter"))
    alg: str = field(default="entropy", metadata=_doc("rollout unmasking order", choices=ALGS))
    alg_temp: float = field(default=0.0, metadata=_doc("rollout order randomness"))
    rewards: str = field(default="code,code_format", metadata=_doc("comma-separated reward function names"))
    reward_weights: str = field(default="2.0,0.5", metadata=_doc("comma-separated weights, one per reward"))
    timeout: float = field(default=5.0, metadata=_doc("seconds per sandboxed test"))
    memory_mb: int = field(default=1024, metadata=_doc("address-space limit per sandboxed test"))
    pass_token_budget: int = field(default=32768, metadata=_doc("max tokens (rows x length) per masked forward"))
    eval_every: int = field(default=0, metadata=_doc("held-out evaluation every N steps (0 = off)"))
    eval_benchmark: str = field(default="synthetic", metadata=_doc("benchmark of the held-out evaluation"))
    eval_limit: int | None = field(default=40, metadata=_doc("tasks in the held-out evaluation"))
    eval_samples: int = field(default=1, metadata=_doc("greedy samples per held-out task"))
    save_every: int = field(default=50, metadata=_doc("checkpoint every N steps (and at the end)"))
    keep_checkpoints: int = field(default=2, metadata=_doc("newest checkpoints kept"))
    log_every: int = field(default=1, metadata=_doc("metrics.jsonl line every N steps"))
    seed: int = field(default=0, metadata=_doc("seed of prompt order, rollouts and masks"))
    device: str = field(default="auto", metadata=_doc("auto | cpu | cuda"))
    resume: bool = field(default=False, metadata=_doc("continue from the run's latest checkpoint"))
    progress: bool = field(default=True, metadata=_doc("tqdm progress bar on rank 0"))

    def __post_init__(self) -> None:
        ints = ("synthetic_tasks", "num_generations", "prompts_per_step", "max_steps", "mu", "max_new_tokens",
                "steps", "memory_mb", "pass_token_budget", "eval_samples", "save_every", "keep_checkpoints",
                "log_every")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("ref_sync_every", "eval_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        for name in ("stop_after_steps", "task_limit", "eval_limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        if self.num_generations < 2:
            raise ConfigError("num_generations must be at least 2 (advantages are relative to the group)")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"estimator must be one of {', '.join(ESTIMATORS)}; got {self.estimator!r}")
        if self.baseline not in BASELINES:
            raise ConfigError(f"baseline must be one of {', '.join(BASELINES)}; got {self.baseline!r}")
        if self.alg not in ALGS:
            raise ConfigError(f"alg must be one of {', '.join(ALGS)}; got {self.alg!r}")
        if not 0.0 < self.t_low <= self.t_high < 1.0:
            raise ConfigError(f"need 0 < t_low <= t_high < 1, got t_low={self.t_low}, t_high={self.t_high}")
        if not 0.0 < self.eps_clip < 1.0:
            raise ConfigError(f"eps_clip must be in (0, 1), got {self.eps_clip!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {self.lr_schedule!r}")
        self._check_ranges()
        for name in ("lr", "timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a number > 0, got {value!r}")
        for name in ("beta", "weight_decay", "grad_clip", "temperature", "alg_temp"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda[:N]; got {self.device!r}")
        weights = self.reward_weight_map()  # validates names, counts and numbers
        for name in weights:
            try:
                get_reward(name)
            except ValueError as err:
                raise ConfigError(str(err)) from None

    def _check_ranges(self) -> None:
        """Fractions and Adam's betas: each a finite number inside its interval."""
        for name, inside, interval in (
            ("prompt_mask_ratio", lambda v: 0.0 <= v <= 1.0, "[0, 1]"),
            ("min_lr_ratio", lambda v: 0.0 <= v <= 1.0, "[0, 1]"),
            ("beta1", lambda v: 0.0 <= v < 1.0, "[0, 1)"),
            ("beta2", lambda v: 0.0 <= v < 1.0, "[0, 1)"),
            # 0 would never move the reference (ref_sync_every 0 says that); 1 is a hard copy.
            ("ref_sync_alpha", lambda v: 0.0 < v <= 1.0, "(0, 1]"),
        ):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not (number and inside(value)):
                raise ConfigError(f"{name} must be a number in {interval}, got {value!r}")

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

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RLConfig:
        """Build from a mapping (a JSON file, CLI flags); an unknown key is a ``ConfigError`` naming it."""
        return config_from_dict(cls, values, "RL")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
