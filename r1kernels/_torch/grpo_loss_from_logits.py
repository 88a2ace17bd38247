"""r1kernels::logits_grpo_loss in PyTorch: log-softmax, the GRPO loss and its gradient in the
logits, from logits [N, V]."""

from __future__ import annotations

import torch

from r1kernels._torch.grpo_token_loss import grpo_token_loss


def logits_grpo_loss(logits, targets, token_scale, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta, temperature,
                     loss_kind, sapo_tpos, sapo_tneg, compute_grad, rollout_logp=None, tis_cap=None):
    z = logits.float() / temperature
    logp_all = torch.log_softmax(z, dim=-1)
    p = logp_all.exp()
    logp = torch.gather(logp_all, -1, targets[:, None]).squeeze(-1)
    entropy = -(p * logp_all).sum(-1)
    loss, dlogp = grpo_token_loss(logp, token_scale, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta, loss_kind,
                                  sapo_tpos, sapo_tneg, rollout_logp, tis_cap)
    # the kernels skip rows whose token_scale is 0 (no work): their logp and entropy are 0
    active = token_scale != 0
    logp, entropy = torch.where(active, logp, 0.0), torch.where(active, entropy, 0.0)
    if not compute_grad:
        return loss, logp, entropy, logits.new_empty(0)
    dz = -p * dlogp[:, None]  # d logp[target] / dz = onehot(target) - p
    dz.scatter_add_(-1, targets[:, None], dlogp[:, None])
    return loss, logp, entropy, (dz / temperature).to(logits.dtype)
