"""Triton paged attention: decode, prefill and chunked prefill with one kernel (causal mask from each
query's position seq_len - q_len + j), grouped-query heads, fp32 online softmax, lse.

One program per (query row, kv head): it walks the sequence's block table and applies each KV
block to the Hq / Hkv query heads that read that kv head. Rows find their sequence by a
searchsorted on cu_seqlens_q done on the device, so a launch needs no host sync.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# A finite "minus infinity" for the running max: exp(m_old - m_new) stays 1, never nan, while a
# tile is fully masked; real -inf marks the masked scores themselves. A tl.constexpr: the compiler
# refuses a plain module-level float inside @triton.jit (the interpreter does not, so only a GPU
# run or tests/_triton_aot.py sees it).
NEG_BIG = tl.constexpr(-1.0e30)


@triton.jit
def _paged_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, lse_ptr,
    table_ptr, seq_lens_ptr, cu_ptr, row_seq_ptr,
    scale, max_blocks,
    HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    GROUP: tl.constexpr, GROUP_P2: tl.constexpr, D_P2: tl.constexpr, BS_P2: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    row = tl.program_id(0)
    kvh = tl.program_id(1)
    s = tl.load(row_seq_ptr + row).to(tl.int64)
    a = tl.load(cu_ptr + s)
    q_len = tl.load(cu_ptr + s + 1) - a
    L = tl.load(seq_lens_ptr + s)
    j = row - a
    if CAUSAL:
        limit = L - q_len + j + 1
    else:
        limit = L

    g = tl.arange(0, GROUP_P2)
    d = tl.arange(0, D_P2)
    t = tl.arange(0, BS_P2)
    g_ok = g < GROUP
    d_ok = d < D
    heads = kvh * GROUP + g  # [G]
    row64 = row.to(tl.int64)
    q = tl.load(q_ptr + (row64 * HQ + heads[:, None]) * D + d[None, :], mask=g_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    q = q * scale

    m_i = tl.full([GROUP_P2], NEG_BIG, tl.float32)
    l_i = tl.zeros([GROUP_P2], tl.float32)
    acc = tl.zeros([GROUP_P2, D_P2], tl.float32)
    n_blocks = tl.cdiv(limit, BLOCK_SIZE)
    for b in range(0, n_blocks):
        blk = tl.load(table_ptr + s * max_blocks + b).to(tl.int64)
        pos = b * BLOCK_SIZE + t
        t_ok = (t < BLOCK_SIZE) & (pos < limit)
        kv_off = ((blk * BLOCK_SIZE + t[:, None]) * HKV + kvh) * D + d[None, :]  # [BS, D]
        kv_mask = t_ok[:, None] & d_ok[None, :]
        k = tl.load(k_cache_ptr + kv_off, mask=kv_mask, other=0.0).to(tl.float32)
        v = tl.load(v_cache_ptr + kv_off, mask=kv_mask, other=0.0).to(tl.float32)
        scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2)  # [G, BS]
        scores = tl.where(t_ok[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m_i = m_new

    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
    tl.store(out_ptr + (row64 * HQ + heads[:, None]) * D + d[None, :], out.to(out_ptr.dtype.element_ty), mask=g_ok[:, None] & d_ok[None, :])
    tl.store(lse_ptr + row64 * HQ + heads, lse, mask=g_ok)


def row_to_seq(cu_seqlens: torch.Tensor, n_rows: int) -> torch.Tensor:
    """int32 [n_rows]: the sequence each packed row belongs to (no host sync)."""
    rows = torch.arange(n_rows, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens[1:].contiguous(), rows, right=True).to(torch.int32)


def paged_attention(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, causal):
    """Launcher with the schema's signature: (out [Nq, Hq, D] in q's dtype, lse [Nq, Hq] fp32)."""
    nq, hq, d = q.shape
    _, bs, hkv, _ = k_cache.shape
    group = hq // hkv
    out = torch.empty_like(q)
    lse = torch.empty(nq, hq, dtype=torch.float32, device=q.device)
    if nq == 0:
        return out, lse
    row_seq = row_to_seq(cu_seqlens_q, nq)
    _paged_attention_kernel[(nq, hkv)](
        q, k_cache, v_cache, out, lse,
        block_tables, seq_lens, cu_seqlens_q, row_seq,
        float(scale), block_tables.shape[1],
        HQ=hq, HKV=hkv, D=d, BLOCK_SIZE=bs,
        GROUP=group, GROUP_P2=triton.next_power_of_2(group), D_P2=triton.next_power_of_2(d), BS_P2=triton.next_power_of_2(bs),
        CAUSAL=bool(causal),
    )
    return out, lse
