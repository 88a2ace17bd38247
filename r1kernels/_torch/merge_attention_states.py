"""r1kernels::merge_attention_states in PyTorch: weights relative to the larger lse, so neither
exp(lse) overflows nor an empty side (lse -inf, or +inf as vLLM writes it) makes a NaN."""

from __future__ import annotations

import torch


def merge_attention_states(out_a, lse_a, out_b, lse_b):
    a = torch.where(torch.isinf(lse_a), -torch.inf, lse_a.float())
    b = torch.where(torch.isinf(lse_b), -torch.inf, lse_b.float())
    top = torch.maximum(a, b)
    base = torch.where(torch.isfinite(top), top, 0.0)
    wa, wb = torch.exp(a - base), torch.exp(b - base)  # exp(-inf) = 0 for an empty side
    total = wa + wb
    some = total > 0
    inv = torch.where(some, 1.0 / torch.where(some, total, 1.0), 0.0)
    out = (wa * inv)[..., None] * out_a.float() + (wb * inv)[..., None] * out_b.float()
    lse = torch.where(some, base + torch.log(torch.where(some, total, 1.0)), -torch.inf)
    return out.to(out_a.dtype), lse
