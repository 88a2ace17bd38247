"""DistillConfig: the distillation trainer's settings, validated on construction.

TRL's GKDConfig names where the two overlap: `lmbda` (the share of steps whose completions the
student samples), `beta` (the generalised JSD's interpolation: 0 forward KL(teacher || student),
1 reverse KL(student || teacher)), `temperature` (of the sampling and of both models' logits in
the loss), `seq_kd` (completions sampled from the teacher), `max_new_tokens`; SFTConfig's fields
otherwise. Beyond GKD: `mode="reverse_kl_pg"` (on-policy distillation as a policy gradient with the
per-token advantage log p_teacher - log p_student) and `weight_hard_loss` (Liger's name: the
student's cross-entropy on the completion tokens beside the soft loss).
"""

from __future__ import annotations

from dataclasses import dataclass

from r1core.trainers.config import NOT_EMPTY, TRAINING_RULES, TrainerConfig, above, at_least, one_of, within

MODES = ("logit", "reverse_kl_pg")


@dataclass
class DistillConfig(TrainerConfig):
    # what is distilled, and from which completions
    mode: str = "logit"  # "logit": the fused JSD on both models' logits; "reverse_kl_pg": policy gradient on sampled tokens
    lmbda: float = 0.5  # probability that a step's completions are sampled from the student (on-policy, GKD)
    beta: float = 0.5
    temperature: float = 0.9
    seq_kd: bool = False  # off-policy steps take the teacher's samples instead of the dataset's completions
    max_new_tokens: int = 128
    weight_hard_loss: float = 0.0
    # SFTConfig's
    learning_rate: float = 1e-3
    per_device_train_batch_size: int = 16  # prompt/completion rows per step and process
    max_steps: int = 1000
    max_seconds: float | None = None
    max_seq_length: int = 512
    warmup_steps: int = 0
    lr_scheduler_type: str = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    add_eos: bool = True
    logging_steps: int = 10
    save_steps: int | None = None
    save_total_limit: int | None = 2
    output_dir: str = "runs/distill"
    seed: int = 0
    max_bad_steps: int = 3  # NaN/inf loss or gradient: skipped steps in a row before the run stops (as SFTConfig)

    rules = {**TRAINING_RULES, "mode": one_of(MODES), "lmbda": within(0, 1), "beta": within(0, 1), "temperature": above(0),
             "max_new_tokens": at_least(1), "weight_hard_loss": at_least(0), "max_seq_length": at_least(1),
             "prompt_field": NOT_EMPTY, "completion_field": NOT_EMPTY}

    def _check_together(self) -> None:
        if self.mode == "reverse_kl_pg":
            # the student samples every step there: the off-policy switches would be silently ignored
            self._require(not self.seq_kd, "seq_kd", "False with mode='reverse_kl_pg' (the student samples every step)")
            self._require(self.weight_hard_loss == 0, "weight_hard_loss", "0 with mode='reverse_kl_pg' (no hard loss on sampled tokens)")

    @property
    def needs_dataset_completions(self) -> bool:
        """Some steps train on the dataset's own completions (mode logit, lmbda < 1, no seq_kd)."""
        return self.mode == "logit" and self.lmbda < 1 and not self.seq_kd


__all__ = ["MODES", "DistillConfig"]
