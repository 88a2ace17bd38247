"""r1kernels::reshape_and_cache in PyTorch: token i's key and value into slot slot_mapping[i] of the
paged caches (block * block_size + offset), in place; slot -1 is padding and is skipped."""

from __future__ import annotations


def reshape_and_cache(key, value, k_cache, v_cache, slot_mapping):
    rows = (slot_mapping >= 0).nonzero().squeeze(-1)
    slots = slot_mapping[rows]
    # the caches are contiguous (checked by the wrapper): a [slots, Hkv, D] view indexes them by slot
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slots, key[rows].to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slots, value[rows].to(v_cache.dtype))
