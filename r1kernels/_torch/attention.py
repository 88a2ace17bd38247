"""Dense masked attention with grouped-query heads in float32: the step the paged and tree attention
kernels share once a sequence's keys are gathered."""

from __future__ import annotations

import torch


def attend(q, k, v, allowed, scale):
    """q [M, Hq, D], k, v [L, Hkv, D], allowed [M, L] bool -> out [M, Hq, D] float32, lse [M, Hq]
    float32. A row that may attend to nothing gets out 0 and lse -inf."""
    M, hq, D = q.shape
    hkv = k.shape[1]
    qg = q.float().reshape(M, hkv, hq // hkv, D)  # query heads grouped by the kv head they read
    s = torch.einsum("mhgd,lhd->mhgl", qg, k.float()) * scale
    s = s.masked_fill(~allowed[:, None, None, :], -torch.inf)
    lse = torch.logsumexp(s, dim=-1)  # [M, Hkv, G]
    finite = torch.isfinite(lse)
    p = torch.where(finite[..., None], torch.exp(s - torch.where(finite, lse, 0.0)[..., None]), 0.0)
    out = torch.einsum("mhgl,lhd->mhgd", p, v.float())
    return out.reshape(M, hq, D), lse.reshape(M, hq)


def gather_blocks(cache, table_row, length):
    """A sequence's first `length` cached tokens [length, Hkv, D] from cache [num_blocks, block_size, Hkv, D]."""
    block_size = cache.shape[1]
    used = -(-length // block_size)
    return cache.index_select(0, table_row[:used].long()).flatten(0, 1)[:length]
