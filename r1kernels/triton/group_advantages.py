"""Triton kernel for r1kernels::group_advantages on CUDA tensors.

GRPO group-relative advantages, exactly as `r1kernels.reference.group_advantages`: baseline = group
mean (or, leave_one_out, the mean of the other scorable samples: RLOO); scale = group std with
Bessel's correction (scale_mode 0), batch std (1) or none (2, Dr. GRPO). NaN rewards are left out of
every statistic and get advantage 0; groups whose scorable rewards are all equal get 0 and are
flagged in zero_std.

One program per group, looping over the group in BLOCK_G lanes. Group scaling is one launch; batch
scaling needs every group's (count, total, M2) first, so a first launch writes them, the batch std
is combined on the device with Chan's formula, and a second launch writes the advantages.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK_G = 1024


@triton.jit
def _group_moments(r_row, G, BLOCK_G: tl.constexpr, ACC: tl.constexpr):
    """(n, total, mean, m2, rmin, rmax) over the scorable (non-NaN) rewards of one group."""
    n = tl.zeros([BLOCK_G], ACC)
    total = tl.zeros([BLOCK_G], ACC)
    rmax = tl.full([BLOCK_G], float("-inf"), ACC)
    rmin = tl.full([BLOCK_G], float("inf"), ACC)
    for start in range(0, G, BLOCK_G):
        offs = start + tl.arange(0, BLOCK_G)
        # lanes past the group load NaN: the same "unscorable" mark as a NaN reward
        x = tl.load(r_row + offs, mask=offs < G, other=float("nan")).to(ACC)
        valid = x == x
        n += valid.to(ACC)
        total += tl.where(valid, x, 0.0)
        rmax = tl.maximum(rmax, tl.where(valid, x, float("-inf")))
        rmin = tl.minimum(rmin, tl.where(valid, x, float("inf")))
    n_s = tl.sum(n, 0)
    total_s = tl.sum(total, 0)
    mean = total_s / tl.maximum(n_s, 1.0)
    # a second pass for the squared deviations: free of the cancellation of sum(x^2) - n mean^2
    m2 = tl.zeros([BLOCK_G], ACC)
    for start in range(0, G, BLOCK_G):
        offs = start + tl.arange(0, BLOCK_G)
        x = tl.load(r_row + offs, mask=offs < G, other=float("nan")).to(ACC)
        dev = tl.where(x == x, x - mean, 0.0)
        m2 += dev * dev
    return n_s, total_s, mean, tl.sum(m2, 0), tl.min(rmin, 0), tl.max(rmax, 0)


@triton.jit
def _group_advantages_kernel(
    r_ptr, adv_ptr, mean_ptr, std_ptr, zero_ptr, count_ptr, total_ptr, m2_ptr, bstd_ptr,
    G, eps,
    SCALE_MODE: tl.constexpr, LEAVE_ONE_OUT: tl.constexpr, WRITE_STATS: tl.constexpr, WRITE_ADV: tl.constexpr,
    BLOCK_G: tl.constexpr, ACC: tl.constexpr,
):
    g = tl.program_id(0).to(tl.int64)
    r_row = r_ptr + g * G
    n, total, mean, m2, rmin, rmax = _group_moments(r_row, G, BLOCK_G, ACC)
    std = tl.where(n >= 2.0, tl.sqrt(m2 / tl.maximum(n - 1.0, 1.0)), 0.0)
    zero_std = (n == 0.0) | (rmax == rmin)
    if WRITE_STATS:
        tl.store(mean_ptr + g, mean.to(mean_ptr.dtype.element_ty))
        tl.store(std_ptr + g, std.to(std_ptr.dtype.element_ty))
        tl.store(zero_ptr + g, zero_std)
        tl.store(count_ptr + g, n)
        tl.store(total_ptr + g, total)
        tl.store(m2_ptr + g, m2)
    if WRITE_ADV:
        if SCALE_MODE == 1:
            scale = tl.load(bstd_ptr).to(ACC)
        else:
            scale = std
        for start in range(0, G, BLOCK_G):
            offs = start + tl.arange(0, BLOCK_G)
            x = tl.load(r_row + offs, mask=offs < G, other=float("nan")).to(ACC)
            if LEAVE_ONE_OUT:
                centred = tl.where(n >= 2.0, x - (total - x) / tl.maximum(n - 1.0, 1.0), 0.0)
            else:
                centred = x - mean
            if SCALE_MODE == 2:
                a = centred
            else:
                a = centred / (scale + eps)
            a = tl.where((x == x) & (zero_std == 0), a, 0.0)
            tl.store(adv_ptr + g * G + offs, a.to(adv_ptr.dtype.element_ty), mask=offs < G)


def group_advantages(rewards: torch.Tensor, group_size: int, scale_mode: int, leave_one_out: bool, eps: float,
                     *, block_g: int | None = None):
    """Launcher with the schema's signature: (advantages, mean, std, zero_std)."""
    if rewards.dim() != 1 or not rewards.is_floating_point():
        raise ValueError(f"rewards must be a 1-D floating-point tensor, got {rewards.dtype} {list(rewards.shape)}")
    if group_size < 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(f"rewards has {rewards.shape[0]} entries, not a multiple of group_size={group_size} (>= 1)")
    if scale_mode not in (0, 1, 2):
        raise ValueError(f"scale_mode must be 0 (group), 1 (batch) or 2 (none), got {scale_mode}")
    if torch.isinf(rewards).any():  # one host sync: inf is an error, never a silently zeroed advantage
        raise ValueError("rewards must not hold +-inf (NaN marks an unscorable sample; inf is an error)")
    rewards = rewards.contiguous()
    num_groups = rewards.shape[0] // group_size
    acc_dtype = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    acc = tl.float64 if acc_dtype == torch.float64 else tl.float32
    adv = torch.empty_like(rewards)
    mean = rewards.new_empty(num_groups)
    std = rewards.new_empty(num_groups)
    zero_std = rewards.new_empty(num_groups, dtype=torch.bool)
    if num_groups == 0:
        return adv, mean, std, zero_std
    count, total, m2 = (rewards.new_empty(num_groups, dtype=acc_dtype) for _ in range(3))
    block = block_g or min(triton.next_power_of_2(group_size), MAX_BLOCK_G)
    args = (rewards, adv, mean, std, zero_std, count, total, m2)
    common = dict(SCALE_MODE=scale_mode, LEAVE_ONE_OUT=bool(leave_one_out), BLOCK_G=block, ACC=acc)
    if scale_mode != 1:
        _group_advantages_kernel[(num_groups,)](*args, count, group_size, float(eps), WRITE_STATS=True, WRITE_ADV=True, **common)
        return adv, mean, std, zero_std
    _group_advantages_kernel[(num_groups,)](*args, count, group_size, float(eps), WRITE_STATS=True, WRITE_ADV=False, **common)
    # Chan et al.: the batch's M2 from the groups' (count, mean, M2), on the device, no host sync
    n_all = count.sum()
    grand_mean = total.sum() / n_all.clamp(min=1)
    group_mean = total / count.clamp(min=1)
    m2_all = (m2 + count * (group_mean - grand_mean).square()).sum()
    bstd = torch.where(n_all >= 2, (m2_all / (n_all - 1).clamp(min=1)).sqrt(), torch.zeros_like(m2_all)).reshape(1)
    _group_advantages_kernel[(num_groups,)](*args, bstd, group_size, float(eps), WRITE_STATS=False, WRITE_ADV=True, **common)
    return adv, mean, std, zero_std
