"""The GRPO loss's normaliser: what divides the summed per-token loss of an optimizer step.

    loss_type     default (TRL)                               exclude_zero_std_from_normalizer
    dapo, cispo   the step's tokens                           the step's tokens in live groups
    bnpo          each micro-batch's tokens                   the step's tokens in live groups
    grpo, sapo    each micro-batch's sequences (the mean      the step's sequences in live groups
                  of per-sequence token means)
    dr_grpo       each micro-batch's sequences x T            the step's sequences in live groups x T

"The step's" counts run over every micro-batch and every rank (summed across processes), so that
gradient accumulation and torchrun give the gradient of one batch. A live group has distinct
rewards: a dead one (all rewards equal, advantage 0) adds no policy gradient, only its KL term
when beta > 0, and the option keeps it out of the count. `step_normaliser` is the one place that
decides this; the loss (`GRPOTrainer`'s `_PolicyLoss`) and the accumulation apply what it says.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r1core.trainers import distributed as dist

PER_SEQUENCE = ("grpo", "sapo", "dr_grpo")


@dataclass(frozen=True)
class Normaliser:
    """How `r1kernels.grpo_loss` normalises one micro-batch.

    loss_type: the kernel's loss_type (bnpo over a step-wide token count is dapo's per-token loss
      over that count). num_items: the step-wide token count the kernel divides by (dapo, cispo), or
      None. num_seqs: the step-wide sequence count that replaces the micro-batch's own (grpo, sapo,
      dr_grpo), or None."""

    loss_type: str
    num_items: float | None = None
    num_seqs: float | None = None

    def __post_init__(self):
        if self.num_items is not None and self.loss_type not in ("dapo", "cispo"):
            raise ValueError(f"Normaliser.num_items applies to loss_type dapo and cispo, not {self.loss_type!r}")
        if self.num_seqs is not None and self.loss_type not in PER_SEQUENCE:
            raise ValueError(f"Normaliser.num_seqs applies to loss_type {', '.join(PER_SEQUENCE)}, not {self.loss_type!r}")

    @property
    def step_wide(self) -> bool:
        """True: each micro-batch's loss is its share of one sum over the step, so the shares add
        up; False: each is a mean of its own, and the step's loss is their mean."""
        return self.num_items is not None or self.num_seqs is not None

    def rescale(self, loss: torch.Tensor, micro_batch_size: int) -> torch.Tensor:
        """The kernel's loss of a micro-batch of micro_batch_size sequences, divided by num_seqs
        instead: grpo and sapo (the mean of per-sequence means) and dr_grpo (sum / (B * T)) divide
        by the micro-batch's B."""
        return loss if self.num_seqs is None else loss * (micro_batch_size / self.num_seqs)


def step_normaliser(loss_type: str, exclude_zero_std: bool, completion_mask: torch.Tensor, group_ok: torch.Tensor) -> Normaliser:
    """The normaliser of a step whose batch (on this rank) has completion_mask [B, C] (real
    tokens) and group_ok [B] (the sample's group is live); counts are summed over ranks, at least 1."""
    if loss_type in PER_SEQUENCE:
        if not exclude_zero_std:
            return Normaliser(loss_type)
        return Normaliser(loss_type, num_seqs=dist.all_reduce_sum(group_ok.sum().float()).clamp(min=1.0).item())
    if loss_type == "bnpo" and not exclude_zero_std:
        return Normaliser(loss_type)
    counted = completion_mask & group_ok.unsqueeze(-1) if exclude_zero_std else completion_mask
    num_items = dist.all_reduce_sum(counted.sum().float()).clamp(min=1.0).item()
    return Normaliser("dapo" if loss_type == "bnpo" else loss_type, num_items=num_items)


__all__ = ["Normaliser", "step_normaliser"]
