"""Triton launcher of r1kernels::fused_grpo_loss (behind r1kernels.grpo_loss): loss and head
gradients in the forward, three GEMMs around the row kernel of grpo_rows.py."""

from __future__ import annotations

import torch

from r1kernels.triton import grpo_rows as shared


def fused_grpo_loss(hidden, weight, bias, targets, token_scale, token_adv, old_logp, ref_logp, beta, eps_low,
                    eps_high, delta, temperature, loss_kind, sapo_tpos, sapo_tneg, compute_grad, rollout_logp=None,
                    tis_cap=None, *, chunk_size=None, block_v=None):
    """(loss, logp, entropy, grad_hidden, grad_weight, grad_bias) in one chunked pass; the gradients
    are empty tensors unless compute_grad (and grad_bias also when bias is None)."""
    shared.check_rows(hidden, targets)
    opts = shared.loss_options(old_logp, ref_logp, beta, delta, loss_kind, rollout_logp, tis_cap)
    dtypes = hidden.dtype, weight.dtype
    hidden, weight, targets = *shared.gemm_operands(hidden, weight), targets.contiguous()
    N, V = hidden.shape[0], weight.shape[0]
    logp, entropy, lse, contrib = (torch.empty(N, dtype=torch.float32, device=hidden.device) for _ in range(4))
    scale, adv = shared.f32(token_scale, None), shared.f32(token_adv, None)
    old, ref = shared.f32(old_logp, logp), shared.f32(ref_logp if opts["HAS_BETA"] else None, logp)
    rollout = shared.f32(rollout_logp, logp)
    if compute_grad:
        grad_hidden, grad_w, grad_b = shared.head_grad_buffers(hidden, weight, bias)
    bv = shared.block_v(V, block_v)
    rows = shared.chunk_rows(N, V, hidden.element_size(), chunk_size)
    for start in range(0, N, rows):
        end = min(N, start + rows)
        h = hidden[start:end]
        z = torch.mm(h, weight.t())  # [n, V], overwritten by dz when compute_grad
        shared._grpo_row_kernel[(end - start,)](
            z, z.stride(0), z, z.stride(0), z if bias is None else bias, targets[start:end],
            scale[start:end], adv[start:end], old if old is logp else old[start:end], ref if ref is logp else ref[start:end],
            rollout if rollout is logp else rollout[start:end],
            logp[start:end], entropy[start:end], lse[start:end], contrib[start:end],
            V, 1.0 / temperature, float(beta), float(eps_low), float(eps_high), float(delta or 0.0),
            float(sapo_tpos), float(sapo_tneg), float(tis_cap or 0.0),
            HAS_BIAS=bias is not None, COMPUTE_LOSS=True, COMPUTE_GRAD=bool(compute_grad), BLOCK_V=bv,
            num_warps=shared.num_warps(bv), **opts,
        )
        if compute_grad:
            shared.accumulate_head_grads(z, h, weight, grad_hidden[start:end], grad_w, grad_b)
    loss = contrib.sum()  # a separate sum keeps the reduction deterministic (no atomics)
    if not compute_grad:
        e = hidden.new_empty(0, dtype=dtypes[0])
        return loss, logp, entropy, e, e, e
    return (loss, logp, entropy, *shared.finish_head_grads(grad_hidden, grad_w, grad_b, dtypes, bias))
