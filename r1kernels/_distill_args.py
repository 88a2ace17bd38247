"""Argument checks and the per-position reduction weights shared by distill_loss and
distill_loss_from_logits.

Every reduction is a weighted sum of the per-position losses, so the kernels see `row_scale` [N]
(0 at ignored positions): "mean" 1 / (counted positions, at least 1), "sum" and "none" 1.
"""

from __future__ import annotations

import math

import torch

REDUCTIONS = ("mean", "sum", "none")


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_options(labels, beta, temperature, ignore_index, weight_hard_loss, weight_soft_loss, reduction):
    if not (_finite_number(beta) and 0 <= beta <= 1):
        raise ValueError(f"beta must be a number in [0, 1] (0: forward KL, 1: reverse KL), got {beta!r}")
    if not (_finite_number(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    for name, v in (("weight_hard_loss", weight_hard_loss), ("weight_soft_loss", weight_soft_loss)):
        if not _finite_number(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if labels is None and weight_hard_loss != 0:
        raise ValueError(f"labels=None needs weight_hard_loss == 0 (the hard loss is the cross-entropy on labels), "
                         f"got weight_hard_loss={weight_hard_loss!r}")


def check_labels(labels, lead_shape, V, ignore_index, device):
    """labels: int64 of the positions' shape, each in [0, V) or ignore_index."""
    if labels is None:
        return
    if tuple(labels.shape) != tuple(lead_shape):
        raise ValueError(f"labels must have the positions' shape {list(lead_shape)}, got {list(labels.shape)}")
    if labels.dtype != torch.int64:
        raise ValueError(f"labels must be int64, got {labels.dtype}")
    if labels.device != device:
        raise ValueError(f"labels is on {labels.device}, expected {device} (the student's device)")
    if torch.compiler.is_compiling():  # data-dependent: not checkable while tracing
        return
    counted = labels[labels != ignore_index]
    if counted.numel() and (int(counted.min()) < 0 or int(counted.max()) >= V):
        raise ValueError(f"labels must lie in [0, {V}) (the vocabulary) or equal ignore_index={ignore_index}, "
                         f"got values in [{int(counted.min())}, {int(counted.max())}]")


def row_scale(labels_flat, n, ignore_index, reduction, device):
    """[N] float32 weights whose dot product with the per-position losses is the reduced loss."""
    if labels_flat is None:
        counted = torch.ones(n, dtype=torch.float32, device=device)
    else:
        counted = (labels_flat != ignore_index).to(torch.float32)
    if reduction == "mean":
        return counted / counted.sum().clamp(min=1.0)
    return counted
