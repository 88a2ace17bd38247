"""Pieces both halves of the Llama-family decoder layer use (rmsnorm_qkv_rope, oproj_mlp)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def linear(x, weight, bias):
    return F.linear(x, weight, bias)
