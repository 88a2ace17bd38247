"""r1kernels.token_logprobs (the fused_logprobs op and its backward) against reference.token_logprobs:
log-probs, entropy and the gradients of hidden, weight and bias.

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
from _gpu_cases import GPU_FP32, _gpu_inputs
from _triton_cases import BLOCK_V, CHUNK, DEVICE, FP32, _close, _head
from conftest import requires_cuda

import r1kernels
from r1kernels import reference
from r1kernels._library import has_cpp_kernel, op
from r1kernels._torch import token_logprobs as torch_token_logprobs

backend = backend_fixture("fused_logprobs", "fused_logprobs_backward")
ttl = triton_module("token_logprobs")

DTYPES = [(torch.float32, 1e-5, 1e-4), (torch.bfloat16, 1e-4, 2e-2)]


def test_cpu_kernels_are_the_fast_path():
    assert has_cpp_kernel("fused_logprobs") and has_cpp_kernel("fused_logprobs_backward")


def _inputs(lead, H, V, dtype, bias):
    hidden = torch.randn(*lead, H).to(dtype).requires_grad_()
    weight = (torch.randn(V, H) * (2.0 / H**0.5)).to(dtype).requires_grad_()
    b = (torch.randn(V) * 0.5).to(dtype).requires_grad_() if bias else None
    return hidden, weight, b, torch.randint(0, V, lead)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize(
    "lead, H, V, bias, temperature",
    [((3, 5), 16, 301, True, 0.7), ((1,), 8, 50, False, 1.0), ((2, 3), 8, 8192 + 77, True, 1.3), ((4,), 24, 8192, False, 1.0)],
)
@pytest.mark.parametrize("with_entropy", [False, True])
def test_matches_reference(backend, lead, H, V, bias, temperature, with_entropy, dtype, atol, rtol):
    hidden, weight, b, targets = _inputs(lead, H, V, dtype, bias)
    params = [hidden, weight] + ([b] if bias else [])
    outs = []
    for fn in (r1kernels.token_logprobs, reference.token_logprobs):
        res = fn(hidden, weight, targets, bias=b, temperature=temperature, return_entropy=with_entropy)
        lp, ent = res if with_entropy else (res, None)
        # random cotangents on both outputs: the backward must get the entropy term right too
        torch.manual_seed(1234)
        obj = (lp * torch.randn_like(lp)).sum() + ((ent * torch.randn_like(ent)).sum() if with_entropy else 0)
        outs.append((lp, ent, torch.autograd.grad(obj, params)))
    (lp1, e1, g1), (lp2, e2, g2) = outs
    assert lp1.dtype == torch.float32 and lp1.shape == lead
    torch.testing.assert_close(lp1, lp2, atol=atol * 10, rtol=rtol)
    if with_entropy:
        torch.testing.assert_close(e1, e2, atol=atol * 10, rtol=rtol)
    for name, a, c in zip(("hidden", "weight", "bias"), g1, g2):
        assert a.dtype == c.dtype
        torch.testing.assert_close(a.float(), c.float(), atol=atol, rtol=rtol, msg=lambda m: f"grad of {name}: {m}")


def test_extreme_logits_stay_finite(backend):
    # logits of +-80 at temperature 0.5: the online rescaling must not overflow or lose the target
    hidden = torch.randn(6, 4)
    weight = torch.randn(9000, 4) * 40
    targets = torch.randint(0, 9000, (6,))
    lp, ent = r1kernels.token_logprobs(hidden, weight, targets, temperature=0.5, return_entropy=True)
    lr, er = reference.token_logprobs(hidden, weight, targets, temperature=0.5, return_entropy=True)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    torch.testing.assert_close(lp, lr, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(ent, er, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(targets=torch.full((2, 3), 50)), "targets must lie in"),
        (dict(targets=torch.zeros(2, 3, dtype=torch.int32)), "targets must be int64"),
        (dict(targets=torch.zeros(3, 2, dtype=torch.long)), "targets must have shape"),
        (dict(weight=torch.randn(50, 7)), "must equal weight's H"),
        (dict(bias=torch.zeros(49)), "bias must have shape"),
        (dict(temperature=-1.0), "temperature must be > 0"),
        (dict(hidden=torch.ones(2, 3, 8, dtype=torch.long)), "must be floating point"),
    ],
)
def test_bad_input_raises(change, match):
    args = dict(hidden=torch.randn(2, 3, 8), weight=torch.randn(50, 8), targets=torch.randint(0, 50, (2, 3)), bias=None, temperature=1.0)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        r1kernels.token_logprobs(args.pop("hidden"), args.pop("weight"), args.pop("targets"), **args)


def test_cpp_op_rejects_targets_outside_vocab():
    with pytest.raises(ValueError, match="targets must lie in"):
        op("fused_logprobs")(torch.randn(3, 4), torch.randn(10, 4), None, torch.tensor([0, 10, 2]), 1.0)


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    hidden, weight, b, targets = _inputs((5,), 8, 37, torch.float32, bias)
    torch.library.opcheck(op("fused_logprobs"), (hidden, weight, b, targets, 0.8))
    with torch.no_grad():
        _, ent, lse = op("fused_logprobs")(hidden, weight, b, targets, 0.8)
    args = (torch.randn(5), torch.randn(5), hidden.detach(), weight.detach(), None if b is None else b.detach(), targets, lse, ent, 0.8)
    torch.library.opcheck(op("fused_logprobs_backward"), args)


# ---------------------------------------------------------------------------------------------
# Triton launchers


@pytest.mark.parametrize("dtype, atol, rtol", FP32)
@pytest.mark.parametrize("with_bias, temperature, grad_entropy", [(True, 0.8, True), (False, 1.0, False)])
def test_triton_forward_backward(dtype, atol, rtol, with_bias, temperature, grad_entropy):
    N, H, V = 7, 16, 150
    hidden, weight, bias, targets = _head(1, N, H, V, dtype, with_bias)
    hidden, targets = hidden[0], targets[0]
    logp, entropy, lse = ttl.fused_logprobs(hidden, weight, bias, targets, temperature, chunk_size=CHUNK, block_v=BLOCK_V)
    elogp, eent, else_ = torch_token_logprobs.fused_logprobs(hidden, weight, bias, targets, temperature)
    _close(logp, elogp, atol, rtol, "logp")
    _close(entropy, eent, atol, rtol, "entropy")
    _close(lse, else_, atol, rtol, "lse")

    g_lp = torch.randn(N, device=DEVICE)
    g_h = torch.randn(N, device=DEVICE) if grad_entropy else None
    gh, gw, gb = ttl.fused_logprobs_backward(g_lp, g_h, hidden, weight, bias, targets, lse, entropy, temperature,
                                             chunk_size=CHUNK, block_v=BLOCK_V)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    b = bias.clone().requires_grad_() if with_bias else None
    rlogp, rent = reference.token_logprobs(h, w, targets, b, temperature, return_entropy=True)
    obj = (rlogp * g_lp).sum() + ((rent * g_h).sum() if grad_entropy else 0.0)
    obj.backward()
    _close(gh, h.grad, atol, rtol, "grad hidden")
    _close(gw, w.grad, atol, rtol, "grad weight")
    if with_bias:
        _close(gb, b.grad, atol, rtol, "grad bias")
    else:
        assert gb.numel() == 0


# ---------------------------------------------------------------------------------------------
# CUDA


@requires_cuda
@pytest.mark.parametrize("dtype, atol, rtol", [GPU_FP32])
def test_token_logprobs_cuda(dtype, atol, rtol):
    N, H, V = 50, 64, 4099
    hidden, weight, bias, targets, *_ = _gpu_inputs(1, N, H, V, dtype, True, 0.8, 0.0)
    g_lp, g_h = torch.randn(1, N), torch.randn(1, N)
    results = []
    for dev, fn in (("cuda", r1kernels.token_logprobs), ("cpu", reference.token_logprobs)):
        h, w, b = (t.to(dev).clone().requires_grad_() for t in (hidden, weight, bias))
        if fn is r1kernels.token_logprobs:
            lp, ent = fn(h, w, targets.to(dev), bias=b, temperature=0.8, return_entropy=True)
        else:
            lp, ent = fn(h, w, targets, b, 0.8, return_entropy=True)
        ((lp * g_lp.to(dev)).sum() + (ent * g_h.to(dev)).sum()).backward()
        results.append((lp, ent, h.grad, w.grad, b.grad))
    for name, a, e in zip(("logp", "entropy", "grad hidden", "grad weight", "grad bias"), *results):
        _close(a, e, atol, rtol, name)
