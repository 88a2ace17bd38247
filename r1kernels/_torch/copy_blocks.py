"""r1kernels::copy_blocks in PyTorch: block dst := block src for every (src, dst) row of
block_mapping [M, 2], in place (all sources read before any destination is written)."""

from __future__ import annotations


def copy_blocks(k_cache, v_cache, block_mapping):
    src, dst = block_mapping[:, 0], block_mapping[:, 1]
    for cache in (k_cache, v_cache):
        cache.index_copy_(0, dst, cache.index_select(0, src))
