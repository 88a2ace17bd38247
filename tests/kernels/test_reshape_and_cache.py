"""r1kernels.reshape_and_cache (new tokens' K/V into their slots of the paged caches, padding
skipped) against reference.reshape_and_cache.

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
from _paged_inputs import DTYPES, _args
from _triton_cases import CACHE_DTYPES, DEVICE, _caches

import r1kernels
from r1kernels import reference

backend = backend_fixture("reshape_and_cache")
trc = triton_module("reshape_and_cache")


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_reshape_and_cache_skips_padding(backend, dtype, atol, rtol):
    nb, bs, hkv, d, n = 7, 4, 2, 8, 11
    kc, vc = torch.randn(nb, bs, hkv, d).to(dtype), torch.randn(nb, bs, hkv, d).to(dtype)
    slots = torch.randperm(nb * bs)[:n]
    slots[[2, 5]] = -1
    key, value = torch.randn(n, hkv, d).to(dtype), torch.randn(n, hkv, d).to(dtype)
    rk, rv = kc.clone(), vc.clone()
    reference.reshape_and_cache(key, value, rk, rv, slots)
    r1kernels.reshape_and_cache(key, value, kc, vc, slots)
    assert torch.equal(kc, rk) and torch.equal(vc, rv)
    keep = slots >= 0
    assert torch.equal(kc.view(-1, hkv, d)[slots[keep]], key[keep])
    untouched = torch.ones(nb * bs, dtype=torch.bool)
    untouched[slots[keep]] = False
    assert torch.equal(kc.view(-1, hkv, d)[untouched], rk.view(-1, hkv, d)[untouched])


def test_bad_input():
    kc, vc = torch.randn(4, 2, 1, 8), torch.randn(4, 2, 1, 8)
    key = torch.randn(3, 1, 8)
    with pytest.raises(ValueError, match="slot_mapping entries"):
        r1kernels.reshape_and_cache(key, key, kc, vc, torch.tensor([0, 8, -1]))
    with pytest.raises(ValueError, match="slot_mapping entries"):
        r1kernels.reshape_and_cache(key, key, kc, vc, torch.tensor([0, -2, 1]))
    with pytest.raises(ValueError, match="slot_mapping must be"):
        r1kernels.reshape_and_cache(key, key, kc, vc, torch.tensor([0, 1, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match="key must be"):
        r1kernels.reshape_and_cache(torch.randn(3, 2, 8), key, kc, vc, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="k_cache must be contiguous"):
        r1kernels.reshape_and_cache(key, key, kc.transpose(0, 1), vc.transpose(0, 1), torch.tensor([0, 1, 2]))


def test_opcheck():
    _, kc, vc, *_ = _args()
    key = torch.randn(3, 2, 8)
    torch.library.opcheck(torch.ops.r1kernels.reshape_and_cache.default, (key, key.clone(), kc, vc, torch.tensor([1, -1, 7])))


# ---------------------------------------------------------------------------------------------
# Triton launcher


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
@pytest.mark.parametrize("block_size, hkv, d, block", [(5, 2, 12, 16), (4, 1, 8, None), (3, 3, 7, 8)])
def test_triton_launcher(dtype, block_size, hkv, d, block):
    # block_size / head_dim not powers of two; block=16 over a 24-value row: two programs a token,
    # the second half masked; padding tokens (-1) between the real ones
    num_blocks, n = 6, 9
    k_cache, v_cache = _caches(num_blocks, block_size, hkv, d, dtype)
    key = torch.randn(n, hkv, d).to(dtype).to(DEVICE)
    value = torch.randn(n, hkv, d).to(dtype).to(DEVICE)
    slots = torch.randperm(num_blocks * block_size)[:n]
    slots[torch.randperm(n)[:3]] = -1
    slots = slots.to(DEVICE)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    trc.reshape_and_cache(key, value, k_cache, v_cache, slots, block=block)
    reference.reshape_and_cache(key, value, ref_k, ref_v, slots)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)


@pytest.mark.parametrize("slot_list", [[13], [-1], [-1, -1], []])
def test_triton_single_token_and_padding_only(slot_list):
    # one token (a decode step), a padding token alone (nothing written), no tokens
    k_cache, v_cache = _caches(4, 5, 2, 6, torch.float32)
    n = len(slot_list)
    key, value = torch.randn(n, 2, 6, device=DEVICE), torch.randn(n, 2, 6, device=DEVICE)
    slots = torch.tensor(slot_list, dtype=torch.int64, device=DEVICE)
    before_k, before_v = k_cache.clone(), v_cache.clone()
    trc.reshape_and_cache(key, value, k_cache, v_cache, slots)
    reference.reshape_and_cache(key, value, before_k, before_v, slots)
    assert torch.equal(k_cache, before_k) and torch.equal(v_cache, before_v)
    if slot_list == [13]:
        assert torch.equal(k_cache[2, 3], key[0]) and torch.equal(v_cache[2, 3], value[0])


def test_triton_refuses_non_contiguous_caches():
    # the raw ops are called past the Python checks: a flat offset would misplace a strided write
    k_cache, v_cache = _caches(4, 5, 2, 6, torch.float32)
    k_nc = k_cache.transpose(0, 1).contiguous().transpose(0, 1)
    assert not k_nc.is_contiguous()
    key = torch.randn(1, 2, 6, device=DEVICE)
    with pytest.raises(ValueError, match="contiguous"):
        trc.reshape_and_cache(key, key, k_nc, v_cache, torch.tensor([3], device=DEVICE))
