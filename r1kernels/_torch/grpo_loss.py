"""r1kernels::fused_grpo_loss in PyTorch: the LM head's full logits, then logits_grpo_loss's math,
then the two gradient GEMMs."""

from __future__ import annotations

from r1kernels._torch.grpo_loss_from_logits import logits_grpo_loss
from r1kernels._torch.token_logprobs import head_logits


def fused_grpo_loss(hidden, weight, bias, targets, token_scale, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta,
                    temperature, loss_kind, sapo_tpos, sapo_tneg, compute_grad, rollout_logp=None, tis_cap=None):
    z = head_logits(hidden, weight, bias, 1.0)
    loss, logp, entropy, dz = logits_grpo_loss(z, targets, token_scale, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta,
                                               temperature, loss_kind, sapo_tpos, sapo_tneg, compute_grad, rollout_logp, tis_cap)
    if not compute_grad:
        return loss, logp, entropy, hidden.new_empty(0), hidden.new_empty(0), hidden.new_empty(0)
    dz = dz.float()
    grad_hidden = (dz @ weight.float()).to(hidden.dtype)
    grad_weight = (dz.T @ hidden.float()).to(weight.dtype)
    grad_bias = dz.sum(0).to(bias.dtype) if bias is not None else hidden.new_empty(0)
    return loss, logp, entropy, grad_hidden, grad_weight, grad_bias
