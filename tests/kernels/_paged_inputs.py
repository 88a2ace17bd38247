"""Paged KV caches for the attention and cache-op tests: random caches (unused blocks hold noise too)
with shuffled, non-contiguous block tables, offsets, and the comparison the tests share."""

from __future__ import annotations

import torch

DTYPES = [(torch.float32, 2e-5, 2e-5), (torch.bfloat16, 2e-2, 2e-2), (torch.float16, 3e-3, 3e-3)]


def make_cache(seq_lens, block_size, hkv, d, dtype, extra_blocks=3, max_blocks=None):
    """Random caches (unused blocks hold noise too) and a shuffled, non-contiguous block table."""
    need = [(n + block_size - 1) // block_size for n in seq_lens]
    nb = sum(need) + extra_blocks
    max_blocks = max(max(need, default=0), 1) if max_blocks is None else max_blocks
    k_cache = torch.randn(nb, block_size, hkv, d).to(dtype)
    v_cache = torch.randn(nb, block_size, hkv, d).to(dtype)
    perm = torch.randperm(nb).to(torch.int32)
    table = torch.full((len(seq_lens), max_blocks), -1, dtype=torch.int32)  # -1 past each sequence's blocks
    i = 0
    for s, n in enumerate(need):
        table[s, :n] = perm[i : i + n]
        i += n
    return k_cache, v_cache, table, torch.tensor(seq_lens, dtype=torch.int32)


def cu(lens):
    return torch.tensor([0] + list(torch.tensor(lens).cumsum(0).tolist()), dtype=torch.int32)


def check_close(out, ref, dtype, atol, rtol):
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


def _args(dtype=torch.float32):
    kc, vc, table, sl = make_cache([5, 9], 4, 2, 8, dtype)
    return torch.randn(3, 4, 8).to(dtype), kc, vc, table, sl, cu([1, 2])
