"""The per-row math of the distillation loss ops in PyTorch, on a chunk of full rows of both
models' logits: each row's loss and the gradient of the weighted loss with respect to the student's
logits. Shared by r1kernels::fused_distill_loss and r1kernels::logits_distill_loss.

With s = log_softmax(zs / T), t = log_softmax(zt / T), p = exp(s), q = exp(t), the soft loss and its
gradient with respect to zs (TRL's generalized_jsd_loss; T the temperature):
  beta 0   KL(q || p) = sum q (t - s)                      d/dzs = (p - q) / T
  beta 1   KL(p || q) = sum p (s - t)                      d/dzs = p (s - t - KL) / T
  else     m = log((1 - beta) p + beta q)
           beta KL(q || m) + (1 - beta) KL(p || m)         d/dzs = (1 - beta) p (s - m - KL(p || m)) / T
(the two KL(. || m) terms' derivatives through m cancel: d/ds_v of the loss is (1 - beta) p_v (s_v - m_v)).
The hard loss is the student's cross-entropy on the label at temperature 1: d/dzs = softmax(zs) - onehot.
"""

from __future__ import annotations

import math
import os

import torch


def chunk_rows(V: int, n_rows: int) -> int:
    """Rows per chunk: each [rows, V] temporary stays within the byte budget (64 MiB;
    R1_DISTILL_CHUNK_BYTES overrides it, read per call so tests can force small chunks)."""
    budget = max(int(os.environ.get("R1_DISTILL_CHUNK_BYTES", 64 << 20)), 1)
    return max(min(budget // (max(V, 1) * 4), n_rows), 1)


def soft_loss_rows(zs, zt, beta, temperature, compute_grad):
    """(loss [r], d loss / d zs [r, V] or None) of the soft loss on rows of logits."""
    s = torch.log_softmax(zs / temperature, dim=-1)
    t = torch.log_softmax(zt / temperature, dim=-1)
    p = s.exp()
    if beta == 0:
        q = t.exp()
        loss = (q * (t - s)).sum(-1)
        grad = (p - q) if compute_grad else None
    elif beta == 1:
        d = s - t
        loss = (p * d).sum(-1)
        grad = p * (d - loss[:, None]) if compute_grad else None
    else:
        m = torch.logaddexp(s + math.log1p(-beta), t + math.log(beta))
        k_student = (p * (s - m)).sum(-1)
        k_teacher = (t.exp() * (t - m)).sum(-1)
        loss = beta * k_teacher + (1 - beta) * k_student
        grad = (1 - beta) * p * (s - m - k_student[:, None]) if compute_grad else None
    return loss, (grad / temperature if compute_grad else None)


def rows_loss(zs, zt, labels, row_scale, beta, temperature, ignore_index, weight_hard, weight_soft, compute_grad):
    """(row_loss [r], d sum(row_scale * row_loss) / d zs [r, V] or None); rows whose label is
    ignore_index have loss 0 and gradient 0."""
    soft, g_soft = soft_loss_rows(zs, zt, beta, temperature, compute_grad)
    loss = weight_soft * soft
    grad = weight_soft * g_soft if compute_grad else None
    counted = None if labels is None else labels != ignore_index
    if weight_hard != 0:
        logp = torch.log_softmax(zs, dim=-1)
        safe = torch.where(counted, labels, torch.zeros_like(labels))[:, None]
        loss = loss - weight_hard * logp.gather(-1, safe).squeeze(-1)
        if compute_grad:
            g_hard = logp.exp()
            g_hard.scatter_add_(-1, safe, torch.full_like(safe, -1, dtype=g_hard.dtype))
            grad = grad + weight_hard * g_hard
    if counted is not None:
        loss = torch.where(counted, loss, torch.zeros_like(loss))
    if compute_grad:
        scale = row_scale.to(grad.dtype) if counted is None else torch.where(counted, row_scale.to(grad.dtype), 0)
        grad = grad * scale[:, None]
    return loss, grad
