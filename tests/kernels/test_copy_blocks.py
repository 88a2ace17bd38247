"""r1kernels.copy_blocks (whole cache blocks copied, the copy-on-write of shared prefixes) against
reference.copy_blocks, and attention over the copies.

The tests named with a `backend` run the public function on each backend present (tests/kernels/
_backends.py): the C++ kernel, the plain-PyTorch kernel of r1kernels._torch and, where the shapes are
small enough for the interpreter, the Triton kernel under TRITON_INTERPRET=1. The test_triton_*
tests drive the Triton launchers directly on interpreter-sized shapes (chunk and block loops that
run more than once); the *_cuda tests run on a GPU and skip without one.
"""

from __future__ import annotations

import pytest
import torch
from _backends import backend_fixture, triton_module
from _paged_inputs import DTYPES, _args, cu, make_cache
from _triton_cases import CACHE_DTYPES, DEVICE, _caches

import r1kernels
from r1kernels import reference

backend = backend_fixture("copy_blocks", "paged_attention")
tcb = triton_module("copy_blocks")


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_copy_blocks_then_attention_unchanged(backend, dtype, atol, rtol):
    seq_lens = [13, 21]
    kc, vc, table, sl = make_cache(seq_lens, 8, 2, 16, dtype, extra_blocks=4)
    used = set(table[table >= 0].tolist())
    free = [b for b in range(kc.shape[0]) if b not in used]
    q = torch.randn(2, 4, 16).to(dtype)
    before = r1kernels.paged_attention(q, kc, vc, table, sl, cu([1, 1]))
    mapping = torch.tensor([[int(table[0, 1]), free[0]], [int(table[1, 2]), free[1]], [int(table[1, 0]), free[2]]])
    rk, rv = kc.clone(), vc.clone()
    reference.copy_blocks(rk, rv, mapping)
    r1kernels.copy_blocks(kc, vc, mapping)
    assert torch.equal(kc, rk) and torch.equal(vc, rv)
    table2 = table.clone()
    table2[0, 1], table2[1, 2], table2[1, 0] = free[0], free[1], free[2]
    after = r1kernels.paged_attention(q, kc, vc, table2, sl, cu([1, 1]))
    assert torch.equal(before, after)


def test_bad_input():
    kc, vc = torch.randn(4, 2, 1, 8), torch.randn(4, 2, 1, 8)
    with pytest.raises(ValueError, match="block_mapping ids"):
        r1kernels.copy_blocks(kc, vc, torch.tensor([[0, 4]]))
    with pytest.raises(ValueError, match="destinations must be distinct"):
        r1kernels.copy_blocks(kc, vc, torch.tensor([[0, 1], [2, 1]]))
    with pytest.raises(ValueError, match="destinations must be distinct"):
        r1kernels.copy_blocks(kc, vc, torch.tensor([[0, 1], [1, 2]]))
    with pytest.raises(ValueError, match=r"block_mapping must be an int64 tensor \[M, 2\]"):
        r1kernels.copy_blocks(kc, vc, torch.tensor([0, 1]))


def test_opcheck():
    _, kc, vc, *_ = _args()
    torch.library.opcheck(torch.ops.r1kernels.copy_blocks.default, (kc, vc, torch.tensor([[0, 5]])))


# ---------------------------------------------------------------------------------------------
# Triton launcher


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
@pytest.mark.parametrize("block_size, hkv, d, block", [(5, 2, 6, 16), (4, 1, 8, None)])
def test_triton_launcher(dtype, block_size, hkv, d, block):
    # several (src, dst) pairs, one source copied twice; block=16 over 60 values: four programs a
    # pair, the last part masked
    num_blocks = 9
    k_cache, v_cache = _caches(num_blocks, block_size, hkv, d, dtype)
    perm = torch.randperm(num_blocks)
    src, dst = perm[:3], perm[3:7]
    mapping = torch.stack([torch.cat([src, src[:1]]), dst], dim=1).to(DEVICE)  # [4, 2]
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    tcb.copy_blocks(k_cache, v_cache, mapping, block=block)
    reference.copy_blocks(ref_k, ref_v, mapping)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)


def test_triton_single_pair_and_empty():
    k_cache, v_cache = _caches(3, 3, 2, 5, torch.float32)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    tcb.copy_blocks(k_cache, v_cache, torch.empty(0, 2, dtype=torch.int64, device=DEVICE))
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)
    mapping = torch.tensor([[2, 0]], device=DEVICE)
    tcb.copy_blocks(k_cache, v_cache, mapping)
    reference.copy_blocks(ref_k, ref_v, mapping)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)


def test_triton_refuses_non_contiguous_caches():
    # the raw ops are called past the Python checks: a flat offset would misplace a strided write
    k_cache, v_cache = _caches(4, 5, 2, 6, torch.float32)
    k_nc = k_cache.transpose(0, 1).contiguous().transpose(0, 1)
    assert not k_nc.is_contiguous()
    with pytest.raises(ValueError, match="contiguous"):
        tcb.copy_blocks(k_nc, v_cache, torch.tensor([[0, 1]], device=DEVICE))
