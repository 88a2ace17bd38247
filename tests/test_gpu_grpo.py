"""The GRPO ops on CUDA tensors, through the public API: the Triton kernels (or the CUDA C++ kernels
of csrc/cuda where r1kernels._C was built with them) against r1kernels.reference on the CPU.

Needs a GPU; skips with the reason where none is present. bf16 results must stay within 2x the
error that the same math in plain PyTorch makes in bf16 (flash-attention's criterion), measured
against float32 on the same bf16-rounded inputs.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import requires_cuda

import r1kernels
from r1kernels import reference
from r1kernels._torch import grpo_token_loss as torch_token_loss
from r1kernels._library import op

pytestmark = requires_cuda
FP32 = (torch.float32, 1e-4, 1e-4)
BF16 = (torch.bfloat16, 1e-2, 1e-2)


def _close(actual, expected, atol, rtol, what):
    torch.testing.assert_close(actual.detach().float().cpu(), expected.detach().float().cpu(), atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


def _within_torch_error(ours, lowp_torch, exact, atol, what):
    """|ours - exact| <= 2 |plain PyTorch in the low precision - exact| + atol, elementwise."""
    ours, lowp_torch, exact = (t.detach().float().cpu() for t in (ours, lowp_torch, exact))
    bound = 2 * (lowp_torch - exact).abs() + atol
    err = (ours - exact).abs()
    assert (err <= bound).all(), f"{what}: error {err.max().item():.3g} beyond 2x torch's own (worst excess {(err - bound).max().item():.3g})"


# ---------------------------------------------------------------------------------------------
# group advantages


@pytest.mark.parametrize("dtype, atol, rtol", [FP32, (torch.float64, 1e-10, 1e-10), BF16])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("leave_one_out", [False, True])
@pytest.mark.parametrize("G", [1, 8, 37, 1500])
def test_group_advantages_cuda(dtype, atol, rtol, scale, leave_one_out, G):
    num_groups = 6
    r = torch.randn(num_groups * G, dtype=torch.float64)
    rg = r.view(num_groups, G)
    rg[1] = 0.25  # zero variance
    rg[2, 0] = math.nan  # an unscorable sample
    rg[3] = math.nan  # no scorable sample
    r = r.to(dtype)
    adv, st = r1kernels.group_advantages(r.cuda(), G, scale=scale, leave_one_out=leave_one_out, return_stats=True)
    radv, rst = reference.group_advantages(r, G, scale, leave_one_out, 1e-4)
    assert adv.is_cuda and adv.dtype == dtype and st.zero_std.dtype == torch.bool
    _close(adv, radv, atol, rtol, "advantages")
    _close(st.mean, rst.mean, atol, rtol, "mean")
    _close(st.std, rst.std, atol, rtol, "std")
    assert torch.equal(st.zero_std.cpu(), rst.zero_std)


def test_group_advantages_cuda_rejects_inf():
    r = torch.zeros(8, device="cuda")
    r[3] = -math.inf
    with pytest.raises(ValueError, match="inf"):
        r1kernels.group_advantages(r, 4)
    with pytest.raises(ValueError, match="inf"):  # the op itself, past the Python checks
        op("group_advantages")(r, 4, 0, False, 1e-4)


# ---------------------------------------------------------------------------------------------
# fused GRPO loss

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"]


def _inputs(B, T, H, V, dtype, with_bias, temperature, beta):
    g = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    hidden = (torch.randn(B, T, H, generator=g) * 0.5).to(dtype)
    weight = (torch.randn(V, H, generator=g) / math.sqrt(H) * 2).to(dtype)
    bias = (torch.randn(V, generator=g) * 0.3).to(dtype) if with_bias else None
    targets = torch.randint(0, V, (B, T), generator=g)
    advantages = torch.randn(B, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.2
    mask[-1] = False  # a fully masked sequence
    cur = reference.token_logprobs(hidden, weight, targets, bias, temperature)
    old = cur + 0.3 * torch.randn(B, T, generator=g)
    ref = cur + 0.5 * torch.randn(B, T, generator=g) if beta else None
    return hidden, weight, bias, targets, advantages, mask, old, ref


@pytest.mark.parametrize("dtype, atol, rtol", [FP32])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("importance_sampling", ["token", "sequence"])
@pytest.mark.parametrize("beta, delta, temperature, with_bias", [(0.0, None, 1.0, False), (0.04, 1.5, 0.7, True)])
def test_grpo_loss_cuda(dtype, atol, rtol, loss_type, importance_sampling, beta, delta, temperature, with_bias):
    B, T, H, V = 4, 33, 64, 5003  # V spans two 4096-wide vocabulary blocks, the second partial
    hidden, weight, bias, targets, adv, mask, old, ref = _inputs(B, T, H, V, dtype, with_bias, temperature, beta)
    kw = dict(beta=beta, delta=delta, temperature=temperature, loss_type=loss_type, importance_sampling=importance_sampling,
              epsilon_high=5.0 if loss_type == "cispo" else 0.28)
    ours = _run_public(hidden.cuda(), weight.cuda(), None if bias is None else bias.cuda(), targets.cuda(), adv.cuda(),
                       mask.cuda(), old.cuda(), None if ref is None else ref.cuda(), kw)
    exact = _run_public(hidden, weight, bias, targets, adv, mask, old, ref, kw, use_reference=True)
    for name, a, e in zip(("loss", "grad hidden", "grad weight", "grad bias"), ours[:4], exact[:4]):
        if e is not None:
            _close(a, e, atol, rtol, name)
    for k in exact[4]:
        _close(ours[4][k], exact[4][k], atol, rtol, f"stats[{k}]")


def _run_public(hidden, weight, bias, targets, adv, mask, old, ref, kw, use_reference=False):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    b = bias.clone().requires_grad_() if bias is not None else None
    if use_reference:
        loss, stats = reference.grpo_loss(h, w, targets, adv, mask, old, ref, b, **kw)
    else:
        loss, stats = r1kernels.grpo_loss(h, w, targets, adv, mask=mask, old_logprobs=old, ref_logprobs=ref, bias=b, **kw)
    loss.backward()
    return loss, h.grad, w.grad, (b.grad if b is not None else None), stats


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_grpo_loss_cuda_bf16(loss_type):
    B, T, H, V = 4, 64, 128, 8011
    hidden, weight, bias, targets, adv, mask, old, ref = _inputs(B, T, H, V, torch.bfloat16, True, 1.0, 0.04)
    kw = dict(beta=0.04, loss_type=loss_type)
    ours = _run_public(hidden.cuda(), weight.cuda(), bias.cuda(), targets.cuda(), adv.cuda(), mask.cuda(), old.cuda(), ref.cuda(), kw)
    exact = _run_public(hidden.float(), weight.float(), bias.float(), targets, adv, mask, old, ref, kw, use_reference=True)

    # plain PyTorch in bf16 on the GPU: bf16 logits, then the reference's math
    def torch_bf16(h, w, b):
        return reference.grpo_loss_from_logits(h @ w.T + b, targets.cuda(), adv.cuda(), mask.cuda(), old.cuda(), ref.cuda(), **kw)[0]

    h, w, b = (t.cuda().clone().requires_grad_() for t in (hidden, weight, bias))
    lowp = torch_bf16(h, w, b)
    lowp.backward()
    for name, a, lp_, e in zip(("loss", "grad hidden", "grad weight", "grad bias"), ours[:4], (lowp, h.grad, w.grad, b.grad), exact[:4]):
        _within_torch_error(a, lp_, e, 1e-3 if name == "loss" else 1e-4, name)


@pytest.mark.parametrize("dtype, atol, rtol", [FP32])
def test_token_logprobs_cuda(dtype, atol, rtol):
    N, H, V = 50, 64, 4099
    hidden, weight, bias, targets, *_ = _inputs(1, N, H, V, dtype, True, 0.8, 0.0)
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


@pytest.mark.parametrize("dtype, atol, rtol", [FP32])
@pytest.mark.parametrize("loss_type", ["grpo", "cispo", "sapo"])
def test_grpo_loss_from_logits_cuda(dtype, atol, rtol, loss_type):
    B, T, V = 3, 17, 5001
    logits = torch.randn(B, T, V) * 3
    targets = torch.randint(0, V, (B, T))
    adv = torch.randn(B)
    mask = torch.rand(B, T) > 0.3
    cur = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    old, ref = cur + 0.3 * torch.randn(B, T), cur + 0.5 * torch.randn(B, T)
    kw = dict(beta=0.04, loss_type=loss_type, temperature=1.1, epsilon_high=5.0 if loss_type == "cispo" else 0.28)
    z = logits.cuda().requires_grad_()
    loss, stats = r1kernels.grpo_loss_from_logits(z, targets.cuda(), adv.cuda(), mask=mask.cuda(), old_logprobs=old.cuda(), ref_logprobs=ref.cuda(), **kw)
    loss.backward()
    zr = logits.detach().clone().requires_grad_()
    rloss, rstats = reference.grpo_loss_from_logits(zr, targets, adv, mask, old, ref, **kw)
    rloss.backward()
    _close(loss, rloss, atol, rtol, "loss")
    _close(z.grad, zr.grad, atol, rtol, "grad logits")
    for k in rstats:
        _close(stats[k], rstats[k], atol, rtol, f"stats[{k}]")


@pytest.mark.parametrize("loss_kind, delta, with_old", [(0, 1.5, True), (0, None, False), (1, None, True), (2, None, True)])
def test_grpo_token_loss_cuda(loss_kind, delta, with_old):
    N = 1000
    logp = -torch.rand(N) * 4
    scale = torch.rand(N)
    scale[::7] = 0
    adv = torch.randn(N)
    old = logp + 0.3 * torch.randn(N) if with_old else None
    ref = logp + 0.5 * torch.randn(N)
    args = (logp, scale, adv, old, ref, 0.04, 0.2, 5.0 if loss_kind == 1 else 0.28, delta, loss_kind, 1.0, 1.05)
    cuda_args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    loss, grad = op("grpo_token_loss")(*cuda_args)
    eloss, egrad = torch_token_loss.grpo_token_loss(*args)
    _close(loss, eloss, 1e-4, 1e-4, "loss")
    _close(grad, egrad, 1e-5, 1e-4, "grad")


def test_opcheck_cuda():
    N, H, V = 6, 16, 300
    h, w, b = torch.randn(N, H, device="cuda"), torch.randn(V, H, device="cuda"), torch.randn(V, device="cuda")
    t = torch.randint(0, V, (N,), device="cuda")
    s, a = torch.full((N,), 1.0 / N, device="cuda"), torch.randn(N, device="cuda")
    old = torch.randn(N, device="cuda") - 3
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(op("group_advantages"), (torch.randn(12, device="cuda"), 4, 0, False, 1e-4), test_utils=checks)
    torch.library.opcheck(op("fused_logprobs"), (h, w, b, t, 0.9), test_utils=checks)
    torch.library.opcheck(op("fused_grpo_loss"), (h, w, b, t, s, a, old, None, 0.0, 0.2, 0.2, None, 1.0, 0, 1.0, 1.05, True), test_utils=checks)
    torch.library.opcheck(op("logits_grpo_loss"), (h @ w.T, t, s, a, old, None, 0.0, 0.2, 0.2, 2.0, 1.0, 0, 1.0, 1.05, True), test_utils=checks)
    torch.library.opcheck(op("grpo_token_loss"), (old, s, a, None, None, 0.0, 0.2, 0.2, None, 0, 1.0, 1.05), test_utils=checks)
