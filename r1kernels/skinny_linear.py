"""y = x W^T + b for a few rows of x: the linear layers of a decode step (one row per sequence or
beam), where BLAS, tuned for large matrices, is slow.

x [..., K] (at most `MAX_ROWS` rows in all once flattened is where it pays; any count works),
weight [N, K], bias [N] or None; returns [..., N] in x's dtype. The C++ CPU kernel handles
float32 with AVX-512 or AVX2 (picked at run time) and reads each weight row once per call; other
dtypes and devices, and CPUs without those instructions, go to `torch.nn.functional.linear`.
Inference only: inputs that require a gradient go to `F.linear` too, so autograd is unchanged.
Results equal `F.linear`'s to float32 rounding (a different summation order), not bitwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from r1kernels._library import op

MAX_ROWS = 16  # measured: beyond this MKL's blocked GEMM wins on this CPU


@torch.library.register_fake("r1kernels::skinny_linear")
def _(x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0])


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x must be [..., K] and weight [N, K] with the same K, got {tuple(x.shape)} and {tuple(weight.shape)}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],)):
        raise ValueError(f"bias must be None or [N] = [{weight.shape[0]}], got {getattr(bias, 'shape', type(bias).__name__)}")
    if x.device != weight.device or (bias is not None and bias.device != weight.device):
        raise ValueError(f"x, weight and bias must be on one device, got {x.device}, {weight.device}"
                         + (f", {bias.device}" if bias is not None else ""))
    if x.device.type != "cpu" or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                               or (bias is not None and bias.requires_grad))):
        return F.linear(x, weight, bias)
    y = op("skinny_linear")(x.reshape(math.prod(x.shape[:-1]), x.shape[-1]), weight, bias)
    return y.reshape(*x.shape[:-1], weight.shape[0])
