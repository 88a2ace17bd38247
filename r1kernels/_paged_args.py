"""Argument checks shared by the paged-cache ops (reshape_and_cache, copy_blocks, paged_attention,
tree_attention).

Shape and dtype checks always run. Data-dependent checks (offsets, lengths, block ids, parents) run
here only where the C++ CPU kernel will not run them itself: the C++ kernels repeat them in a few
integer loops (TORCH_CHECK_VALUE, a ValueError in Python), which keeps decode-sized calls free of
the dozen small tensor ops and host syncs these checks cost in PyTorch. Under torch.compile they are
skipped here as everywhere.
"""

from __future__ import annotations

import functools

import torch

from r1kernels._library import has_cpp_kernel

CACHE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def python_checks_data(op_name: str, device: torch.device) -> bool:
    if torch.compiler.is_compiling():
        return False
    return _python_checks_data(op_name, device.type)


@functools.lru_cache(maxsize=None)
def _python_checks_data(op_name: str, device_type: str) -> bool:
    # only the C++ CPU kernels repeat the data checks; CUDA kernels and the plain-PyTorch ones do not.
    # Cached: the dispatcher lookup costs ~9 us, a third of a decode-sized call.
    return not (device_type == "cpu" and has_cpp_kernel(op_name, "cpu"))


def check_cache(k_cache, v_cache):
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(c, torch.Tensor) or c.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [num_blocks, block_size, kv_heads, head_dim], "
                             f"got {getattr(c, 'shape', type(c))}")
        if c.dtype not in CACHE_DTYPES:
            raise ValueError(f"{name} must be float32, bfloat16 or float16, got {c.dtype}")
        if not c.is_contiguous():
            raise ValueError(f"{name} must be contiguous (it is written in place)")
    if v_cache.shape != k_cache.shape or v_cache.dtype != k_cache.dtype or v_cache.device != k_cache.device:
        raise ValueError(
            f"v_cache must match k_cache in shape, dtype and device, got {list(v_cache.shape)} {v_cache.dtype} {v_cache.device} "
            f"and {list(k_cache.shape)} {k_cache.dtype} {k_cache.device}"
        )


def check_int_vector(t, name, length, dtype=torch.int32, device=None):
    if not isinstance(t, torch.Tensor) or t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D {dtype} tensor, got {getattr(t, 'shape', type(t))}")
    if t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    if length is not None and t.shape[0] != length:
        raise ValueError(f"{name} must have {length} entries, got {t.shape[0]}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")


def check_heads(q, k_cache_or_k, q_name, kv_name):
    hq, d = q.shape[1], q.shape[2]
    hkv, dk = k_cache_or_k.shape[-2], k_cache_or_k.shape[-1]
    if d != dk:
        raise ValueError(f"{q_name} has head_dim {d} but {kv_name} has head_dim {dk}")
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"{q_name}'s heads ({hq}) must be a multiple of {kv_name}'s kv heads ({hkv})")


def check_block_tables(block_tables, lens, lens_name, k_cache, num_rows, check_data):
    """block_tables int32 [num_rows, max_blocks]; lens int32 [num_rows], each <= the table's capacity,
    and every block a sequence uses within [0, num_blocks)."""
    dev = k_cache.device
    if not isinstance(block_tables, torch.Tensor) or block_tables.dim() != 2:
        raise ValueError("block_tables must be a 2-D int32 tensor [num_seqs, max_blocks], "
                         f"got {getattr(block_tables, 'shape', type(block_tables))}")
    if block_tables.dtype != torch.int32:
        raise ValueError(f"block_tables must be int32, got {block_tables.dtype}")
    if block_tables.shape[0] != num_rows:
        raise ValueError(f"block_tables must have {num_rows} rows, got {block_tables.shape[0]}")
    if block_tables.device != dev:
        raise ValueError(f"block_tables is on {block_tables.device}, expected {dev} (the cache's device)")
    check_int_vector(lens, lens_name, num_rows, device=dev)
    if not check_data or num_rows == 0:
        return
    num_blocks, block_size = k_cache.shape[0], k_cache.shape[1]
    cap = block_tables.shape[1] * block_size
    if bool((lens < 0).any()) or bool((lens > cap).any()):
        raise ValueError(f"{lens_name} must be in [0, {cap}] (max_blocks * block_size of block_tables), got {lens.tolist()}")
    used = torch.arange(block_tables.shape[1], device=dev).unsqueeze(0) * block_size < lens.unsqueeze(1)  # [S, max_blocks]
    ids = block_tables[used]
    if ids.numel() and (bool((ids < 0).any()) or bool((ids >= num_blocks).any())):
        raise ValueError(f"block_tables holds block ids outside [0, {num_blocks}) in the blocks the sequences use")


def check_cu(cu, name, n, num_rows, check_data, device):
    """Offsets [num_rows + 1]: starting at 0, non-decreasing, ending at n."""
    check_int_vector(cu, name, num_rows + 1, device=device)
    if check_data:
        if int(cu[0]) != 0 or int(cu[-1]) != n or bool((cu[1:] < cu[:-1]).any()):
            raise ValueError(f"{name} must start at 0, never decrease and end at {n}, got {cu.tolist()}")
