"""The GRPO loss with sequence-level importance sampling (GSPO) from per-token log-probs, through
autograd. One weight per sequence, w = exp(masked mean of (logp - old)), needs every token's
log-prob before any gradient, so no fused kernel applies: the log-probs come from a kernel
(token_logprobs, or the log-softmax of given logits) and this plain PyTorch does the rest, with
the aggregation as the same per-token weights the token-level kernels take (`token_scale`).

Sequence-level truncated importance sampling (r1kernels._tis) takes this path too, with token- or
sequence-level ratios: its weight also needs the whole sequence first.
"""

from __future__ import annotations

import torch

from r1kernels._grpo_args import advantage_columns, token_scale


def sequence_level_loss(logp, advantages, mask, old_logprobs, ref_logprobs, beta, epsilon_low, epsilon_high, delta, loss_type,
                        num_items, sapo_temperature_pos, sapo_temperature_neg, importance_sampling="sequence", tis=None):
    """(loss, w [B, 1], or [B, T] with importance_sampling "token") for logp [B, T] (differentiable),
    the other tensors as grpo_loss takes them; `tis` the capped importance weight against the sampler
    ([B, 1] or [B, T], detached) or None."""
    keep = mask.bool()
    lp = logp.float()
    old = lp.detach() if old_logprobs is None else old_logprobs.float()
    # where, not a product with the mask: a masked token's old log-prob may be anything, NaN included
    log_ratio = torch.where(keep, lp - old, torch.zeros_like(lp))
    if importance_sampling == "token":
        w = torch.exp(log_ratio)
    else:
        w = torch.exp(log_ratio.sum(-1, keepdim=True) / keep.sum(-1, keepdim=True).clamp(min=1))  # [B, 1]
    A = advantage_columns(advantages)  # [B, 1] or, per token, [B, T]
    if loss_type == "cispo":
        per_token = -w.clamp(max=epsilon_high).detach() * A * lp
    elif loss_type == "sapo":
        tau = torch.where(A > 0, sapo_temperature_pos, sapo_temperature_neg).to(w.dtype)
        per_token = (-4 * A * torch.sigmoid(tau * (w - 1)) / tau).expand_as(lp)
    else:
        capped = w if delta is None else w.clamp(max=delta)
        per_token = -torch.minimum(capped * A, w.clamp(1 - epsilon_low, 1 + epsilon_high) * A).expand_as(lp)
    if tis is not None:
        per_token = per_token * tis
    if beta != 0.0:
        d = ref_logprobs.float() - lp
        per_token = per_token + beta * (d.exp() - d - 1)
    scale = token_scale(mask, loss_type, num_items)
    loss = torch.where(keep, per_token * scale, torch.zeros_like(scale)).sum()
    return loss, w
