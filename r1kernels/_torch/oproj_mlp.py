"""r1kernels::oproj_mlp in PyTorch: h1 = h + attn Wo^T + bo, then h1 + down(silu(gate(x)) * up(x))
with x = RMSNorm(h1)."""

from __future__ import annotations

import torch

from r1kernels._torch.decoder_layer import linear, rms_norm


def oproj_mlp(h, attn, wo, bo, norm_weight, eps, w_gate, b_gate, w_up, b_up, w_down, b_down):
    h1 = h + linear(attn, wo, bo)
    x = rms_norm(h1, norm_weight, eps)
    return h1 + linear(torch.nn.functional.silu(linear(x, w_gate, b_gate)) * linear(x, w_up, b_up), w_down, b_down)
