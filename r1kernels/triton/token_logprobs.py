"""Triton launchers of r1kernels::fused_logprobs and fused_logprobs_backward (behind
r1kernels.token_logprobs): chunked head GEMMs around the row kernels of grpo_rows.py."""

from __future__ import annotations

import torch

from r1kernels.triton import grpo_rows as shared


def fused_logprobs(hidden, weight, bias, targets, temperature, *, chunk_size=None, block_v=None):
    """(logp, entropy, lse), each [N] float32, for hidden [N, H], weight [V, H]."""
    shared.check_rows(hidden, targets)
    hidden, weight, targets = *shared.gemm_operands(hidden, weight), targets.contiguous()
    N, V = hidden.shape[0], weight.shape[0]
    logp, entropy, lse = (torch.empty(N, dtype=torch.float32, device=hidden.device) for _ in range(3))
    bv = shared.block_v(V, block_v)
    rows = shared.chunk_rows(N, V, hidden.element_size(), chunk_size)
    for start in range(0, N, rows):
        end = min(N, start + rows)
        z = torch.mm(hidden[start:end], weight.t())  # [n, V]
        shared._grpo_row_kernel[(end - start,)](
            z, z.stride(0), z, z.stride(0), z if bias is None else bias, targets[start:end],
            logp, logp, logp, logp, logp,
            logp[start:end], entropy[start:end], lse[start:end], logp,
            V, 1.0 / temperature, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
            HAS_BIAS=bias is not None, HAS_OLD=False, HAS_BETA=False, HAS_DELTA=False, HAS_TIS=False, LOSS_KIND=0,
            COMPUTE_LOSS=False, COMPUTE_GRAD=False, BLOCK_V=bv, num_warps=shared.num_warps(bv),
        )
    return logp, entropy, lse


def fused_logprobs_backward(grad_logp, grad_entropy, hidden, weight, bias, targets, lse, entropy, temperature,
                            *, chunk_size=None, block_v=None):
    """(grad_hidden, grad_weight, grad_bias or an empty tensor) of fused_logprobs."""
    shared.check_rows(hidden, targets)
    dtypes = hidden.dtype, weight.dtype
    hidden, weight, targets = *shared.gemm_operands(hidden, weight), targets.contiguous()
    N, V = hidden.shape[0], weight.shape[0]
    grad_logp = grad_logp.float().contiguous()
    grad_entropy = None if grad_entropy is None else grad_entropy.float().contiguous()
    lse, entropy = lse.float().contiguous(), entropy.float().contiguous()
    grad_hidden, grad_w, grad_b = shared.head_grad_buffers(hidden, weight, bias)
    bv = shared.block_v(V, block_v)
    rows = shared.chunk_rows(N, V, hidden.element_size(), chunk_size)
    for start in range(0, N, rows):
        end = min(N, start + rows)
        h = hidden[start:end]
        z = torch.mm(h, weight.t())  # [n, V], overwritten by dz
        shared._logprobs_backward_row_kernel[(end - start,)](
            z, z.stride(0), z if bias is None else bias, targets[start:end], grad_logp[start:end],
            grad_logp if grad_entropy is None else grad_entropy[start:end], lse[start:end], entropy[start:end],
            V, 1.0 / temperature,
            HAS_BIAS=bias is not None, HAS_GRAD_ENTROPY=grad_entropy is not None, BLOCK_V=bv, num_warps=shared.num_warps(bv),
        )
        shared.accumulate_head_grads(z, h, weight, grad_hidden[start:end], grad_w, grad_b)
    return shared.finish_head_grads(grad_hidden, grad_w, grad_b, dtypes, bias)
