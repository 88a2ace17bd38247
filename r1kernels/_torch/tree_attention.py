"""r1kernels::tree_attention in PyTorch: per tree, the ancestor-or-self mask of its nodes (parents
precede children, so one pass in order builds it) after its paged prefix, then dense attention."""

from __future__ import annotations

import torch

from r1kernels._torch.attention import attend, gather_blocks


def _ancestor_or_self(parents):
    n = len(parents)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            allowed[i] = allowed[p]
        allowed[i, i] = True
    return allowed


def tree_attention(q, k, v, parents, cu_nodes, k_cache, v_cache, block_tables, prefix_lens, scale):
    out = q.new_zeros(q.shape, dtype=torch.float32)
    lse = q.new_full(q.shape[:2], -torch.inf, dtype=torch.float32)
    bounds = cu_nodes.tolist()
    for t in range(len(bounds) - 1):
        a, b = bounds[t], bounds[t + 1]
        if a == b:
            continue
        keys, values = k[a:b], v[a:b]
        allowed = _ancestor_or_self(parents[a:b].tolist()).to(q.device)
        if k_cache is not None:
            P = int(prefix_lens[t])
            keys = torch.cat([gather_blocks(k_cache, block_tables[t], P).to(k.dtype), keys])
            values = torch.cat([gather_blocks(v_cache, block_tables[t], P).to(v.dtype), values])
            allowed = torch.cat([allowed.new_ones(b - a, P), allowed], dim=1)
        out[a:b], lse[a:b] = attend(q[a:b], keys, values, allowed, scale)
    return out.to(q.dtype), lse
