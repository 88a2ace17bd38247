"""Random GRPO inputs at realistic scales, shared by the GRPO loss tests: logits of std ~2, old and
reference log-probs = the true log-probs plus small noise (ratios near 1, some tokens clipped), a
random mask with one fully masked sequence when B > 1."""

from __future__ import annotations

import torch

from r1kernels import reference


def make_inputs(B, T, H, V, dtype=torch.float32, bias=False, mask="random", noise=0.15, temperature=1.0):
    hidden = torch.randn(B, T, H).to(dtype)
    weight = (torch.randn(V, H) * (2.0 / H**0.5)).to(dtype)
    b = (torch.randn(V) * 0.5).to(dtype) if bias else None
    targets = torch.randint(0, V, (B, T))
    advantages = torch.randn(B)
    if mask == "random":
        m = torch.rand(B, T) < 0.8
        m[0, 0] = True  # at least one token
        if B > 1:
            m[-1] = False  # a fully masked sequence
    elif mask == "none":
        m = torch.zeros(B, T, dtype=torch.bool)
    else:
        m = torch.ones(B, T, dtype=torch.bool)
    with torch.no_grad():
        lp = reference.token_logprobs(hidden, weight, targets, bias=b, temperature=temperature)
    # log-probs of other policies: near this one's, and never above 0 (the ops refuse that)
    old = (lp + noise * torch.randn(B, T)).clamp(max=0.0)
    ref = (lp + noise * torch.randn(B, T)).clamp(max=0.0)
    return dict(hidden=hidden, weight=weight, bias=b, targets=targets, advantages=advantages, mask=m, old=old, ref=ref)


def leaves(inp, with_bias=True):
    """Fresh leaf copies of hidden, weight (and bias) that require grad."""
    out = [inp["hidden"].clone().requires_grad_(), inp["weight"].clone().requires_grad_()]
    if with_bias and inp["bias"] is not None:
        out.append(inp["bias"].clone().requires_grad_())
    return out


def assert_stats_close(actual, expected, atol=1e-5, rtol=1e-4):
    assert set(actual) == set(expected) == {"kl", "clip_low", "clip_high", "clip_region", "entropy"}
    for k in expected:
        assert not actual[k].requires_grad, k
        torch.testing.assert_close(actual[k].float(), expected[k].float(), atol=atol, rtol=rtol, msg=lambda m: f"stats[{k!r}]: {m}")
