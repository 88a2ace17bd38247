"""The grpo_token_loss op (the GRPO loss from given log-probs, no public function): the C++ kernel
against the plain-PyTorch one, opcheck, the Triton launcher against both and against autograd, and
the CUDA kernel.
"""

from __future__ import annotations

import pytest
import torch
from _backends import triton_module
from _triton_cases import DEVICE, FP32, _close
from conftest import requires_cuda

from r1kernels._library import op
from r1kernels._torch import grpo_token_loss as torch_token_loss

tgtl = triton_module("grpo_token_loss")


def test_opcheck_grpo_token_loss():
    logp = -torch.rand(12) * 3
    scale = (torch.rand(12) < 0.7).float() / 5
    args = (logp.requires_grad_(), scale, torch.randn(12), logp.detach() + 0.1 * torch.randn(12), logp.detach() + 0.1 * torch.randn(12),
            0.04, 0.2, 0.28, 1.5, 0, 1.0, 1.05)
    torch.library.opcheck(op("grpo_token_loss"), args)


@pytest.mark.parametrize("loss_kind", [0, 1, 2])
def test_grpo_token_loss_matches_torch_kernel(loss_kind):
    from r1kernels._torch import grpo_token_loss as torch_token_loss

    logp = -torch.rand(50) * 3
    scale = (torch.rand(50) < 0.7).float() / 7
    args = (logp, scale, torch.randn(50), logp + 0.2 * torch.randn(50), logp + 0.2 * torch.randn(50), 0.04, 0.2,
            0.28 if loss_kind != 1 else 4.0, 1.3 if loss_kind == 0 else None, loss_kind, 1.0, 1.05)
    for a, b in zip(op("grpo_token_loss")(*args), torch_token_loss.grpo_token_loss(*args)):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------
# Triton launcher


@pytest.mark.parametrize("dtype, atol, rtol", FP32)
@pytest.mark.parametrize("loss_kind, beta, delta, with_old",
                         [(0, 0.04, 1.5, True), (0, 0.0, None, False), (1, 0.04, None, True), (2, 0.1, None, True)])
def test_triton_launcher(dtype, atol, rtol, loss_kind, beta, delta, with_old):
    N = 37  # not a multiple of the block of 16
    logp = -torch.rand(N, device=DEVICE) * 4
    scale = torch.rand(N, device=DEVICE)
    scale[::5] = 0  # masked tokens
    adv = torch.randn(N, device=DEVICE)
    old = logp + 0.3 * torch.randn(N, device=DEVICE) if with_old else None
    ref = logp + 0.5 * torch.randn(N, device=DEVICE)
    args = (logp, scale, adv, old, ref, beta, 0.2, 1.2 if loss_kind == 1 else 0.28, delta, loss_kind, 1.0, 1.05)
    loss, grad = tgtl.grpo_token_loss(*args, block=16)
    eloss, egrad = torch_token_loss.grpo_token_loss(*args)
    _close(loss, eloss, atol, rtol, "loss")
    _close(grad, egrad, atol, rtol, "grad")
    assert (grad[::5] == 0).all()
    # and the closed-form gradient is the derivative of the loss
    lp = logp.clone().requires_grad_()
    fixed_old = logp.clone() if old is None else old  # on-policy: old is the detached current logp
    per, _ = torch_token_loss.token_loss_and_grad(lp, adv, fixed_old, ref, beta, 0.2, args[7], delta, loss_kind, 1.0, 1.05)
    if loss_kind == 1:  # cispo's weight is a stop-gradient constant: differentiate through logp only
        w = torch.exp(logp - fixed_old).clamp(max=args[7])
        per = -w * adv * lp + (beta * (torch.exp(ref - lp) - (ref - lp) - 1) if beta else 0)
    (per * scale).sum().backward()
    _close(grad, lp.grad, atol, rtol, "grad vs autograd")


# ---------------------------------------------------------------------------------------------
# CUDA


@requires_cuda
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
