"""Triton kernel for r1kernels::merge_attention_states on CUDA tensors: the logsumexp merge of two
partial attentions over disjoint key sets,

    lse = log(exp(lse_a) + exp(lse_b)),  out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b,

in fp32, out in out_a's dtype. A side with no keys (lse -inf, or +inf as vLLM writes it) gets
weight 0; both empty give out 0 and lse -inf (the weights are taken relative to max(lse_a, lse_b), never exp(-inf - -inf)).

One program per ROWS (token, head) rows, a [ROWS, D] tile of each side: grid (cdiv(N * H, ROWS),).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# fp32 lanes per program: ROWS = MAX_TILE // D_P2 rows of a [N * H, D] view
MAX_TILE = 2048


@triton.jit
def _merge_attention_states_kernel(
    oa_ptr, la_ptr, ob_ptr, lb_ptr, out_ptr, lse_ptr,
    n_rows,
    D: tl.constexpr, D_P2: tl.constexpr, ROWS: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    d = tl.arange(0, D_P2)
    r_ok = r < n_rows
    a = tl.load(la_ptr + r, mask=r_ok, other=float("-inf"))
    b = tl.load(lb_ptr + r, mask=r_ok, other=float("-inf"))
    # an empty side's lse is -inf here and +inf in vLLM's convention: either way it has no weight
    a = tl.where(a == float("inf"), float("-inf"), a)
    b = tl.where(b == float("inf"), float("-inf"), b)
    mx = tl.maximum(a, b)
    finite = mx != float("-inf")
    base = tl.where(finite, mx, 0.0)  # keeps a - base from being -inf - -inf = nan
    wa = tl.where(a == float("-inf"), 0.0, tl.exp(a - base))
    wb = tl.where(b == float("-inf"), 0.0, tl.exp(b - base))
    tot = wa + wb
    has = tot > 0
    inv = tl.where(has, 1.0 / tl.where(has, tot, 1.0), 0.0)
    wa = wa * inv
    wb = wb * inv
    off = r[:, None] * D + d[None, :]  # [ROWS, D_P2]
    m = r_ok[:, None] & (d < D)[None, :]
    oa = tl.load(oa_ptr + off, mask=m, other=0.0).to(tl.float32)
    ob = tl.load(ob_ptr + off, mask=m, other=0.0).to(tl.float32)
    out = wa[:, None] * oa + wb[:, None] * ob
    tl.store(out_ptr + off, out.to(out_ptr.dtype.element_ty), mask=m)
    lse = tl.where(has, base + tl.log(tl.where(has, tot, 1.0)), float("-inf"))
    tl.store(lse_ptr + r, lse, mask=r_ok)


def merge_attention_states(out_a, lse_a, out_b, lse_b, *, rows=None):
    """Launcher with the schema's signature: (out [N, H, D] in out_a's dtype, lse [N, H] fp32).
    rows: (token, head) rows per program, a power of two."""
    oa, ob = out_a.contiguous(), out_b.contiguous()
    la, lb = lse_a.contiguous(), lse_b.contiguous()
    out = torch.empty_like(oa)
    lse = torch.empty_like(la)
    n_rows, d = oa.shape[0] * oa.shape[1], oa.shape[2]
    if n_rows == 0:
        return out, lse
    d_p2 = triton.next_power_of_2(max(d, 1))
    rows = rows or min(max(MAX_TILE // d_p2, 1), triton.next_power_of_2(n_rows))
    _merge_attention_states_kernel[(triton.cdiv(n_rows, rows),)](
        oa, la, ob, lb, out, lse,
        n_rows,
        D=d, D_P2=d_p2, ROWS=rows,
    )
    return out, lse
