"""The Triton kernels of the paged KV cache's writes and the cascade merge (r1kernels.triton
reshape_and_cache, copy_blocks, merge_attention_states) against r1kernels.reference.

Without a GPU they run on CPU tensors under TRITON_INTERPRET=1 (tests/conftest.py sets it before
any kernel module is imported). The cache writes only move values, so every cache dtype is compared
bitwise; the merge loads bf16 / fp16 into fp32 and rounds once on the store (1 ulp of slack). The
tests pick lanes per program below the row, so each row spans several programs, the last one part
masked; shapes are small because the interpreter runs the programs one after another.
"""

from __future__ import annotations

import math

import pytest
import torch

from r1kernels import reference
from r1kernels.triton import KERNELS
from r1kernels.triton.copy_blocks import copy_blocks
from r1kernels.triton.merge_attention_states import merge_attention_states
from r1kernels.triton.reshape_and_cache import reshape_and_cache

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CACHE_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (dtype, atol, rtol) of the merge's out: fp32 math throughout, one rounding to the out dtype
# float32: the two sides' weights come from exp in another order than the reference's (a few ulp of
# an O(1) output: 3e-6 was seen), a wrong weight is off by far more
MERGE_DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 1.6e-2, 1.6e-2), (torch.float16, 2e-3, 2e-3)]


def _caches(num_blocks, block_size, hkv, d, dtype):
    k_cache = torch.randn(num_blocks, block_size, hkv, d).to(dtype).to(DEVICE)
    return k_cache, torch.randn_like(k_cache)


def test_registered():
    for name in ("reshape_and_cache", "copy_blocks", "merge_attention_states"):
        assert name in KERNELS, name


# ---------------------------------------------------------------------------------------------
# reshape_and_cache


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
@pytest.mark.parametrize("block_size, hkv, d, block", [(5, 2, 12, 16), (4, 1, 8, None), (3, 3, 7, 8)])
def test_reshape_and_cache(dtype, block_size, hkv, d, block):
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
    reshape_and_cache(key, value, k_cache, v_cache, slots, block=block)
    reference.reshape_and_cache(key, value, ref_k, ref_v, slots)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)


@pytest.mark.parametrize("slot_list", [[13], [-1], [-1, -1], []])
def test_reshape_and_cache_single_token_and_padding_only(slot_list):
    # one token (a decode step), a padding token alone (nothing written), no tokens
    k_cache, v_cache = _caches(4, 5, 2, 6, torch.float32)
    n = len(slot_list)
    key, value = torch.randn(n, 2, 6, device=DEVICE), torch.randn(n, 2, 6, device=DEVICE)
    slots = torch.tensor(slot_list, dtype=torch.int64, device=DEVICE)
    before_k, before_v = k_cache.clone(), v_cache.clone()
    reshape_and_cache(key, value, k_cache, v_cache, slots)
    reference.reshape_and_cache(key, value, before_k, before_v, slots)
    assert torch.equal(k_cache, before_k) and torch.equal(v_cache, before_v)
    if slot_list == [13]:
        assert torch.equal(k_cache[2, 3], key[0]) and torch.equal(v_cache[2, 3], value[0])


# ---------------------------------------------------------------------------------------------
# copy_blocks


@pytest.mark.parametrize("dtype", CACHE_DTYPES)
@pytest.mark.parametrize("block_size, hkv, d, block", [(5, 2, 6, 16), (4, 1, 8, None)])
def test_copy_blocks(dtype, block_size, hkv, d, block):
    # several (src, dst) pairs, one source copied twice; block=16 over 60 values: four programs a
    # pair, the last part masked
    num_blocks = 9
    k_cache, v_cache = _caches(num_blocks, block_size, hkv, d, dtype)
    perm = torch.randperm(num_blocks)
    src, dst = perm[:3], perm[3:7]
    mapping = torch.stack([torch.cat([src, src[:1]]), dst], dim=1).to(DEVICE)  # [4, 2]
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    copy_blocks(k_cache, v_cache, mapping, block=block)
    reference.copy_blocks(ref_k, ref_v, mapping)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)


def test_copy_blocks_single_pair_and_empty():
    k_cache, v_cache = _caches(3, 3, 2, 5, torch.float32)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    copy_blocks(k_cache, v_cache, torch.empty(0, 2, dtype=torch.int64, device=DEVICE))
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)
    mapping = torch.tensor([[2, 0]], device=DEVICE)
    copy_blocks(k_cache, v_cache, mapping)
    reference.copy_blocks(ref_k, ref_v, mapping)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)


def test_cache_writes_refuse_non_contiguous_caches():
    # the raw ops are called past the Python checks: a flat offset would misplace a strided write
    k_cache, v_cache = _caches(4, 5, 2, 6, torch.float32)
    k_nc = k_cache.transpose(0, 1).contiguous().transpose(0, 1)
    assert not k_nc.is_contiguous()
    key = torch.randn(1, 2, 6, device=DEVICE)
    with pytest.raises(ValueError, match="contiguous"):
        reshape_and_cache(key, key, k_nc, v_cache, torch.tensor([3], device=DEVICE))
    with pytest.raises(ValueError, match="contiguous"):
        copy_blocks(k_nc, v_cache, torch.tensor([[0, 1]], device=DEVICE))


# ---------------------------------------------------------------------------------------------
# merge_attention_states


def _merge_inputs(n, h, d, dtype):
    out_a = torch.randn(n, h, d).to(dtype).to(DEVICE)
    out_b = torch.randn(n, h, d).to(dtype).to(DEVICE)
    lse_a = (3 * torch.randn(n, h)).to(DEVICE)
    lse_b = (3 * torch.randn(n, h)).to(DEVICE)
    return out_a, lse_a, out_b, lse_b


def _check_merge(got, inputs, dtype, atol, rtol):
    out, lse = got
    ref_out, ref_lse = reference.merge_attention_states(*inputs)
    assert out.dtype == dtype and lse.dtype == torch.float32
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=rtol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-6)  # -inf where both sides are empty


@pytest.mark.parametrize("dtype, atol, rtol", MERGE_DTYPES)
@pytest.mark.parametrize("d, rows", [(12, 4), (16, None)])
def test_merge_attention_states(dtype, atol, rtol, d, rows):
    # 7 x 3 = 21 (token, head) rows, 4 a program: six programs, the last part masked; an empty
    # prefix (lse_a -inf), an empty suffix (lse_b -inf) and a head with neither
    n, h = 7, 3
    out_a, lse_a, out_b, lse_b = _merge_inputs(n, h, d, dtype)
    lse_a[0] = -math.inf
    lse_b[1] = -math.inf
    lse_a[2, 1] = lse_b[2, 1] = -math.inf
    inputs = (out_a, lse_a, out_b, lse_b)
    got = merge_attention_states(*inputs, rows=rows)
    _check_merge(got, inputs, dtype, atol, rtol)
    # an empty side gives back the other side as it is; both empty give 0 and -inf
    assert torch.equal(got[0][0], out_b[0]) and torch.equal(got[0][1], out_a[1])
    assert torch.equal(got[1][0], lse_b[0]) and torch.equal(got[1][1], lse_a[1])
    assert bool((got[0][2, 1] == 0).all()) and got[1][2, 1].item() == -math.inf


def test_merge_attention_states_single_token_and_large_lse():
    # one token; lse far apart (1e3 apart: exp(lse) overflows fp32, the max-relative weights do not)
    inputs = _merge_inputs(1, 2, 5, torch.float32)
    inputs[1][0, 0], inputs[3][0, 0] = 1000.0, -5.0
    inputs[1][0, 1], inputs[3][0, 1] = 88.5, 89.0
    _check_merge(merge_attention_states(*inputs), inputs, torch.float32, 1e-5, 1e-5)
    out, lse = merge_attention_states(*_merge_inputs(0, 2, 5, torch.float32))
    assert out.shape == (0, 2, 5) and lse.shape == (0, 2)


def test_merge_attention_states_takes_pos_inf_for_an_empty_side():
    # vLLM's convention for a side with no keys is lse +inf: weight 0, as with -inf
    n, h, d = 4, 2, 8
    out_a, lse_a, out_b, lse_b = _merge_inputs(n, h, d, torch.float32)
    lse_a[0] = math.inf
    lse_b[1] = math.inf
    lse_a[2], lse_b[2] = math.inf, -math.inf
    lse_a[3], lse_b[3] = math.inf, math.inf
    out, lse = merge_attention_states(out_a, lse_a, out_b, lse_b, rows=4)
    assert torch.equal(out[0], out_b[0]) and torch.equal(lse[0], lse_b[0])
    assert torch.equal(out[1], out_a[1]) and torch.equal(lse[1], lse_a[1])
    assert bool((out[2:] == 0).all()) and torch.isneginf(lse[2:]).all()
