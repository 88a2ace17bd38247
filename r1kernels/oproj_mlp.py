"""The output half of a Llama-family decoder layer for a few tokens: the attention's output
projection and residual, then RMSNorm and the SwiGLU MLP with its residual:

    h1 = h + attn Wo^T + bo;  x = RMSNorm(h1);  out = h1 + (silu(x Wg^T + bg) * (x Wu^T + bu)) Wd^T + bd

h [T, H] and attn [T, Hq * D] float32, weights as the modules hold them ([out, in]); returns
[T, H]. The C++ CPU kernel runs the projections on `skinny_linear` and the rest as plain loops in
one call. Inference only (no autograd). Equal to `r1kernels.reference.oproj_mlp` to float32
rounding.
"""

from __future__ import annotations

import torch

from r1kernels._library import op
from r1kernels.rmsnorm_qkv_rope import _check, check_eps


@torch.library.register_fake("r1kernels::oproj_mlp")
def _(h, attn, wo, bo, norm_weight, eps, w_gate, b_gate, w_up, b_up, w_down, b_down):
    return torch.empty_like(h)


def oproj_mlp(h: torch.Tensor, attn: torch.Tensor, wo: torch.Tensor, norm_weight: torch.Tensor, eps: float,
              w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, *, bo=None, b_gate=None, b_up=None, b_down=None):
    check_eps("eps", eps)
    _check("h", h)
    _check("attn", attn)
    if h.dim() != 2 or attn.dim() != 2 or attn.shape[0] != h.shape[0]:
        raise ValueError(f"h must be [T, H] and attn [T, Hq * D] with the same T, got {list(h.shape)} and {list(attn.shape)}")
    T, H = h.shape
    _check("wo", wo, (H, attn.shape[1]))
    _check("bo", bo, (H,), optional=True)
    _check("norm_weight", norm_weight, (H,))
    _check("w_gate", w_gate)
    if w_gate.dim() != 2 or w_gate.shape[1] != H:
        raise ValueError(f"w_gate must be [intermediate, {H}], got {list(w_gate.shape)}")
    inter = w_gate.shape[0]
    _check("w_up", w_up, (inter, H))
    _check("w_down", w_down, (H, inter))
    _check("b_gate", b_gate, (inter,), optional=True)
    _check("b_up", b_up, (inter,), optional=True)
    _check("b_down", b_down, (H,), optional=True)
    return op("oproj_mlp")(h, attn, wo, bo, norm_weight, float(eps), w_gate, b_gate, w_up, b_up, w_down, b_down)
