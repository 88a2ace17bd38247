"""Inputs and checks of the Triton launcher tests. Without a GPU the launchers run on CPU tensors
under TRITON_INTERPRET=1 (tests/conftest.py sets it before any kernel module is imported); the
interpreter has no bf16 arithmetic, so the GRPO cases are float32. Shapes are small because the
interpreter runs every program one after another: V is never a multiple of the BLOCK_V the tests
pick, and row chunks are smaller than N so the chunk loop runs more than once. The cache writes only
move values, so every cache dtype is compared bitwise; the merge loads bf16 / fp16 into fp32 and
rounds once on the store (1 ulp of slack)."""

from __future__ import annotations

import math

import torch

from r1kernels import reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

FP32 = [(torch.float32, 5e-5, 1e-4)]

BLOCK_V = 64

CHUNK = 3


def _close(actual, expected, atol, rtol, what):
    torch.testing.assert_close(actual.detach().float().cpu(), expected.detach().float().cpu(), atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


def _rewards(num_groups, G, dtype):
    r = torch.randn(num_groups * G, dtype=torch.float64)
    r.view(num_groups, G)[1] = 0.5  # a zero-variance group
    if G >= 3:
        r[2] = math.nan  # an unscorable sample in the first group
        r.view(num_groups, G)[2, : G - 1] = math.nan  # a group with a single scorable sample
    r.view(num_groups, G)[3] = math.nan  # a group with none
    return r.to(dtype).to(DEVICE)


def _head(B, T, H, V, dtype, with_bias):
    hidden = (torch.randn(B, T, H, device=DEVICE) * 0.7).to(dtype)
    weight = (torch.randn(V, H, device=DEVICE) * 0.5).to(dtype)
    bias = (torch.randn(V, device=DEVICE) * 0.5).to(dtype) if with_bias else None
    targets = torch.randint(0, V, (B, T), device=DEVICE)
    return hidden, weight, bias, targets


def _policy_logprobs(hidden, weight, bias, targets, temperature, spread):
    """Log-probs near the current policy's, so the ratios fall on both sides of the clip bounds."""
    with torch.no_grad():
        lp = reference.token_logprobs(hidden, weight, targets, bias, temperature)
    return lp + spread * torch.randn_like(lp)


# (B, T, loss_type, beta, delta, temperature, bias, off-policy, mask)
GRPO_CASES = [
    (2, 4, "grpo", 0.0, None, 1.0, False, True, "ragged"),
    (2, 4, "grpo", 0.04, 1.5, 0.7, True, True, "ragged"),
    (2, 4, "bnpo", 0.1, None, 1.3, True, False, "dead_row"),
    (3, 3, "dr_grpo", 0.0, 1.5, 1.0, False, True, "dead_row"),
    (2, 4, "dapo", 0.04, None, 1.0, True, True, "ragged"),
    (2, 4, "cispo", 0.04, None, 0.9, False, True, "ragged"),
    (2, 4, "sapo", 0.04, None, 1.0, True, True, "dead_row"),
    (1, 1, "grpo", 0.04, 1.5, 1.0, True, True, "full"),  # one token
]


def _mask(B, T, kind):
    mask = torch.ones(B, T, dtype=torch.bool, device=DEVICE)
    if kind == "ragged":
        mask[0, T // 2:] = False
    elif kind == "dead_row":
        mask[-1] = False  # a fully masked sequence
        mask[0, -1] = False
    return mask

CACHE_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


# (dtype, atol, rtol) of the merge's out: fp32 math throughout, one rounding to the out dtype
# float32: the two sides' weights come from exp in another order than the reference's (a few ulp of
# an O(1) output: 3e-6 was seen), a wrong weight is off by far more
MERGE_DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 1.6e-2, 1.6e-2), (torch.float16, 2e-3, 2e-3)]


def _caches(num_blocks, block_size, hkv, d, dtype):
    k_cache = torch.randn(num_blocks, block_size, hkv, d).to(dtype).to(DEVICE)
    return k_cache, torch.randn_like(k_cache)


def _merge_inputs(n, h, d, dtype):
    out_a = torch.randn(n, h, d).to(dtype).to(DEVICE)
    out_b = torch.randn(n, h, d).to(dtype).to(DEVICE)
    lse_a = (3 * torch.randn(n, h)).to(DEVICE)
    lse_b = (3 * torch.randn(n, h)).to(DEVICE)
    return out_a, lse_a, out_b, lse_b


def _check_merge(got, inputs, dtype, atol, rtol):
    out, lse = got
    ref_out, ref_lse = reference.merge_attention_states(*inputs)
    assert out.dtype == dtype and lse.dtype == torch.float32
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=rtol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-6)  # -inf where both sides are empty
