"""Triton kernel for r1kernels::reshape_and_cache on CUDA tensors: token i's K/V rows [Hkv, D] into
cache slot slot_mapping[i] (block slot // block_size, offset slot % block_size), in place; a slot
of -1 (a padding token) writes nothing.

A cache slot's Hkv * D values are contiguous in a contiguous cache, so one program copies a
BLOCK-wide piece of one token's row, key and value together: grid (N, cdiv(Hkv * D, BLOCK)).
Non-contiguous caches are refused, as the CUDA C++ kernel refuses them (a flat slot * row offset
would misplace the write).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK = 1024


@triton.jit
def _reshape_and_cache_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    ROW: tl.constexpr, BLOCK: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    slot = tl.load(slot_ptr + i)  # int64; -1 for a padding token
    # one comparison against a row length of 0 for padding: no scalar & block mask (the
    # interpreter's int1 & with a scalar operand gives an int32 mask that tl.load rejects)
    ok = e < tl.where(slot >= 0, ROW, 0)
    src = i * ROW + e
    dst = slot * ROW + e
    k = tl.load(key_ptr + src, mask=ok, other=0.0)
    v = tl.load(value_ptr + src, mask=ok, other=0.0)
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=ok)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=ok)


def check_contiguous_caches(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    # the raw op is called past the Python checks (the engine does): refuse rather than misplace
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("k_cache and v_cache must be contiguous (they are written in place)")


def reshape_and_cache(key, value, k_cache, v_cache, slot_mapping, *, block=None):
    """Launcher with the schema's signature (in place, returns None); block: lanes per program."""
    check_contiguous_caches(k_cache, v_cache)
    n = slot_mapping.shape[0]
    row = k_cache.shape[2] * k_cache.shape[3]
    if n == 0 or row == 0:
        return None
    block = block or min(triton.next_power_of_2(row), MAX_BLOCK)
    _reshape_and_cache_kernel[(n, triton.cdiv(row, block))](
        key.contiguous(), value.contiguous(), k_cache, v_cache, slot_mapping.contiguous(),
        ROW=row, BLOCK=block,
    )
    return None
