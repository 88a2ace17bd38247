"""r1kernels::rmsnorm_qkv_rope in PyTorch: RMSNorm, the q/k/v projections, (Qwen3) per-head RMSNorm
of q and k, the rotary embedding (rotate-half convention). Outputs contiguous, as the C++ kernel's."""

from __future__ import annotations

import torch

from r1kernels._torch.decoder_layer import linear, rms_norm


def _rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[:, None, :] + torch.cat((-x2, x1), dim=-1) * sin[:, None, :]


def rmsnorm_qkv_rope(h, norm_weight, eps, wq, bq, wk, bk, wv, bv, q_norm_weight, k_norm_weight, qk_eps, cos, sin, head_dim):
    T = h.shape[0]
    x = rms_norm(h, norm_weight, eps)
    q = linear(x, wq, bq).reshape(T, -1, head_dim)
    k = linear(x, wk, bk).reshape(T, -1, head_dim)
    v = linear(x, wv, bv).reshape(T, -1, head_dim)
    if q_norm_weight is not None:
        q, k = rms_norm(q, q_norm_weight, qk_eps), rms_norm(k, k_norm_weight, qk_eps)
    return _rope(q, cos, sin).contiguous(), _rope(k, cos, sin).contiguous(), v.contiguous()
