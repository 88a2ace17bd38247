"""The Triton row kernel and launcher helpers of the distillation loss ops (launchers:
distill_loss.py, fused_distill_loss; distill_loss_from_logits.py, logits_distill_loss).

One program per row of both models' logits (formulas: r1kernels._torch.distill_rows). Three passes
over the row's BLOCK_V-wide vocabulary blocks:
    1. online logsumexps of a / T and b / T (and of a, for the hard loss, where T != 1);
    2. the soft loss's sums, and with COMPUTE_GRAD the row-local part of the student's gradient
       A (written over a's row) and p (written over b's row);
    3. a <- A - K p, K the row's KL sum that A's full gradient needs (beta != 0 only).
The launchers compute the logits chunk by chunk with torch.mm and, for the fused op, the student's
gradient GEMMs after each chunk, as grpo_rows.py does for the GRPO loss.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

MAX_BLOCK_V = 4096
CHUNK_BYTES = 192 << 20


@triton.jit
def _online_lse(x, m, s):
    """One block of an online logsumexp: x the block (masked lanes -inf), (m, s) the running state."""
    m_new = tl.maximum(m, tl.max(x, 0))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    s = s * tl.exp(m - m_ref) + tl.sum(tl.exp(x - m_ref), 0)
    return m_new, s


@triton.jit
def _distill_row_kernel(
    zs_ptr, zs_stride, zt_ptr, zt_stride, labels_ptr, scale_ptr, loss_ptr,
    V, inv_temp, beta, weight_hard, weight_soft, ignore_index,
    MODE: tl.constexpr, HAS_LABELS: tl.constexpr, HARD: tl.constexpr, HARD1: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """MODE 0: beta 0 (forward KL), 1: beta 1 (reverse KL), 2: the mixture. HARD: a hard loss term;
    HARD1: its temperature-1 softmax differs from p (T != 1)."""
    row = tl.program_id(0).to(tl.int64)
    a_row = zs_ptr + row * zs_stride
    b_row = zt_ptr + row * zt_stride
    scale = tl.load(scale_ptr + row).to(tl.float32)
    if HAS_LABELS:
        label = tl.load(labels_ptr + row)
        counted = label != ignore_index
        label = tl.where(counted, label, 0)
    else:
        label = 0
        counted = scale == scale  # every row counts (a tensor, for tl.where below)
    a_label = tl.load(a_row + label).to(tl.float32)  # read before the row is overwritten

    ma = float("-inf")
    sa = 0.0
    mb = float("-inf")
    sb = 0.0
    m1 = float("-inf")
    s1 = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
        mask = cols < V
        a = tl.load(a_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
        b = tl.load(b_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
        ma, sa = _online_lse(a * inv_temp, ma, sa)
        mb, sb = _online_lse(b * inv_temp, mb, sb)
        if HARD1:
            m1, s1 = _online_lse(a, m1, s1)
    lse_a = ma + tl.log(sa)
    lse_b = mb + tl.log(sb)
    if HARD1:
        lse1 = m1 + tl.log(s1)
    else:
        lse1 = lse_a

    c_soft = tl.where(counted, scale * weight_soft * inv_temp, 0.0)
    c_hard = tl.where(counted, scale * weight_hard, 0.0)
    wa = 1.0 - beta
    st = 0.0  # sum q (t - .)
    ss = 0.0  # sum p (s - .)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
        mask = cols < V
        a = tl.load(a_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
        b = tl.load(b_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
        s = a * inv_temp - lse_a
        t = b * inv_temp - lse_b
        p = tl.exp(s)
        q = tl.exp(t)
        if MODE == 0:
            st += tl.sum(tl.where(q > 0.0, q * (t - s), 0.0), 0)
            A = p - q
        elif MODE == 1:
            ss += tl.sum(tl.where(p > 0.0, p * (s - t), 0.0), 0)
            A = tl.where(p > 0.0, p * (s - t), 0.0)
        else:
            m = tl.log(wa * p + beta * q)
            st += tl.sum(tl.where(q > 0.0, q * (t - m), 0.0), 0)
            ps = tl.where(p > 0.0, p * (s - m), 0.0)
            ss += tl.sum(ps, 0)
            A = wa * ps
        if COMPUTE_GRAD:
            if HARD1:
                h = tl.exp(a - lse1)
            else:
                h = p
            g = c_soft * A
            if HARD:
                g += c_hard * h
            tl.store(a_row + cols, g.to(zs_ptr.dtype.element_ty), mask=mask)
            tl.store(b_row + cols, p.to(zt_ptr.dtype.element_ty), mask=mask)

    if MODE == 0:
        soft = st
        K = 0.0
    elif MODE == 1:
        soft = ss
        K = ss
    else:
        soft = beta * st + wa * ss
        K = wa * ss
    loss = weight_soft * soft
    if HARD:
        loss += weight_hard * (lse1 - a_label)
    tl.store(loss_ptr + row, tl.where(counted, loss, 0.0))

    if COMPUTE_GRAD:
        if MODE != 0:
            ck = c_soft * K
            for start in range(0, V, BLOCK_V):
                cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
                mask = cols < V
                g = tl.load(a_row + cols, mask=mask, other=0.0).to(tl.float32)
                p = tl.load(b_row + cols, mask=mask, other=0.0).to(tl.float32)
                tl.store(a_row + cols, (g - ck * p).to(zs_ptr.dtype.element_ty), mask=mask)
        if HARD:
            g = tl.load(a_row + label).to(tl.float32)
            tl.store(a_row + label, (g - c_hard).to(zs_ptr.dtype.element_ty))


def block_v(V: int, block_v: int | None) -> int:
    return block_v or min(triton.next_power_of_2(V), MAX_BLOCK_V)


def num_warps(block_v: int) -> int:
    return 4 if block_v <= 1024 else 8


def chunk_rows(N: int, V: int, chunk_size: int | None) -> int:
    """Rows per chunk: each fp32 [rows, V] buffer within R1_DISTILL_CHUNK_BYTES (as the CPU kernels)."""
    budget = max(int(os.environ.get("R1_DISTILL_CHUNK_BYTES", CHUNK_BYTES)), 1)
    rows = chunk_size or max(1, budget // (max(V, 1) * 4))
    return max(1, min(N, rows))


def launch_rows(zs, zt, labels, row_scale, row_loss, beta, temperature, ignore_index, weight_hard, weight_soft,
                compute_grad, bv):
    """The row kernel over fp32 [n, V] chunks zs and zt (zs becomes the gradient with compute_grad)."""
    n, V = zs.shape
    if n == 0:
        return
    mode = 0 if beta == 0 else (1 if beta == 1 else 2)
    hard = labels is not None and weight_hard != 0
    _distill_row_kernel[(n,)](
        zs, zs.stride(0), zt, zt.stride(0), labels if labels is not None else row_scale, row_scale, row_loss,
        V, 1.0 / temperature, float(beta), float(weight_hard), float(weight_soft), int(ignore_index),
        MODE=mode, HAS_LABELS=labels is not None, HARD=hard, HARD1=hard and temperature != 1.0,
        COMPUTE_GRAD=bool(compute_grad), BLOCK_V=bv, num_warps=num_warps(bv),
    )
