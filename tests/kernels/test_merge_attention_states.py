"""r1kernels.merge_attention_states (the logsumexp merge of two partial attentions over disjoint key
sets: cascade / shared-prefix attention, split-KV decode) against reference.merge_attention_states:
an empty side as -inf or as vLLM's +inf, both sides empty, and the cascade equal to full attention.

The tests named with a `backend` run the public function on each backend present (tests/kernels/
_backends.py): the C++ kernel, the plain-PyTorch kernel of r1kernels._torch and, where the shapes are
small enough for the interpreter, the Triton kernel under TRITON_INTERPRET=1. The test_triton_*
tests drive the Triton launchers directly on interpreter-sized shapes (chunk and block loops that
run more than once); the *_cuda tests run on a GPU and skip without one.
"""

from __future__ import annotations

import math

import pytest
import torch
from _backends import backend_fixture, triton_module
from _paged_inputs import DTYPES, check_close, cu, make_cache
from _triton_cases import MERGE_DTYPES, _check_merge, _merge_inputs

import r1kernels
from r1kernels import reference

backend = backend_fixture("merge_attention_states")
cascade_backend = backend_fixture("merge_attention_states", "paged_attention", backends=("cpp", "torch"))
tma = triton_module("merge_attention_states")


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_cascade_merge_equals_full_attention(cascade_backend, dtype, atol, rtol):
    """G samples share a prompt's leading blocks: prefix attention once for the group (causal=False,
    all the group's rows as one sequence), suffix per sample, merged = attention over the union."""
    bs, hq, hkv, d, G = 8, 4, 2, 16, 4
    prefix_blocks = 3
    P = prefix_blocks * bs
    suffix = [int(x) for x in torch.randint(1, 20, (G,))]
    q_lens = [int(torch.randint(1, n + 1, ())) for n in suffix]
    kc, vc, table, sl = make_cache([P + n for n in suffix], bs, hkv, d, dtype, max_blocks=8)
    table[:, :prefix_blocks] = table[0, :prefix_blocks]  # the shared prompt blocks
    q = torch.randn(sum(q_lens), hq, d).to(dtype)
    cq = cu(q_lens)
    full, full_lse = reference.paged_attention(q, kc, vc, table, sl, cq)
    out_p, lse_p = r1kernels.paged_attention(q, kc, vc, table[:1], torch.tensor([P], dtype=torch.int32), cu([sum(q_lens)]),
                                             causal=False, return_lse=True)
    out_s, lse_s = r1kernels.paged_attention(q, kc, vc, table[:, prefix_blocks:].contiguous(), sl - P, cq, return_lse=True)
    out, lse = r1kernels.merge_attention_states(out_p, lse_p, out_s, lse_s)
    check_close(out, full, dtype, 2 * atol, 2 * rtol)
    torch.testing.assert_close(lse, full_lse, atol=1e-4, rtol=1e-4)


def test_merge_handles_neg_inf(backend):
    n, h, d = 6, 3, 8
    oa, ob = torch.randn(n, h, d), torch.randn(n, h, d)
    la, lb = torch.randn(n, h), torch.randn(n, h)
    la[0] = -math.inf
    lb[1] = -math.inf
    la[2] = lb[2] = -math.inf
    out, lse = r1kernels.merge_attention_states(oa, la, ob, lb)
    ref, ref_lse = reference.merge_attention_states(oa, la, ob, lb)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse, ref_lse)
    torch.testing.assert_close(out[0], ob[0])
    torch.testing.assert_close(out[1], oa[1])
    assert torch.equal(out[2], torch.zeros_like(out[2])) and torch.isneginf(lse[2]).all()
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("merge", [r1kernels.merge_attention_states, reference.merge_attention_states], ids=["op", "reference"])
def test_merge_takes_vllm_pos_inf_for_an_empty_side(backend, merge):
    # vLLM (and FlashAttention) write an empty side's lse as +inf: it has no weight, as -inf has
    n, h, d = 4, 2, 8
    oa, ob = torch.randn(n, h, d), torch.randn(n, h, d)
    la, lb = torch.randn(n, h), torch.randn(n, h)
    la[0] = math.inf
    lb[1] = math.inf
    la[2], lb[2] = math.inf, -math.inf
    la[3], lb[3] = math.inf, math.inf
    out, lse = merge(oa, la, ob, lb)
    torch.testing.assert_close(out[0], ob[0])
    torch.testing.assert_close(lse[0], lb[0])
    torch.testing.assert_close(out[1], oa[1])
    torch.testing.assert_close(lse[1], la[1])
    # both sides empty, in either convention: out 0 and lse -inf, as the docstring says
    assert torch.equal(out[2:], torch.zeros_like(out[2:])) and torch.isneginf(lse[2:]).all()


def test_bad_input():
    key = torch.randn(3, 1, 8)
    with pytest.raises(ValueError, match="lse_b must be"):
        r1kernels.merge_attention_states(key, torch.zeros(3, 1), key, torch.zeros(3, 1, dtype=torch.float64))


def test_opcheck():
    out, lse = torch.randn(3, 4, 8), torch.randn(3, 4)
    torch.library.opcheck(torch.ops.r1kernels.merge_attention_states.default, (out, lse, out.clone(), lse.clone()))


# ---------------------------------------------------------------------------------------------
# Triton launcher


@pytest.mark.parametrize("dtype, atol, rtol", MERGE_DTYPES)
@pytest.mark.parametrize("d, rows", [(12, 4), (16, None)])
def test_triton_launcher(dtype, atol, rtol, d, rows):
    # 7 x 3 = 21 (token, head) rows, 4 a program: six programs, the last part masked; an empty
    # prefix (lse_a -inf), an empty suffix (lse_b -inf) and a head with neither
    n, h = 7, 3
    out_a, lse_a, out_b, lse_b = _merge_inputs(n, h, d, dtype)
    lse_a[0] = -math.inf
    lse_b[1] = -math.inf
    lse_a[2, 1] = lse_b[2, 1] = -math.inf
    inputs = (out_a, lse_a, out_b, lse_b)
    got = tma.merge_attention_states(*inputs, rows=rows)
    _check_merge(got, inputs, dtype, atol, rtol)
    # an empty side gives back the other side as it is; both empty give 0 and -inf
    assert torch.equal(got[0][0], out_b[0]) and torch.equal(got[0][1], out_a[1])
    assert torch.equal(got[1][0], lse_b[0]) and torch.equal(got[1][1], lse_a[1])
    assert bool((got[0][2, 1] == 0).all()) and got[1][2, 1].item() == -math.inf


def test_triton_single_token_and_large_lse():
    # one token; lse far apart (1e3 apart: exp(lse) overflows fp32, the max-relative weights do not)
    inputs = _merge_inputs(1, 2, 5, torch.float32)
    inputs[1][0, 0], inputs[3][0, 0] = 1000.0, -5.0
    inputs[1][0, 1], inputs[3][0, 1] = 88.5, 89.0
    _check_merge(tma.merge_attention_states(*inputs), inputs, torch.float32, 1e-5, 1e-5)
    out, lse = tma.merge_attention_states(*_merge_inputs(0, 2, 5, torch.float32))
    assert out.shape == (0, 2, 5) and lse.shape == (0, 2)


def test_triton_takes_pos_inf_for_an_empty_side():
    # vLLM's convention for a side with no keys is lse +inf: weight 0, as with -inf
    n, h, d = 4, 2, 8
    out_a, lse_a, out_b, lse_b = _merge_inputs(n, h, d, torch.float32)
    lse_a[0] = math.inf
    lse_b[1] = math.inf
    lse_a[2], lse_b[2] = math.inf, -math.inf
    lse_a[3], lse_b[3] = math.inf, math.inf
    out, lse = tma.merge_attention_states(out_a, lse_a, out_b, lse_b, rows=4)
    assert torch.equal(out[0], out_b[0]) and torch.equal(lse[0], lse_b[0])
    assert torch.equal(out[1], out_a[1]) and torch.equal(lse[1], lse_a[1])
    assert bool((out[2:] == 0).all()) and torch.isneginf(lse[2:]).all()
