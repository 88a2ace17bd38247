"""r1kernels::group_advantages in PyTorch: statistics in float64 over a [groups, G] view, NaN rewards
left out of every statistic, as the op's docstring (r1kernels.group_advantages) states."""

from __future__ import annotations

import torch

GROUP, BATCH, NONE = 0, 1, 2  # scale_mode


def group_advantages(rewards, group_size, scale_mode, leave_one_out, eps):
    r = rewards.to(torch.float64).reshape(-1, group_size)
    scorable = ~torch.isnan(r)
    zeros = torch.zeros_like(r)
    x = torch.where(scorable, r, zeros)
    count = scorable.sum(-1).to(torch.float64)  # [groups]
    total = x.sum(-1)
    mean = total / count.clamp(min=1)
    sq = torch.where(scorable, (r - mean[:, None]) ** 2, zeros).sum(-1)
    std = torch.where(count >= 2, (sq / (count - 1).clamp(min=1)).sqrt(), torch.zeros_like(sq))
    hi = torch.where(scorable, r, torch.full_like(r, -torch.inf)).max(-1).values
    lo = torch.where(scorable, r, torch.full_like(r, torch.inf)).min(-1).values
    zero_std = (count == 0) | (hi == lo)

    if leave_one_out:  # baseline: the mean of the group's other scorable samples
        others = (total[:, None] - x) / (count[:, None] - 1).clamp(min=1)
        centred = torch.where(count[:, None] >= 2, r - others, zeros)
    else:
        centred = r - mean[:, None]
    if scale_mode == GROUP:
        centred = centred / (std[:, None] + eps)
    elif scale_mode == BATCH:
        n = scorable.sum()
        all_mean = x.sum() / n.clamp(min=1)
        batch_var = torch.where(scorable, (r - all_mean) ** 2, zeros).sum() / (n - 1).clamp(min=1)
        batch_std = torch.where(n >= 2, batch_var.sqrt(), torch.zeros_like(batch_var))
        centred = centred / (batch_std + eps)
    adv = torch.where(scorable & ~zero_std[:, None], centred, zeros)
    return adv.reshape(-1).to(rewards.dtype), mean.to(rewards.dtype), std.to(rewards.dtype), zero_std
