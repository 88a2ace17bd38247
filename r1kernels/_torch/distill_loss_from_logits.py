"""r1kernels::logits_distill_loss in PyTorch: distill_rows' math over chunks of rows of the given
logits (the temporaries stay a chunk's size)."""

from __future__ import annotations

import torch

from r1kernels._torch.distill_rows import chunk_rows, rows_loss


def logits_distill_loss(student_logits, teacher_logits, labels, row_scale, beta, temperature, ignore_index, weight_hard,
                        weight_soft, compute_grad):
    acc = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
    N, V = student_logits.shape
    row_loss = torch.zeros(N, dtype=acc, device=student_logits.device)
    grad = torch.empty_like(student_logits) if compute_grad else student_logits.new_empty(0)
    R = chunk_rows(V, N)
    for start in range(0, N, R):
        rows = slice(start, min(start + R, N))
        lab = labels[rows] if labels is not None else None
        row_loss[rows], dz = rows_loss(student_logits[rows].to(acc), teacher_logits[rows].to(acc), lab, row_scale[rows], beta,
                                       temperature, ignore_index, weight_hard, weight_soft, compute_grad)
        if compute_grad:
            grad[rows] = dz.to(grad.dtype)
    loss = (row_loss * row_scale.to(acc)).sum().float()
    return loss, row_loss.float(), grad
