"""GRPOConfig: the GRPO trainer's settings, validated on construction.

Names and meanings follow TRL's GRPOConfig where the two overlap (num_generations,
per_device_train_batch_size counts completions, loss_type "dapo" by default, epsilon/epsilon_high,
scale_rewards, ...). Beyond TRL: dynamic sampling (DAPO: drop groups whose rewards are all equal and
refill the batch), a loss normaliser that leaves those groups out, and a collapse detector.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo")
SCALE_REWARDS = ("group", "batch", "none")
LR_SCHEDULERS = ("linear", "cosine", "constant")


def _check(cond: bool, name: str, expected: str, value) -> None:
    if not cond:
        raise ValueError(f"GRPOConfig.{name} must be {expected}, got {value!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class GRPOConfig:
    # generation (the engine's SamplingParams)
    num_generations: int = 8
    max_prompt_length: int | None = 512
    max_completion_length: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = 0  # 0 or None (TRL's spelling): no top-k
    min_p: float | None = 0.0  # 0 or None (TRL's default): no min-p
    stop: list[str] | None = None
    ignore_eos: bool = False  # sample exactly max_completion_length tokens (benchmarks)
    # loss
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None: = epsilon (TRL)
    delta: float | None = None
    loss_type: str = "dapo"
    importance_sampling_level: str = "token"
    scale_rewards: str = "group"
    reward_weights: list[float] | None = None
    num_iterations: int = 1
    mask_truncated_completions: bool = False
    # DAPO dynamic sampling: keep generating until the batch holds enough groups with distinct rewards
    dynamic_sampling: bool = False
    max_dynamic_sampling_rounds: int = 4
    # the loss's normaliser counts only the groups with distinct rewards (dead groups add no policy
    # gradient, only their KL term when beta > 0), over the whole optimizer step (all micro-batches and
    # ranks): tokens for dapo, cispo and bnpo (bnpo then is dapo's sum / those tokens), sequences for
    # grpo and sapo (the sum of per-sequence means / that count) and dr_grpo (sum / (count * T))
    exclude_zero_std_from_normalizer: bool = False
    # optimisation (AdamW, linear warmup, then decay)
    learning_rate: float = 1e-6
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 0.0
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    bf16: bool = False  # bf16 autocast for the training forward and backward (TRL's default; weights stay float32)
    per_device_train_batch_size: int = 8  # completions per micro-batch and device (TRL)
    gradient_accumulation_steps: int = 1
    max_steps: int = 100
    max_seconds: float | None = None  # a wall-clock budget: stop after the step that passes it
    # bookkeeping
    logging_steps: int = 1
    save_steps: int | None = None
    save_total_limit: int | None = 2
    output_dir: str = "runs/grpo"
    seed: int = 0
    shuffle_dataset: bool = True
    # collapse detector: mean reward below collapse_threshold for collapse_patience steps after the best
    # step's mean reward was at least 2x the threshold
    collapse_patience: int = 5
    collapse_threshold: float = 0.02
    stop_on_collapse: bool = False

    def __post_init__(self):
        pos_ints = ("num_generations", "max_completion_length", "num_iterations", "per_device_train_batch_size",
                    "gradient_accumulation_steps", "max_steps", "logging_steps", "max_dynamic_sampling_rounds",
                    "collapse_patience")
        for name in pos_ints:
            v = getattr(self, name)
            _check(_is_int(v) and v >= 1, name, "an int >= 1", v)
        _check(self.num_generations >= 2, "num_generations", "an int >= 2 (advantages are relative to the group)", self.num_generations)
        for name in ("max_prompt_length", "save_steps", "save_total_limit"):
            v = getattr(self, name)
            _check(v is None or (_is_int(v) and v >= 1), name, "None or an int >= 1", v)
        _check(_is_int(self.warmup_steps) and self.warmup_steps >= 0, "warmup_steps", "an int >= 0", self.warmup_steps)
        if self.top_k is None:
            self.top_k = 0
        if self.min_p is None:
            self.min_p = 0.0
        _check(_is_int(self.top_k) and self.top_k >= 0, "top_k", "None or an int >= 0 (0 disables)", self.top_k)
        _check(_is_int(self.seed), "seed", "an int", self.seed)
        for name in ("ignore_eos", "mask_truncated_completions", "dynamic_sampling", "exclude_zero_std_from_normalizer", "bf16",
                     "shuffle_dataset", "stop_on_collapse"):
            _check(isinstance(getattr(self, name), bool), name, "True or False", getattr(self, name))
        _check(isinstance(self.output_dir, str) and self.output_dir != "", "output_dir", "a non-empty string", self.output_dir)
        _check(_is_num(self.temperature) and self.temperature > 0, "temperature", "a number > 0", self.temperature)
        _check(_is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", "in (0, 1]", self.top_p)
        _check(_is_num(self.min_p) and 0 <= self.min_p < 1, "min_p", "in [0, 1)", self.min_p)
        _check(_is_num(self.beta) and self.beta >= 0, "beta", "a number >= 0", self.beta)
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        _check(_is_num(self.epsilon) and 0 <= self.epsilon < 1, "epsilon", "in [0, 1)", self.epsilon)
        _check(_is_num(self.epsilon_high) and self.epsilon_high >= 0, "epsilon_high", "a number >= 0", self.epsilon_high)
        _check(self.delta is None or (_is_num(self.delta) and self.delta > 1), "delta", "None or a number > 1", self.delta)
        _check(self.loss_type in LOSS_TYPES, "loss_type", f"one of {LOSS_TYPES}", self.loss_type)
        _check(self.importance_sampling_level in ("token", "sequence"), "importance_sampling_level", "'token' or 'sequence'", self.importance_sampling_level)
        if self.scale_rewards is True:  # TRL's older boolean spelling
            self.scale_rewards = "group"
        elif self.scale_rewards is False:
            self.scale_rewards = "none"
        _check(self.scale_rewards in SCALE_REWARDS, "scale_rewards", f"one of {SCALE_REWARDS}", self.scale_rewards)
        if self.reward_weights is not None:
            _check(isinstance(self.reward_weights, (list, tuple)) and all(_is_num(w) for w in self.reward_weights),
                   "reward_weights", "None or a list of finite numbers", self.reward_weights)
            self.reward_weights = [float(w) for w in self.reward_weights]
        _check(_is_num(self.learning_rate) and self.learning_rate > 0, "learning_rate", "a number > 0", self.learning_rate)
        _check(_is_num(self.adam_beta1) and 0 <= self.adam_beta1 < 1, "adam_beta1", "in [0, 1)", self.adam_beta1)
        _check(_is_num(self.adam_beta2) and 0 <= self.adam_beta2 < 1, "adam_beta2", "in [0, 1)", self.adam_beta2)
        _check(_is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0", self.weight_decay)
        _check(self.lr_scheduler_type in LR_SCHEDULERS, "lr_scheduler_type", f"one of {LR_SCHEDULERS}", self.lr_scheduler_type)
        _check(_is_num(self.warmup_ratio) and 0 <= self.warmup_ratio < 1, "warmup_ratio", "in [0, 1)", self.warmup_ratio)
        _check(self.max_grad_norm is None or (_is_num(self.max_grad_norm) and self.max_grad_norm > 0), "max_grad_norm", "None or a number > 0", self.max_grad_norm)
        _check(self.max_seconds is None or (_is_num(self.max_seconds) and self.max_seconds > 0), "max_seconds", "None or a number > 0", self.max_seconds)
        _check(_is_num(self.collapse_threshold) and self.collapse_threshold >= 0, "collapse_threshold", "a number >= 0", self.collapse_threshold)
        if self.stop is not None:
            _check(isinstance(self.stop, (list, tuple)) and all(isinstance(s, str) and s for s in self.stop), "stop", "None or a list of non-empty strings", self.stop)
            self.stop = list(self.stop)
        # TRL: the completions of one optimizer step are whole groups
        per_step = self.per_device_train_batch_size * self.gradient_accumulation_steps
        _check(per_step % self.num_generations == 0, "per_device_train_batch_size",
               f"such that per_device_train_batch_size * gradient_accumulation_steps ({per_step}) is a multiple of "
               f"num_generations ({self.num_generations}): a prompt's samples stay in one step", self.per_device_train_batch_size)

    @property
    def prompts_per_step(self) -> int:
        """Prompts per optimizer step and process."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps // self.num_generations

    def num_warmup_steps(self) -> int:
        return self.warmup_steps if self.warmup_steps > 0 else int(math.ceil(self.warmup_ratio * self.max_steps))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GRPOConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"GRPOConfig has no field(s) {unknown}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str) -> "GRPOConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))


__all__ = ["GRPOConfig", "LOSS_TYPES", "SCALE_REWARDS"]
