"""Logsumexp merge of two partial attentions over disjoint key sets (cascade / shared-prefix
attention, split-KV decode):

    lse = log(exp(lse_a) + exp(lse_b))
    out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b

out_* [N, H, D], lse_* [N, H] fp32 (natural log). A side with no keys has lse -inf, or +inf as vLLM
and FlashAttention write it: either way it has weight 0, and the other side comes back unchanged
(its out, its lse). Where both sides are empty the row's out is 0 and its lse -inf. Computed in
fp32, out in out_a's dtype. Inference only (no autograd).
"""

from __future__ import annotations

import torch

from r1kernels._library import op


@torch.library.register_fake("r1kernels::merge_attention_states")
def _(out_a, lse_a, out_b, lse_b):
    return torch.empty_like(out_a), torch.empty_like(lse_a)


def merge_attention_states(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor):
    """-> (out [N, H, D] in out_a's dtype, lse [N, H] fp32); rows empty on both sides (lse +-inf
    on each) give out 0 and lse -inf."""
    for name, t in (("out_a", out_a), ("out_b", out_b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3 or not t.is_floating_point():
            raise ValueError(f"{name} must be a 3-D floating tensor [N, H, D], got {getattr(t, 'shape', type(t))}")
    if out_b.shape != out_a.shape or out_b.dtype != out_a.dtype:
        raise ValueError("out_b must match out_a in shape and dtype, "
                         f"got {list(out_b.shape)} {out_b.dtype} and {list(out_a.shape)} {out_a.dtype}")
    for name, t in (("lse_a", lse_a), ("lse_b", lse_b)):
        if not isinstance(t, torch.Tensor) or t.shape != out_a.shape[:2] or t.dtype != torch.float32:
            raise ValueError(f"{name} must be a float32 tensor of shape {list(out_a.shape[:2])}, "
                             f"got {getattr(t, 'shape', type(t))} {getattr(t, 'dtype', '')}")
    for name, t in (("lse_a", lse_a), ("out_b", out_b), ("lse_b", lse_b)):
        if t.device != out_a.device:
            raise ValueError(f"{name} is on {t.device}, expected {out_a.device} (out_a's device)")
    return op("merge_attention_states")(out_a.contiguous(), lse_a.contiguous(), out_b.contiguous(), lse_b.contiguous())
