"""r1kernels.paged_attention against the reference (attention on the gathered, contiguous KV):
shuffled block tables, lengths across block boundaries, decode / prefill / chunked prefill, GQA,
lse, empty sequences, bad input, opcheck; on CUDA the paged-cache ops together.

The tests named with a `backend` run the public function on each backend present (tests/kernels/
_backends.py): the C++ kernel, the plain-PyTorch kernel of r1kernels._torch and, where the shapes are
small enough for the interpreter, the Triton kernel under TRITON_INTERPRET=1. The test_triton_*
tests drive the Triton launchers directly on interpreter-sized shapes (chunk and block loops that
run more than once); the *_cuda tests run on a GPU and skip without one.
The prefill cases are too large for the interpreter: Triton runs the launcher test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _backends import backend_fixture
from _paged_inputs import DTYPES, _args, check_close, cu, make_cache
from conftest import requires_cuda

import r1kernels
from r1kernels import reference
from r1kernels._library import has_cpp_kernel

backend = backend_fixture("paged_attention", backends=("cpp", "torch"))
small_backend = backend_fixture("paged_attention")  # the small cases run on Triton too


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("hq,hkv,d", [(4, 2, 32), (3, 3, 20), (8, 1, 64), (2, 2, 16), (4, 4, 128)])
def test_decode(small_backend, dtype, atol, rtol, hq, hkv, d):
    # head sizes 16-128 take the C++ kernel's one-item-per-sequence decode path (float32), 20 the general one
    seq_lens = [1, 16, 17, 37, 5, 64, 300]
    kc, vc, table, sl = make_cache(seq_lens, 16, hkv, d, dtype)
    q = torch.randn(len(seq_lens), hq, d).to(dtype)
    cq = cu([1] * len(seq_lens))
    out, lse = r1kernels.paged_attention(q, kc, vc, table, sl, cq, return_lse=True)
    ref, ref_lse = reference.paged_attention(q, kc, vc, table, sl, cq)
    check_close(out, ref, dtype, atol, rtol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("block_size", [16, 5])
def test_prefill_and_chunked_prefill(backend, dtype, atol, rtol, causal, block_size):
    seq_lens = [int(x) for x in torch.randint(1, 70, (5,))] + [1, 33]
    q_lens = [int(torch.randint(1, n + 1, ())) for n in seq_lens]
    q_lens[0] = seq_lens[0]  # a whole prefill
    hq, hkv, d = 6, 2, 32
    kc, vc, table, sl = make_cache(seq_lens, block_size, hkv, d, dtype, max_blocks=20)
    q = torch.randn(sum(q_lens), hq, d).to(dtype)
    cq = cu(q_lens)
    scale = 0.3
    out, lse = r1kernels.paged_attention(q, kc, vc, table, sl, cq, scale=scale, causal=causal, return_lse=True)
    ref, ref_lse = reference.paged_attention(q, kc, vc, table, sl, cq, scale, causal)
    check_close(out, ref, dtype, atol, rtol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)


def test_reference_matches_sdpa_on_contiguous_kv():
    # the oracle itself against torch's attention: one sequence, cache in table order
    L, ql, hq, hkv, d, bs = 45, 7, 4, 2, 16, 8
    kc, vc, table, sl = make_cache([L], bs, hkv, d, torch.float32)
    q = torch.randn(ql, hq, d)
    out, _ = reference.paged_attention(q, kc, vc, table, sl, cu([ql]))
    k = kc[table[0].long()].reshape(-1, hkv, d)[:L].repeat_interleave(hq // hkv, 1)
    v = vc[table[0].long()].reshape(-1, hkv, d)[:L].repeat_interleave(hq // hkv, 1)
    mask = torch.arange(L).unsqueeze(0) <= (L - ql + torch.arange(ql)).unsqueeze(1)
    sdpa = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask)
    torch.testing.assert_close(out, sdpa.transpose(0, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("d", [8, 32])
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES[:1])
def test_empty_sequences_one_query_each(small_backend, dtype, atol, rtol, d):
    # a decode-shaped call (one query row per sequence), not causal, with sequences of no kv tokens
    kc, vc, table, sl = make_cache([0, 9, 0, 3], 4, 2, d, dtype)
    q = torch.randn(4, 4, d).to(dtype)
    cq = cu([1, 1, 1, 1])
    out, lse = r1kernels.paged_attention(q, kc, vc, table, sl, cq, causal=False, return_lse=True)
    assert torch.equal(out[[0, 2]], torch.zeros_like(out[[0, 2]]))
    assert torch.isneginf(lse[[0, 2]]).all()
    ref, ref_lse = reference.paged_attention(q, kc, vc, table, sl, cq, None, False)
    check_close(out, ref, dtype, atol, rtol)
    torch.testing.assert_close(lse, ref_lse)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES[:1])
def test_empty_sequences(small_backend, dtype, atol, rtol):
    # a sequence with no kv tokens (causal=False, rows present) gives out 0 and lse -inf; a sequence
    # with no query rows is skipped
    kc, vc, table, sl = make_cache([0, 9, 0], 4, 1, 8, dtype)
    q = torch.randn(5, 2, 8).to(dtype)
    cq = cu([2, 3, 0])
    out, lse = r1kernels.paged_attention(q, kc, vc, table, sl, cq, causal=False, return_lse=True)
    assert torch.equal(out[:2], torch.zeros_like(out[:2]))
    assert torch.isneginf(lse[:2]).all()
    ref, ref_lse = reference.paged_attention(q, kc, vc, table, sl, cq, None, False)
    check_close(out, ref, dtype, atol, rtol)
    torch.testing.assert_close(lse, ref_lse)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: a.update(q=a["q"][0]), "q must be a 3-D"),
        (lambda a: a.update(q=a["q"].double()), "q must have the cache's dtype"),
        (lambda a: a.update(q=torch.randn(3, 3, 8)), "multiple of k_cache's kv heads"),
        (lambda a: a.update(q=torch.randn(3, 4, 6)), "head_dim"),
        (lambda a: a.update(v_cache=a["v_cache"][:-1]), "v_cache must match k_cache"),
        (lambda a: a.update(k_cache=a["k_cache"].int(), v_cache=a["v_cache"].int()), "k_cache must be float32"),
        (lambda a: a.update(block_tables=a["block_tables"].long()), "block_tables must be int32"),
        (lambda a: a.update(seq_lens=a["seq_lens"].long()), "seq_lens must be"),
        (lambda a: a.update(seq_lens=torch.tensor([5, 13], dtype=torch.int32)), "seq_lens must be in"),
        (lambda a: a.update(seq_lens=torch.tensor([5], dtype=torch.int32)), "seq_lens must have 2"),
        (lambda a: a["block_tables"].__setitem__((1, 0), 99), "block ids outside"),
        (lambda a: a["block_tables"].__setitem__((0, 1), -1), "block ids outside"),
        (lambda a: a.update(cu_seqlens_q=torch.tensor([0, 2, 1], dtype=torch.int32)), "cu_seqlens_q must start at 0"),
        (lambda a: a.update(cu_seqlens_q=torch.tensor([0, 1, 2], dtype=torch.int32)), "cu_seqlens_q must start at 0"),
        (lambda a: a.update(seq_lens=torch.tensor([0, 9], dtype=torch.int32)), "seq_lens must be >= each sequence's query count"),
    ],
)
def test_paged_attention_bad_input(mutate, match):
    q, kc, vc, table, sl, cq = _args()
    a = dict(q=q, k_cache=kc, v_cache=vc, block_tables=table, seq_lens=sl, cu_seqlens_q=cq)
    mutate(a)
    with pytest.raises(ValueError, match=match):
        r1kernels.paged_attention(**a)


def test_opcheck():
    q, kc, vc, table, sl, cq = _args()
    torch.library.opcheck(torch.ops.r1kernels.paged_attention.default, (q, kc, vc, table, sl, cq, 0.5, True))


def test_cpu_kernels_registered():
    # the engine's speed on a CPU machine depends on the C++ kernels; fails where _C lacks them
    for name in ("paged_attention", "reshape_and_cache", "copy_blocks", "merge_attention_states", "tree_attention"):
        assert has_cpp_kernel(name, "cpu"), f"r1kernels::{name} has no C++ CPU kernel"


def test_raw_op_with_non_contiguous_cache_is_refused_or_right():
    # the engine calls torch.ops.r1kernels directly, past the Python checks: a cache the kernel
    # cannot read as laid out must be refused (C++ kernel) or read correctly (fallback), never misread
    kc, vc, table, sl = make_cache([9, 20], 4, 2, 8, torch.float32)
    kc_nc, vc_nc = kc.transpose(0, 1).contiguous().transpose(0, 1), vc.transpose(0, 1).contiguous().transpose(0, 1)
    assert not kc_nc.is_contiguous() and torch.equal(kc_nc, kc)
    q, cq = torch.randn(3, 4, 8), cu([1, 2])
    try:
        out, _ = torch.ops.r1kernels.paged_attention(q, kc_nc, vc_nc, table, sl, cq, 0.35, True)
    except ValueError as e:
        assert "contiguous" in str(e)
    else:
        torch.testing.assert_close(out, reference.paged_attention(q, kc, vc, table, sl, cq, 0.35)[0])


# ---------------------------------------------------------------------------------------------
# Triton launcher


@pytest.mark.parametrize(
    "causal,dtype,atol,rtol,lse_tol",
    [(True, torch.float32, 2e-5, 2e-5, 1e-5), (False, torch.float32, 2e-5, 2e-5, 1e-5), (True, torch.bfloat16, 2e-2, 2e-2, 1e-4)],
)
def test_triton_paged_attention(causal, dtype, atol, rtol, lse_tol):
    # the Triton kernel itself (under TRITON_INTERPRET=1 on a CPU machine): tiny shapes, block_size
    # and head_dim not powers of two, an empty sequence; bf16 caches too (the kernel loads them into
    # fp32, which the interpreter does, and rounds only the stored out)
    from r1kernels.triton.paged_attention import (
        paged_attention as triton_paged_attention,
    )

    seq_lens = [1, 11, 0, 7]
    q_lens = [1, 4, 0, 7] if causal else [1, 4, 2, 7]
    kc, vc, table, sl = make_cache(seq_lens, 5, 2, 12, dtype, max_blocks=4)
    q, cq = torch.randn(sum(q_lens), 4, 12).to(dtype), cu(q_lens)
    if torch.cuda.is_available():
        q, kc, vc, table, sl, cq = (x.cuda() for x in (q, kc, vc, table, sl, cq))
    out, lse = triton_paged_attention(q, kc, vc, table, sl, cq, 0.3, causal)
    ref, ref_lse = reference.paged_attention(q, kc, vc, table, sl, cq, 0.3, causal)
    check_close(out, ref, dtype, atol, rtol)
    torch.testing.assert_close(lse, ref_lse, atol=lse_tol, rtol=lse_tol)


# ---------------------------------------------------------------------------------------------
# CUDA


@requires_cuda
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_cuda_ops_against_reference(dtype, atol, rtol):
    # whatever the CUDA key runs (the CUDA C++ kernels where built, else Triton / the fallback)
    seq_lens = [1, 17, 40, 9]
    q_lens = [1, 17, 6, 1]
    kc, vc, table, sl = make_cache(seq_lens, 16, 2, 64, dtype, max_blocks=4)
    kc, vc, table, sl = kc.cuda(), vc.cuda(), table.cuda(), sl.cuda()
    q, cq = torch.randn(sum(q_lens), 8, 64).to(dtype).cuda(), cu(q_lens).cuda()
    out, lse = r1kernels.paged_attention(q, kc, vc, table, sl, cq, return_lse=True)
    ref, ref_lse = reference.paged_attention(q, kc, vc, table, sl, cq)
    check_close(out, ref, dtype, atol, rtol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)
    key = torch.randn(3, 2, 64).to(dtype).cuda()
    slots = torch.tensor([5, -1, 70], device="cuda")
    rk, rv = kc.clone(), vc.clone()
    r1kernels.reshape_and_cache(key, key, kc, vc, slots)
    reference.reshape_and_cache(key, key, rk, rv, slots)
    assert torch.equal(kc, rk) and torch.equal(vc, rv)
    mapping = torch.tensor([[0, 9], [3, 10]], device="cuda")
    r1kernels.copy_blocks(kc, vc, mapping)
    reference.copy_blocks(rk, rv, mapping)
    assert torch.equal(kc, rk) and torch.equal(vc, rv)
    merged, merged_lse = r1kernels.merge_attention_states(out, lse, ref, ref_lse)
    torch.testing.assert_close(merged_lse, ref_lse + math.log(2), atol=1e-4, rtol=1e-4)
