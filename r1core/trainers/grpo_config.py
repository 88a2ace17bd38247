"""GRPOConfig: the GRPO trainer's settings, validated on construction.

Names and meanings follow TRL's GRPOConfig where the two overlap (num_generations,
per_device_train_batch_size counts completions, loss_type "dapo" by default, epsilon/epsilon_high,
scale_rewards, ...). Beyond TRL: dynamic sampling (DAPO: drop groups whose rewards are all equal and
refill the batch), a loss normaliser that leaves those groups out, a collapse detector,
asynchronous rollouts, and truncated importance sampling (TRL's vllm_importance_sampling_correction
with mode token_truncate / sequence_truncate as tis_cap / tis_level).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from r1core.trainers.config import NONE_EMPTY, TRAINING_RULES, TrainerConfig, above, at_least, one_of, within
from r1core.trainers.optim import LR_SCHEDULERS

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo")
SCALE_REWARDS = ("group", "batch", "none")
# TRL's default cap of its importance-sampling correction (vllm_importance_sampling_clip_max):
# tis_cap=TIS_CAP_ASYNC with async_rollouts is TRL's way with stale samples
TIS_CAP_ASYNC = 3.0


@dataclass
class GRPOConfig(TrainerConfig):
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
    # truncated importance sampling: each token's surrogate times min(pi_train / pi_rollout, tis_cap),
    # pi_rollout the engine's sampling probability (r1kernels._tis); None: off. Off, the PPO ratio's old
    # log-probs are the sampling log-probs, which with async_rollouts come from weights one update back:
    # epsilon's clip then bounds each token's move from the policy that sampled it (PPO's own answer to
    # stale samples; sooner to accuracy on the default run than TIS at TRL's cap, docs/training.md)
    tis_cap: float | None = None
    tis_level: str = "token"
    # asynchronous rollouts (r1core.trainers.async_rollouts): step k+1's completions are generated in a
    # worker process while step k trains, from weights at most max_staleness optimizer steps old;
    # max_staleness 0 leaves nothing to overlap and is the synchronous trainer
    async_rollouts: bool = False
    max_staleness: int = 1
    # DAPO dynamic sampling: keep generating until the batch holds enough groups with distinct rewards
    dynamic_sampling: bool = False
    max_dynamic_sampling_rounds: int = 4
    # the loss's normaliser counts only the groups with distinct rewards (dead groups add no policy
    # gradient, only their KL term when beta > 0), over the whole optimizer step (all micro-batches and
    # ranks), for every loss type: tokens or sequences as r1core.trainers.grpo_normaliser's table says
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
    report_to: list[str] | None = None  # ["tensorboard"]: the metrics also to <output_dir>/tensorboard
    seed: int = 0
    shuffle_dataset: bool = True
    # collapse detector: mean reward below collapse_threshold for collapse_patience steps after the best
    # step's mean reward was at least 2x the threshold
    collapse_patience: int = 5
    collapse_threshold: float = 0.02
    stop_on_collapse: bool = False
    # a step whose loss or gradient is NaN or inf is skipped (no update) with a warning; this many in
    # a row stop the run (NumericalFault) before any checkpoint of the bad state is written
    max_bad_steps: int = 3

    rules = {
        **TRAINING_RULES,
        "num_generations": at_least(2, "advantages are relative to the group"),
        "max_prompt_length": at_least(1),
        "max_completion_length": at_least(1),
        "temperature": above(0),
        "top_p": within(0, 1, low_open=True),
        "top_k": at_least(0),  # 0 disables
        "min_p": within(0, 1, high_open=True),
        "beta": at_least(0),
        "epsilon": within(0, 1, high_open=True),
        "epsilon_high": at_least(0),
        "delta": above(1),
        "loss_type": one_of(LOSS_TYPES),
        "importance_sampling_level": one_of(("token", "sequence")),
        "scale_rewards": one_of(SCALE_REWARDS),
        "num_iterations": at_least(1),
        "tis_cap": above(0),
        "tis_level": one_of(("token", "sequence")),
        "max_staleness": at_least(0),
        "max_dynamic_sampling_rounds": at_least(1),
        "adam_beta1": within(0, 1, high_open=True),
        "adam_beta2": within(0, 1, high_open=True),
        "warmup_ratio": within(0, 1, high_open=True),
        "gradient_accumulation_steps": at_least(1),
        "collapse_patience": at_least(1),
        "collapse_threshold": at_least(0),
        "stop": NONE_EMPTY,
    }

    def _normalise(self) -> None:
        # TRL's spellings: None disables top-k and min-p, epsilon_high defaults to epsilon, and
        # scale_rewards was a boolean once
        if self.top_k is None:
            self.top_k = 0
        if self.min_p is None:
            self.min_p = 0.0
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        if self.scale_rewards is True:
            self.scale_rewards = "group"
        elif self.scale_rewards is False:
            self.scale_rewards = "none"

    def _check_together(self) -> None:
        if self.reward_weights is not None:
            self.reward_weights = [float(w) for w in self.reward_weights]
        if self.stop is not None:
            self.stop = list(self.stop)
        # the clip region [1 - epsilon, 1 + epsilon_high]: DAPO widens its top (clip-higher); a top
        # narrower than the bottom is a slip (cispo reads only epsilon_high, sapo neither)
        if self.loss_type not in ("cispo", "sapo"):
            self._require(self.epsilon_high >= self.epsilon, "epsilon_high",
                          f">= epsilon ({self.epsilon}) with loss_type {self.loss_type!r}")
        if self.async_rollouts and self.dynamic_sampling:
            self._require(False, "dynamic_sampling", "False with async_rollouts=True (its extra rounds wait on the "
                          "policy being trained, leaving nothing to overlap)")
        # TRL: the completions of one optimizer step are whole groups
        per_step = self.per_device_train_batch_size * self.gradient_accumulation_steps
        self._require(per_step % self.num_generations == 0, "per_device_train_batch_size",
                      f"such that per_device_train_batch_size * gradient_accumulation_steps ({per_step}) is a multiple of "
                      f"num_generations ({self.num_generations}): a prompt's samples stay in one step")

    @property
    def prompts_per_step(self) -> int:
        """Prompts per optimizer step and process."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps // self.num_generations

    def num_warmup_steps(self) -> int:
        return self.warmup_steps if self.warmup_steps > 0 else int(math.ceil(self.warmup_ratio * self.max_steps))


__all__ = ["GRPOConfig", "LOSS_TYPES", "LR_SCHEDULERS", "SCALE_REWARDS", "TIS_CAP_ASYNC"]
