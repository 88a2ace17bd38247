"""Triton launcher of r1kernels::logits_distill_loss (behind r1kernels.distill_loss_from_logits): the
row kernel of distill_rows.py over fp32 copies of chunks of both models' logits."""

from __future__ import annotations

import torch

from r1kernels.triton import distill_rows as rows_kernel


def logits_distill_loss(student_logits, teacher_logits, labels, row_scale, beta, temperature, ignore_index, weight_hard,
                        weight_soft, compute_grad, *, chunk_size=None, block_v=None):
    N, V = student_logits.shape
    labels = labels.contiguous() if labels is not None else None
    scale = row_scale.float().contiguous()
    row_loss = torch.empty(N, dtype=torch.float32, device=student_logits.device)
    grad = torch.empty_like(student_logits) if compute_grad else student_logits.new_empty(0)
    bv = rows_kernel.block_v(V, block_v)
    R = rows_kernel.chunk_rows(N, V, chunk_size)
    for start in range(0, N, R):
        end = min(N, start + R)
        zs = student_logits[start:end].float().clone()  # the row kernel writes the gradient over it
        zt = teacher_logits[start:end].float().clone()
        rows_kernel.launch_rows(zs, zt, labels[start:end] if labels is not None else None, scale[start:end],
                                row_loss[start:end], beta, temperature, ignore_index, weight_hard, weight_soft,
                                compute_grad, bv)
        if compute_grad:
            grad[start:end] = zs
    loss = (row_loss.double() * scale.double()).sum().float()
    return loss, row_loss, grad
