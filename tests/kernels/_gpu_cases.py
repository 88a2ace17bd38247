"""Inputs and checks of the GRPO tests on CUDA tensors. bf16 results must stay within 2x the error that
the same math in plain PyTorch makes in bf16 (flash-attention's criterion), measured against float32
on the same bf16-rounded inputs."""

from __future__ import annotations

import math

import torch

import r1kernels
from r1kernels import reference

GPU_FP32 = (torch.float32, 1e-4, 1e-4)

GPU_BF16 = (torch.bfloat16, 1e-2, 1e-2)


def _within_torch_error(ours, lowp_torch, exact, atol, what):
    """|ours - exact| <= 2 |plain PyTorch in the low precision - exact| + atol, elementwise."""
    ours, lowp_torch, exact = (t.detach().float().cpu() for t in (ours, lowp_torch, exact))
    bound = 2 * (lowp_torch - exact).abs() + atol
    err = (ours - exact).abs()
    assert (err <= bound).all(), (f"{what}: error {err.max().item():.3g} beyond 2x torch's own "
                                  f"(worst excess {(err - bound).max().item():.3g})")

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"]


def _gpu_inputs(B, T, H, V, dtype, with_bias, temperature, beta):
    g = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    hidden = (torch.randn(B, T, H, generator=g) * 0.5).to(dtype)
    weight = (torch.randn(V, H, generator=g) / math.sqrt(H) * 2).to(dtype)
    bias = (torch.randn(V, generator=g) * 0.3).to(dtype) if with_bias else None
    targets = torch.randint(0, V, (B, T), generator=g)
    advantages = torch.randn(B, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.2
    mask[-1] = False  # a fully masked sequence
    cur = reference.token_logprobs(hidden, weight, targets, bias, temperature)
    old = (cur + 0.3 * torch.randn(B, T, generator=g)).clamp(max=0.0)  # log-probs: never above 0
    ref = (cur + 0.5 * torch.randn(B, T, generator=g)).clamp(max=0.0) if beta else None
    return hidden, weight, bias, targets, advantages, mask, old, ref


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
