"""Triton kernel for r1kernels::copy_blocks on CUDA tensors: k_cache[dst] = k_cache[src] and
v_cache[dst] = v_cache[src] for every (src, dst) row of block_mapping [M, 2], in place.

A block of a contiguous cache is block_size * Hkv * D contiguous values, so one program copies a
BLOCK-wide piece of one pair's block, both caches: grid (M, cdiv(block_numel, BLOCK)). Destinations
are distinct and never sources (the op's contract), so the programs do not race. Non-contiguous
caches are refused, as the CUDA C++ kernel refuses them.
"""

from __future__ import annotations

import triton
import triton.language as tl

from r1kernels.triton.reshape_and_cache import check_contiguous_caches

MAX_BLOCK = 2048


@triton.jit
def _copy_blocks_kernel(
    k_cache_ptr, v_cache_ptr, mapping_ptr,
    BLOCK_NUMEL: tl.constexpr, BLOCK: tl.constexpr,
):
    pair = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    src = tl.load(mapping_ptr + 2 * pair)  # int64 block ids
    dst = tl.load(mapping_ptr + 2 * pair + 1)
    ok = e < BLOCK_NUMEL
    k = tl.load(k_cache_ptr + src * BLOCK_NUMEL + e, mask=ok)
    v = tl.load(v_cache_ptr + src * BLOCK_NUMEL + e, mask=ok)
    tl.store(k_cache_ptr + dst * BLOCK_NUMEL + e, k, mask=ok)
    tl.store(v_cache_ptr + dst * BLOCK_NUMEL + e, v, mask=ok)


def copy_blocks(k_cache, v_cache, block_mapping, *, block=None):
    """Launcher with the schema's signature (in place, returns None); block: lanes per program."""
    check_contiguous_caches(k_cache, v_cache)
    m = block_mapping.shape[0]
    block_numel = k_cache.shape[1] * k_cache.shape[2] * k_cache.shape[3]
    if m == 0 or block_numel == 0:
        return None
    block = block or min(triton.next_power_of_2(block_numel), MAX_BLOCK)
    _copy_blocks_kernel[(m, triton.cdiv(block_numel, block))](
        k_cache, v_cache, block_mapping.contiguous(),
        BLOCK_NUMEL=block_numel, BLOCK=block,
    )
    return None
