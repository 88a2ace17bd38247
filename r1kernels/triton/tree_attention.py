"""Triton tree attention: each node attends to its tree's paged prefix (non-causal, all prefix_lens
tokens), to its ancestors and to itself; grouped-query heads, fp32 online softmax, lse.

One program per (node, kv head): the prefix blocks go through the softmax block by block as in
paged attention, then the program walks the node's parent chain one key at a time (depth <= tree
size; trees of search steps are shallow).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from r1kernels.triton.paged_attention import NEG_BIG, row_to_seq


@triton.jit
def _tree_attention_kernel(
    q_ptr, k_ptr, v_ptr, parents_ptr, cu_ptr, node_tree_ptr,
    k_cache_ptr, v_cache_ptr, table_ptr, prefix_lens_ptr,
    out_ptr, lse_ptr,
    scale, max_blocks,
    HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    GROUP: tl.constexpr, GROUP_P2: tl.constexpr, D_P2: tl.constexpr, BS_P2: tl.constexpr,
    HAS_CACHE: tl.constexpr,
):
    node = tl.program_id(0)
    kvh = tl.program_id(1)
    tree = tl.load(node_tree_ptr + node).to(tl.int64)
    a = tl.load(cu_ptr + tree)
    g = tl.arange(0, GROUP_P2)
    d = tl.arange(0, D_P2)
    g_ok = g < GROUP
    d_ok = d < D
    heads = kvh * GROUP + g
    node64 = node.to(tl.int64)
    q = tl.load(q_ptr + (node64 * HQ + heads[:, None]) * D + d[None, :], mask=g_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    q = q * scale

    m_i = tl.full([GROUP_P2], NEG_BIG, tl.float32)
    l_i = tl.zeros([GROUP_P2], tl.float32)
    acc = tl.zeros([GROUP_P2, D_P2], tl.float32)
    if HAS_CACHE:
        t = tl.arange(0, BS_P2)
        P = tl.load(prefix_lens_ptr + tree)
        for b in range(0, tl.cdiv(P, BLOCK_SIZE)):
            blk = tl.load(table_ptr + tree * max_blocks + b).to(tl.int64)
            pos = b * BLOCK_SIZE + t
            t_ok = (t < BLOCK_SIZE) & (pos < P)
            kv_off = ((blk * BLOCK_SIZE + t[:, None]) * HKV + kvh) * D + d[None, :]
            kv_mask = t_ok[:, None] & d_ok[None, :]
            k = tl.load(k_cache_ptr + kv_off, mask=kv_mask, other=0.0).to(tl.float32)
            v = tl.load(v_cache_ptr + kv_off, mask=kv_mask, other=0.0).to(tl.float32)
            scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2)
            scores = tl.where(t_ok[None, :], scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, axis=1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(scores - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
            m_i = m_new

    # the node itself, then each ancestor: parents are tree-local, -1 ends the chain
    j = node - a
    while j >= 0:
        row = (a + j).to(tl.int64)
        k = tl.load(k_ptr + (row * HKV + kvh) * D + d, mask=d_ok, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + (row * HKV + kvh) * D + d, mask=d_ok, other=0.0).to(tl.float32)
        s = tl.sum(q * k[None, :], axis=1)  # [G]
        m_new = tl.maximum(m_i, s)
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new)
        l_i = l_i * alpha + p
        acc = acc * alpha[:, None] + p[:, None] * v[None, :]
        m_i = m_new
        j = tl.load(parents_ptr + row)

    out = acc / l_i[:, None]  # l_i >= 1: every node sees itself
    lse = m_i + tl.log(l_i)
    tl.store(out_ptr + (node64 * HQ + heads[:, None]) * D + d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=g_ok[:, None] & d_ok[None, :])
    tl.store(lse_ptr + node64 * HQ + heads, lse, mask=g_ok)


def tree_attention(q, k, v, parents, cu_nodes, k_cache, v_cache, block_tables, prefix_lens, scale):
    """Launcher with the schema's signature: (out [N, Hq, D] in q's dtype, lse [N, Hq] fp32)."""
    n, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    out = torch.empty_like(q)
    lse = torch.empty(n, hq, dtype=torch.float32, device=q.device)
    if n == 0:
        return out, lse
    has_cache = k_cache is not None
    if has_cache:
        bs, max_blocks = k_cache.shape[1], block_tables.shape[1]
    else:  # dummies the kernel never reads (HAS_CACHE=False)
        k_cache = v_cache = k
        block_tables = prefix_lens = parents
        bs, max_blocks = 1, 1
    node_tree = row_to_seq(cu_nodes, n)
    _tree_attention_kernel[(n, hkv)](
        q, k, v, parents, cu_nodes, node_tree,
        k_cache, v_cache, block_tables, prefix_lens,
        out, lse,
        float(scale), max_blocks,
        HQ=hq, HKV=hkv, D=d, BLOCK_SIZE=bs,
        GROUP=group, GROUP_P2=triton.next_power_of_2(group), D_P2=triton.next_power_of_2(d), BS_P2=triton.next_power_of_2(bs),
        HAS_CACHE=has_cache,
    )
    return out, lse
