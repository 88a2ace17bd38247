"""The input half of a Llama-family decoder layer (Llama, Qwen2, Qwen3, Mistral) for a few tokens:
x = RMSNorm(h); q, k, v = the three projections of x (with their biases, Qwen2); for Qwen3 a
per-head RMSNorm of q and k; then the rotary embedding of q and k (rotate-half convention, cos and
sin as the model's rotary module gives them).

h [T, H] float32, weights as the modules hold them ([out, in]), cos and sin [T, head_dim]; returns
q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D]. The C++ CPU kernel runs the projections on
`skinny_linear` and the rest as plain loops in one call: a decode step's inputs to attention
without ~20 ATen dispatches per layer. Inference only (no autograd). Equal to
`r1kernels.reference.rmsnorm_qkv_rope` to float32 rounding.
"""

from __future__ import annotations

import math

import torch

from r1kernels._library import op


@torch.library.register_fake("r1kernels::rmsnorm_qkv_rope")
def _(h, norm_weight, eps, wq, bq, wk, bk, wv, bv, q_norm_weight, k_norm_weight, qk_eps, cos, sin, head_dim):
    T = h.shape[0]
    return (h.new_empty(T, wq.shape[0] // head_dim, head_dim), h.new_empty(T, wk.shape[0] // head_dim, head_dim),
            h.new_empty(T, wv.shape[0] // head_dim, head_dim))


def check_eps(name: str, eps, optional: bool = False) -> None:
    """The RMSNorm epsilon: a finite number >= 0 (a negative one can make the variance's root NaN)."""
    if eps is None and optional:
        return
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {eps!r}")


def _check(name: str, t, shape: tuple | None = None, optional: bool = False):
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dtype != torch.float32 or t.device.type != "cpu":
        raise ValueError(f"{name} must be float32 on the CPU, got {t.dtype} on {t.device}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name} must be {list(shape)}, got {list(t.shape)}")


def rmsnorm_qkv_rope(h: torch.Tensor, norm_weight: torch.Tensor, eps: float, wq: torch.Tensor, wk: torch.Tensor,
                     wv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int, *, bq=None, bk=None, bv=None,
                     q_norm_weight=None, k_norm_weight=None, qk_eps: float | None = None):
    check_eps("eps", eps)
    check_eps("qk_eps", qk_eps, optional=True)
    _check("h", h)
    if h.dim() != 2:
        raise ValueError(f"h must be [T, H], got {list(h.shape)}")
    T, H = h.shape
    if not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim must be an even positive int, got {head_dim!r}")
    _check("norm_weight", norm_weight, (H,))
    for name, w in (("wq", wq), ("wk", wk), ("wv", wv)):
        _check(name, w)
        if w.dim() != 2 or w.shape[1] != H or w.shape[0] % head_dim:
            raise ValueError(f"{name} must be [heads * head_dim, {H}], got {list(w.shape)}")
    if wv.shape != wk.shape:
        raise ValueError(f"wv must be shaped as wk {list(wk.shape)}, got {list(wv.shape)}")
    for name, b, w in (("bq", bq, wq), ("bk", bk, wk), ("bv", bv, wv)):
        _check(name, b, (w.shape[0],), optional=True)
    if (q_norm_weight is None) != (k_norm_weight is None):
        raise ValueError("q_norm_weight and k_norm_weight must be given together (Qwen3) or not at all")
    _check("q_norm_weight", q_norm_weight, (head_dim,), optional=True)
    _check("k_norm_weight", k_norm_weight, (head_dim,), optional=True)
    _check("cos", cos, (T, head_dim))
    _check("sin", sin, (T, head_dim))
    return op("rmsnorm_qkv_rope")(h, norm_weight, float(eps), wq, bq, wk, bk, wv, bv, q_norm_weight, k_norm_weight,
                                  float(eps if qk_eps is None else qk_eps), cos, sin, head_dim)
