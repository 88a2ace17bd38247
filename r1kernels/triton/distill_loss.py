"""Triton launcher of r1kernels::fused_distill_loss (behind r1kernels.distill_loss): the loss and the
student's head gradients in the forward, four GEMMs around the row kernel of distill_rows.py."""

from __future__ import annotations

import torch

from r1kernels.triton import distill_rows as rows_kernel
from r1kernels.triton import grpo_rows as shared


def _logits(h, w, b):
    z = torch.addmm(b.to(h.dtype), h, w.t()) if b is not None else torch.mm(h, w.t())
    return z.float().contiguous()


def fused_distill_loss(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias, labels,
                       row_scale, beta, temperature, ignore_index, weight_hard, weight_soft, compute_grad,
                       *, chunk_size=None, block_v=None):
    dtypes = student_hidden.dtype, student_weight.dtype
    sh, sw = shared.gemm_operands(student_hidden, student_weight)
    th, tw = shared.gemm_operands(teacher_hidden, teacher_weight)
    N, V = sh.shape[0], sw.shape[0]
    labels = labels.contiguous() if labels is not None else None
    scale = row_scale.float().contiguous()
    row_loss = torch.empty(N, dtype=torch.float32, device=sh.device)
    if compute_grad:
        grad_hidden, grad_w, grad_b = shared.head_grad_buffers(sh, sw, student_bias)
    bv = rows_kernel.block_v(V, block_v)
    R = rows_kernel.chunk_rows(N, V, chunk_size)
    for start in range(0, N, R):
        end = min(N, start + R)
        h = sh[start:end]
        zs = _logits(h, sw, student_bias)  # [n, V] fp32, overwritten by the gradient when compute_grad
        zt = _logits(th[start:end], tw, teacher_bias)
        rows_kernel.launch_rows(zs, zt, labels[start:end] if labels is not None else None, scale[start:end],
                                row_loss[start:end], beta, temperature, ignore_index, weight_hard, weight_soft,
                                compute_grad, bv)
        if compute_grad:
            shared.accumulate_head_grads(zs.to(sw.dtype), h, sw, grad_hidden[start:end], grad_w, grad_b)
    loss = (row_loss.double() * scale.double()).sum().float()  # no atomics: deterministic
    if not compute_grad:
        return loss, row_loss, *(sh.new_empty(0, dtype=dtypes[0]) for _ in range(3))
    return (loss, row_loss, *shared.finish_head_grads(grad_hidden, grad_w, grad_b, dtypes, student_bias))
