"""Copy whole cache blocks, in place (copy-on-write when a forked sequence writes into a shared
block):

    k_cache[dst] = k_cache[src], v_cache[dst] = v_cache[src]   for every row (src, dst)

block_mapping int64 [M, 2]. Destinations must be distinct and never a source of the same call, so
the copies do not depend on their order. Not differentiable (a cache write).
"""

from __future__ import annotations

import torch

from r1kernels._library import op
from r1kernels._paged_args import check_cache, python_checks_data


@torch.library.register_fake("r1kernels::copy_blocks")
def _(k_cache, v_cache, block_mapping):
    return None


def copy_blocks(k_cache: torch.Tensor, v_cache: torch.Tensor, block_mapping: torch.Tensor) -> None:
    check_cache(k_cache, v_cache)
    if not isinstance(block_mapping, torch.Tensor) or block_mapping.dim() != 2 or block_mapping.shape[1] != 2:
        raise ValueError("block_mapping must be an int64 tensor [M, 2] of (src, dst) rows, "
                         f"got {getattr(block_mapping, 'shape', type(block_mapping))}")
    if block_mapping.dtype != torch.int64:
        raise ValueError(f"block_mapping must be int64, got {block_mapping.dtype}")
    if block_mapping.device != k_cache.device:
        raise ValueError(f"block_mapping is on {block_mapping.device}, expected {k_cache.device} (the cache's device)")
    if python_checks_data("copy_blocks", k_cache.device) and block_mapping.numel():
        nb = k_cache.shape[0]
        if bool((block_mapping < 0).any()) or bool((block_mapping >= nb).any()):
            raise ValueError(f"block_mapping ids must be in [0, {nb}), got {block_mapping.tolist()}")
        src, dst = block_mapping[:, 0], block_mapping[:, 1]
        if dst.unique().numel() != dst.numel() or bool(torch.isin(dst, src).any()):
            raise ValueError(f"block_mapping destinations must be distinct and not also sources, got {block_mapping.tolist()}")
    op("copy_blocks")(k_cache, v_cache, block_mapping.contiguous())
