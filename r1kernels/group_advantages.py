"""Group-relative advantages for GRPO and its variants, with the per-group statistics a trainer
needs (dynamic sampling, normalisers that leave dead groups out), in one pass.

    advantage = (r - baseline) / (std + eps)
    baseline: the group mean (GRPO) or the mean of the other G-1 samples (RLOO, leave_one_out=True)
    std: of the group (scale="group", TRL's default), of the whole batch ("batch"), or 1 ("none",
    Dr. GRPO); Bessel's correction as torch.std.

A NaN reward marks an unscorable sample: it is left out of the mean and std and gets advantage 0.
Groups whose scorable rewards are all equal get advantage 0 and are flagged in `zero_std`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from r1kernels._library import op

SCALES = {"group": 0, "batch": 1, "none": 2}


class GroupStats(NamedTuple):
    mean: torch.Tensor  # [num_groups] mean of the scorable rewards (NaN rewards left out)
    std: torch.Tensor  # [num_groups] std with Bessel's correction; 0 with fewer than 2 scorable
    zero_std: torch.Tensor  # [num_groups] bool: all scorable rewards equal (or none): advantage 0


class GroupAdvantages(NamedTuple):
    advantages: torch.Tensor  # [B] same dtype as rewards
    stats: GroupStats


@torch.library.register_fake("r1kernels::group_advantages")
def _(rewards, group_size, scale_mode, leave_one_out, eps):
    g = rewards.shape[0] // group_size
    return (
        torch.empty_like(rewards),
        rewards.new_empty(g),
        rewards.new_empty(g),
        rewards.new_empty(g, dtype=torch.bool),
    )


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    scale: str = "group",
    leave_one_out: bool = False,
    eps: float = 1e-4,
    return_stats: bool = False,
):
    """Advantages [B] for rewards [B] of B / group_size consecutive groups.

    With return_stats=True returns GroupAdvantages(advantages, GroupStats(mean, std, zero_std)).
    """
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D tensor, got {getattr(rewards, 'shape', type(rewards))}")
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be floating point, got {rewards.dtype}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    if rewards.shape[0] % group_size != 0:
        raise ValueError(f"rewards has {rewards.shape[0]} entries, not a multiple of group_size={group_size}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {tuple(SCALES)}, got {scale!r}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    # Data-dependent check: skipped while tracing; the C++ kernel raises the same ValueError there.
    if not torch.compiler.is_compiling() and torch.isinf(rewards).any():
        raise ValueError("rewards must not hold +-inf (NaN marks an unscorable sample; inf is an error)")
    adv, mean, std, zero_std = op("group_advantages")(rewards.contiguous(), group_size, SCALES[scale], leave_one_out, float(eps))
    if return_stats:
        return GroupAdvantages(adv, GroupStats(mean, std, zero_std))
    return adv
