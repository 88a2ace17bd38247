"""Plain-PyTorch versions of every r1kernels op: the oracle the tests compare the fast paths with.

Nothing here is chunked or fused: the [tokens, vocab] logits exist in full. Keep these short and
obviously right; speed lives in `csrc/` and `r1kernels/triton/`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


class GroupStats(NamedTuple):
    mean: torch.Tensor  # [num_groups] mean of the scorable rewards (NaN rewards left out)
    std: torch.Tensor  # [num_groups] std with Bessel's correction; 0 with fewer than 2 scorable
    zero_std: torch.Tensor  # [num_groups] bool: all scorable rewards equal (or none): advantage 0


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale: str = "group",
    leave_one_out: bool = False,
    eps: float = 1e-4,
) -> tuple[torch.Tensor, GroupStats]:
    r = rewards.double().view(-1, group_size)  # [Gn, G]
    valid = ~torch.isnan(r)
    rz = torch.where(valid, r, torch.zeros_like(r))
    n = valid.sum(-1, keepdim=True).double()  # [Gn, 1]
    total = rz.sum(-1, keepdim=True)
    mean = total / n.clamp(min=1)
    dev = torch.where(valid, r - mean, torch.zeros_like(r))
    std = (dev.pow(2).sum(-1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
    std = torch.where(n >= 2, std, torch.zeros_like(std))
    rmax = torch.where(valid, r, torch.full_like(r, -math.inf)).amax(-1, keepdim=True)
    rmin = torch.where(valid, r, torch.full_like(r, math.inf)).amin(-1, keepdim=True)
    zero_std = (n == 0) | (rmax == rmin)

    if leave_one_out:
        baseline = (total - rz) / (n - 1).clamp(min=1)
        centred = torch.where(n >= 2, r - baseline, torch.zeros_like(r))
    else:
        centred = r - mean

    if scale == "group":
        adv = centred / (std + eps)
    elif scale == "batch":
        flat = r[valid]
        bstd = flat.std() if flat.numel() >= 2 else torch.zeros((), dtype=r.dtype)
        adv = centred / (bstd + eps)
    elif scale == "none":
        adv = centred
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    adv = torch.where(valid & ~zero_std, adv, torch.zeros_like(adv))
    stats = GroupStats(mean.squeeze(-1).to(rewards.dtype), std.squeeze(-1).to(rewards.dtype), zero_std.squeeze(-1))
    return adv.reshape(-1).to(rewards.dtype), stats


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
):
    """log_softmax((hidden @ weight.T + bias) / temperature)[targets], optionally with entropy."""
    logits = hidden.float() @ weight.float().T  # [..., V]
    if bias is not None:
        logits = logits + bias.float()
    logits = logits / temperature
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if not return_entropy:
        return logp
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def grpo_per_token_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    beta: float,
    epsilon_low: float,
    epsilon_high: float,
    delta: float | None,
    loss_type: str,
    importance_sampling: str,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
):
    """Per-token loss [B, T] and the importance weight w [B, T] (or [B, 1]) as TRL's GRPOTrainer
    computes them."""
    maskf = mask.to(logp.dtype)
    old = logp.detach() if old_logprobs is None else old_logprobs.to(logp.dtype)
    log_ratio = logp - old
    if importance_sampling == "token":
        log_w = log_ratio
    elif importance_sampling == "sequence":
        log_w = ((log_ratio * maskf).sum(-1) / maskf.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    else:
        raise ValueError(f"importance_sampling must be 'token' or 'sequence', got {importance_sampling!r}")
    w = torch.exp(log_w)
    adv = advantages.to(logp.dtype).unsqueeze(-1)
    if loss_type == "cispo":
        # TRL: the cap is epsilon_high itself (an absolute bound on the ratio, TRL suggests 5.0).
        per_token = -torch.clamp(w, max=epsilon_high).detach() * adv * logp
    elif loss_type == "sapo":
        tau = torch.where(adv > 0, torch.full_like(adv, sapo_temperature_pos), torch.full_like(adv, sapo_temperature_neg))
        per_token = -(torch.sigmoid(tau * (w - 1)) * 4 / tau) * adv
    else:
        clipped = torch.clamp(w, 1 - epsilon_low, 1 + epsilon_high)
        w1 = torch.clamp(w, max=delta) if delta is not None else w
        per_token = -torch.min(w1 * adv, clipped * adv)
    per_token = per_token.expand_as(logp)
    if beta != 0.0:
        d = ref_logprobs.to(logp.dtype) - logp
        per_token = per_token + beta * (torch.exp(d) - d - 1)
    return per_token, w


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, num_items=None) -> torch.Tensor:
    """The aggregations TRL names: grpo/sapo, bnpo, dr_grpo, dapo/cispo."""
    maskf = mask.to(per_token.dtype)
    B, T = per_token.shape
    if loss_type in ("grpo", "sapo"):
        return ((per_token * maskf).sum(-1) / maskf.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (per_token * maskf).sum() / maskf.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return (per_token * maskf).sum() / (B * T)
    if loss_type in ("dapo", "cispo"):
        denom = maskf.sum() if num_items is None else torch.as_tensor(num_items, dtype=per_token.dtype)
        return (per_token * maskf).sum() / denom.clamp(min=1.0)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def grpo_stats(logp, entropy, w, advantages, mask, ref_logprobs, beta, epsilon_low, epsilon_high):
    """Detached statistics: mean KL, clip fractions (low, high, region), mean entropy; masked means
    over the batch's tokens."""
    with torch.no_grad():
        maskf = mask.to(torch.float32)
        count = maskf.sum().clamp(min=1.0)

        def mmean(x):
            return (x.float().expand_as(maskf) * maskf).sum() / count

        adv = advantages.float().unsqueeze(-1)
        low = (w < 1 - epsilon_low) & (adv < 0)
        high = (w > 1 + epsilon_high) & (adv > 0)
        if ref_logprobs is not None and beta != 0.0:
            d = ref_logprobs.float() - logp.float()
            kl = mmean(torch.exp(d) - d - 1)
        else:
            kl = torch.zeros((), dtype=torch.float32, device=logp.device)
        return {
            "kl": kl,
            "clip_low": mmean(low),
            "clip_high": mmean(high),
            "clip_region": mmean(low | high),
            "entropy": mmean(entropy),
        }


def grpo_loss_from_logits(
    logits,
    targets,
    advantages,
    mask=None,
    old_logprobs=None,
    ref_logprobs=None,
    beta=0.0,
    epsilon_low=0.2,
    epsilon_high=0.2,
    delta=None,
    temperature=1.0,
    loss_type="grpo",
    importance_sampling="token",
    num_items=None,
    sapo_temperature_pos=1.0,
    sapo_temperature_neg=1.05,
):
    logp_all = (logits.float() / temperature).log_softmax(-1)  # [B, T, V]
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).detach()
    if mask is None:
        mask = torch.ones_like(targets, dtype=torch.bool)
    per_token, w = grpo_per_token_loss(
        logp, advantages, mask, old_logprobs, ref_logprobs, beta, epsilon_low, epsilon_high, delta,
        loss_type, importance_sampling, sapo_temperature_pos, sapo_temperature_neg,
    )
    loss = aggregate_loss(per_token, mask, loss_type, num_items)
    return loss, grpo_stats(logp, entropy, w, advantages, mask, ref_logprobs, beta, epsilon_low, epsilon_high)


def grpo_loss(
    hidden,
    weight,
    targets,
    advantages,
    mask=None,
    old_logprobs=None,
    ref_logprobs=None,
    bias=None,
    **kwargs,
):
    logits = hidden.float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    return grpo_loss_from_logits(logits, targets, advantages, mask, old_logprobs, ref_logprobs, **kwargs)
