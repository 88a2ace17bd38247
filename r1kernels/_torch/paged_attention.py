"""r1kernels::paged_attention in PyTorch: each sequence's keys gathered from its blocks, then dense
attention; query j of a sequence with q_len queries sits at position seq_len - q_len + j."""

from __future__ import annotations

import torch

from r1kernels._torch.attention import attend, gather_blocks


def paged_attention(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, causal):
    out = q.new_zeros(q.shape, dtype=torch.float32)
    lse = q.new_full(q.shape[:2], -torch.inf, dtype=torch.float32)
    starts, lens = cu_seqlens_q.tolist(), seq_lens.tolist()
    for s, L in enumerate(lens):
        a, b = starts[s], starts[s + 1]
        if a == b:
            continue
        k = gather_blocks(k_cache, block_tables[s], L)
        v = gather_blocks(v_cache, block_tables[s], L)
        qpos = torch.arange(L - (b - a), L, device=q.device)
        kpos = torch.arange(L, device=q.device)
        allowed = kpos[None, :] <= qpos[:, None] if causal else torch.ones(b - a, L, dtype=torch.bool, device=q.device)
        out[a:b], lse[a:b] = attend(q[a:b], k, v, allowed, scale)
    return out.to(q.dtype), lse
