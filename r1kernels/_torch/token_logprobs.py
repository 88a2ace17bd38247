"""r1kernels::fused_logprobs and its backward in PyTorch, on the full [N, V] logits."""

from __future__ import annotations

import torch


def head_logits(hidden, weight, bias, temperature):
    """(hidden @ weight.T + bias) / temperature in float32, [N, V]."""
    z = torch.addmm(bias.float(), hidden.float(), weight.float().T) if bias is not None else hidden.float() @ weight.float().T
    return z / temperature


def fused_logprobs(hidden, weight, bias, targets, temperature):
    z = head_logits(hidden, weight, bias, temperature)
    lse = torch.logsumexp(z, dim=-1)
    logp_all = z - lse[:, None]
    logp = torch.gather(logp_all, -1, targets[:, None]).squeeze(-1)
    entropy = -(torch.softmax(z, dim=-1) * logp_all).sum(-1)
    return logp, entropy, lse


def fused_logprobs_backward(grad_logp, grad_entropy, hidden, weight, bias, targets, lse, entropy, temperature):
    z = head_logits(hidden, weight, bias, temperature)
    logp_all = z - lse[:, None]
    p = logp_all.exp()
    g = grad_logp.float()[:, None]
    # d logp / dz = onehot - p;  d entropy / dz = -p (logp_all + entropy)
    dz = -p * g
    dz.scatter_add_(-1, targets[:, None], g)
    if grad_entropy is not None:
        dz -= grad_entropy.float()[:, None] * p * (logp_all + entropy[:, None])
    dz /= temperature
    grad_hidden = (dz @ weight.float()).to(hidden.dtype)
    grad_weight = (dz.T @ hidden.float()).to(weight.dtype)
    grad_bias = dz.sum(0).to(bias.dtype) if bias is not None else hidden.new_empty(0)
    return grad_hidden, grad_weight, grad_bias
