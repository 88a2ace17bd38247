"""r1kernels::fused_distill_loss in PyTorch: chunks of rows through both LM heads, the row math of
distill_rows, and the student's gradient GEMMs per chunk, so neither model's [N, V] logits exist in
full (each chunk holds its rows' full vocabulary)."""

from __future__ import annotations

import torch

from r1kernels._torch.distill_rows import chunk_rows, rows_loss


def _logits(h, w, b):
    return torch.addmm(b, h, w.T) if b is not None else h @ w.T


def fused_distill_loss(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias, labels,
                       row_scale, beta, temperature, ignore_index, weight_hard, weight_soft, compute_grad):
    # float64 inputs stay float64 (the tests' exact path); everything else accumulates in float32
    acc = torch.float64 if student_hidden.dtype == torch.float64 else torch.float32
    N, V = student_hidden.shape[0], student_weight.shape[0]
    ws, wt = student_weight.to(acc), teacher_weight.to(acc)
    bs = student_bias.to(acc) if student_bias is not None else None
    bt = teacher_bias.to(acc) if teacher_bias is not None else None
    row_loss = torch.zeros(N, dtype=acc, device=student_hidden.device)
    if compute_grad:
        gh = torch.zeros(student_hidden.shape, dtype=acc, device=student_hidden.device)
        gw = torch.zeros_like(ws)
        gb = torch.zeros_like(bs) if bs is not None else None
    R = chunk_rows(V, N)
    for start in range(0, N, R):
        rows = slice(start, min(start + R, N))
        h = student_hidden[rows].to(acc)
        zs = _logits(h, ws, bs)
        zt = _logits(teacher_hidden[rows].to(acc), wt, bt)
        lab = labels[rows] if labels is not None else None
        row_loss[rows], dz = rows_loss(zs, zt, lab, row_scale[rows], beta, temperature, ignore_index, weight_hard, weight_soft,
                                       compute_grad)
        if compute_grad:
            gh[rows] = dz @ ws
            gw.addmm_(dz.T, h)
            if gb is not None:
                gb += dz.sum(0)
    loss = (row_loss * row_scale.to(acc)).sum().float()
    if not compute_grad:
        e = [student_hidden.new_empty(0) for _ in range(3)]  # distinct: outputs must not alias
        return loss, row_loss.float(), *e
    return (loss, row_loss.float(), gh.to(student_hidden.dtype), gw.to(student_weight.dtype),
            gb.to(student_bias.dtype) if gb is not None else student_hidden.new_empty(0))
