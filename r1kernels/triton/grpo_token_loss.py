"""Triton launcher of r1kernels::grpo_token_loss: the per-token GRPO loss and its gradient from
log-probs (grpo_rows.py's token kernel)."""

from __future__ import annotations

import torch
import triton

from r1kernels.triton import grpo_rows as shared


def grpo_token_loss(logp, token_scale, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta, loss_kind,
                    sapo_tpos, sapo_tneg, rollout_logp=None, tis_cap=None, *, block=1024):
    """(loss, grad [N] float32) of the per-token loss given log-probs."""
    opts = shared.loss_options(old_logp, ref_logp, beta, delta, loss_kind, rollout_logp, tis_cap)
    lp = shared.f32(logp, None)
    N = lp.shape[0]
    scale, adv = shared.f32(token_scale, None), shared.f32(token_adv, None)
    old, ref = shared.f32(old_logp, lp), shared.f32(ref_logp if opts["HAS_BETA"] else None, lp)
    rollout = shared.f32(rollout_logp, lp)
    contrib, grad = torch.empty_like(lp), torch.empty_like(lp)
    if N > 0:
        shared._token_loss_kernel[(triton.cdiv(N, block),)](
            lp, scale, adv, old, ref, rollout, contrib, grad,
            N, float(beta), float(eps_low), float(eps_high), float(delta or 0.0), float(sapo_tpos), float(sapo_tneg),
            float(tis_cap or 0.0),
            BLOCK=block, **opts,
        )
    return contrib.sum(), grad
