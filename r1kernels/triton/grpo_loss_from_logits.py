"""Triton launcher of r1kernels::logits_grpo_loss (behind r1kernels.grpo_loss_from_logits): the
row kernel of grpo_rows.py on given logits, the gradient of the logits written in place of a copy."""

from __future__ import annotations

import torch

from r1kernels.triton import grpo_rows as shared


def logits_grpo_loss(logits, targets, token_scale, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta,
                     temperature, loss_kind, sapo_tpos, sapo_tneg, compute_grad, rollout_logp=None, tis_cap=None, *,
                     block_v=None):
    """(loss, logp, entropy, grad_logits or an empty tensor) for logits [N, V]; the logits are read,
    never written."""
    shared.check_rows(logits, targets)
    opts = shared.loss_options(old_logp, ref_logp, beta, delta, loss_kind, rollout_logp, tis_cap)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    targets = targets.contiguous()
    N, V = logits.shape
    logp, entropy, lse, contrib = (torch.empty(N, dtype=torch.float32, device=logits.device) for _ in range(4))
    scale, adv = shared.f32(token_scale, None), shared.f32(token_adv, None)
    old, ref = shared.f32(old_logp, logp), shared.f32(ref_logp if opts["HAS_BETA"] else None, logp)
    rollout = shared.f32(rollout_logp, logp)
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format) if compute_grad else logits.new_empty(0)
    dz = grad if compute_grad else logits  # not written unless compute_grad
    bv = shared.block_v(V, block_v)
    if N > 0:
        shared._grpo_row_kernel[(N,)](
            logits, logits.stride(0), dz, dz.stride(0),
            logits, targets, scale, adv, old, ref, rollout, logp, entropy, lse, contrib,
            V, 1.0 / temperature, float(beta), float(eps_low), float(eps_high), float(delta or 0.0),
            float(sapo_tpos), float(sapo_tneg), float(tis_cap or 0.0),
            HAS_BIAS=False, COMPUTE_LOSS=True, COMPUTE_GRAD=bool(compute_grad), BLOCK_V=bv,
            num_warps=shared.num_warps(bv), **opts,
        )
    return contrib.sum(), logp, entropy, grad
