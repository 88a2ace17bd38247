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

from dataclasses import dataclass, field

from r1core.trainers.config import above, at_least, one_of, within
from r1core.trainers.sft import SFTConfig

MODES = ("logit", "reverse_kl_pg")


@dataclass
class DistillConfig(SFTConfig):
    """SFTConfig's fields (as TRL's GKDConfig extends its SFTConfig), other defaults where
    distillation differs, and the distillation's own."""

    # what is distilled, and from which completions
    mode: str = "logit"  # "logit": the fused JSD on both models' logits; "reverse_kl_pg": policy gradient on sampled tokens
    lmbda: float = 0.5  # probability that a step's completions are sampled from the student (on-policy, GKD)
    beta: float = 0.5
    temperature: float = 0.9
    seq_kd: bool = False  # off-policy steps take the teacher's samples instead of the dataset's completions
    max_new_tokens: int = 128
    weight_hard_loss: float = 0.0
    # SFTConfig's, with distillation's defaults
    learning_rate: float = 1e-3
    per_device_train_batch_size: int = 16  # prompt/completion rows per step and process
    output_dir: str = "runs/distill"
    # the teacher's and student's passes read rows as they are: not a setting here (and so not a flag)
    packing: bool = field(default=False, init=False)

    rules = {**SFTConfig.rules, "mode": one_of(MODES), "lmbda": within(0, 1), "beta": within(0, 1), "temperature": above(0),
             "max_new_tokens": at_least(1), "weight_hard_loss": at_least(0)}

    def _check_together(self) -> None:
        super()._check_together()
        if self.mode == "reverse_kl_pg":
            # the student samples every step there: the off-policy switches would be silently ignored
            self._require(not self.seq_kd, "seq_kd", "False with mode='reverse_kl_pg' (the student samples every step)")
            self._require(self.weight_hard_loss == 0, "weight_hard_loss", "0 with mode='reverse_kl_pg' (no hard loss on sampled tokens)")

    @property
    def needs_dataset_completions(self) -> bool:
        """Some steps train on the dataset's own completions (mode logit, lmbda < 1, no seq_kd)."""
        return self.mode == "logit" and self.lmbda < 1 and not self.seq_kd


__all__ = ["MODES", "DistillConfig"]
