"""Write new K/V into their slots of a block-paged cache, in place:

    k_cache[slot // block_size, slot % block_size] = key[i]   for slot = slot_mapping[i] >= 0

key/value [N, Hkv, D] in the cache's dtype; caches [num_blocks, block_size, Hkv, D]; slot_mapping
int64 [N], -1 for a token that is not cached (padding). Slots must be distinct (a slot written
twice keeps an unspecified one of the two). Not differentiable (a cache write).
"""

from __future__ import annotations

import torch

from r1kernels._library import op
from r1kernels._paged_args import check_cache, check_int_vector, python_checks_data


@torch.library.register_fake("r1kernels::reshape_and_cache")
def _(key, value, k_cache, v_cache, slot_mapping):
    return None


def reshape_and_cache(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      slot_mapping: torch.Tensor) -> None:
    check_cache(k_cache, v_cache)
    for name, t in (("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3 or tuple(t.shape[1:]) != tuple(k_cache.shape[2:]):
            raise ValueError(f"{name} must be [N, {k_cache.shape[2]}, {k_cache.shape[3]}] (kv_heads and head_dim of the cache), "
                             f"got {getattr(t, 'shape', type(t))}")
        if t.dtype != k_cache.dtype:
            raise ValueError(f"{name} must have the cache's dtype {k_cache.dtype}, got {t.dtype}")
        if t.device != k_cache.device:
            raise ValueError(f"{name} is on {t.device}, expected {k_cache.device} (the cache's device)")
    if value.shape[0] != key.shape[0]:
        raise ValueError(f"value must have as many tokens as key ({key.shape[0]}), got {value.shape[0]}")
    check_int_vector(slot_mapping, "slot_mapping", key.shape[0], dtype=torch.int64, device=k_cache.device)
    if python_checks_data("reshape_and_cache", k_cache.device) and slot_mapping.numel():
        n_slots = k_cache.shape[0] * k_cache.shape[1]
        if bool((slot_mapping < -1).any()) or bool((slot_mapping >= n_slots).any()):
            raise ValueError(f"slot_mapping entries must be -1 (skip) or in [0, {n_slots}), got {slot_mapping.tolist()}")
    op("reshape_and_cache")(key.contiguous(), value.contiguous(), k_cache, v_cache, slot_mapping.contiguous())
