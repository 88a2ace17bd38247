"""The Triton launchers of r1kernels.triton against r1kernels.reference (and the plain-PyTorch
kernels of r1kernels._torch, which define each op's output contract).

Without a GPU they run on CPU tensors under TRITON_INTERPRET=1 (tests/conftest.py sets it before
any kernel module is imported); the interpreter has no bf16 arithmetic, so float32 here. Shapes are
small because the interpreter runs every program one after another: V is never a multiple of the
BLOCK_V the tests pick, and row chunks are smaller than N so the chunk loop runs more than once.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import triton

from r1kernels import reference
from r1kernels._torch import grpo_loss as torch_grpo_loss
from r1kernels._torch import grpo_token_loss as torch_token_loss
from r1kernels._torch import token_logprobs as torch_token_logprobs
from r1kernels._grpo_args import LOSS_KIND, token_scale
from r1kernels._library import TRITON_REGISTERED as REGISTERED
from r1kernels.triton import KERNELS
from r1kernels.triton import group_advantages as tga
from r1kernels.triton import grpo_loss, grpo_loss_from_logits, grpo_token_loss, token_logprobs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FP32 = [(torch.float32, 5e-5, 1e-4)]
BLOCK_V = 64
CHUNK = 3


def _close(actual, expected, atol, rtol, what):
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------------
# group advantages


def _rewards(num_groups, G, dtype):
    r = torch.randn(num_groups * G, dtype=torch.float64)
    r.view(num_groups, G)[1] = 0.5  # a zero-variance group
    if G >= 3:
        r[2] = math.nan  # an unscorable sample in the first group
        r.view(num_groups, G)[2, : G - 1] = math.nan  # a group with a single scorable sample
    r.view(num_groups, G)[3] = math.nan  # a group with none
    return r.to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype, atol, rtol", FP32 + [(torch.float64, 1e-10, 1e-10)])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("leave_one_out", [False, True])
def test_group_advantages(dtype, atol, rtol, scale, leave_one_out):
    G = 7
    rewards = _rewards(5, G, dtype)
    # BLOCK_G = 4 < G: the kernel's loop over the group runs twice, the second time part masked
    adv, mean, std, zero = tga.group_advantages(rewards, G, {"group": 0, "batch": 1, "none": 2}[scale], leave_one_out, 1e-4, block_g=4)
    radv, st = reference.group_advantages(rewards.cpu(), G, scale, leave_one_out, 1e-4)
    assert adv.dtype == mean.dtype == std.dtype == dtype and zero.dtype == torch.bool
    _close(adv, radv, atol, rtol, "advantages")
    _close(mean, st.mean, atol, rtol, "mean")
    _close(std, st.std, atol, rtol, "std")
    assert torch.equal(zero.cpu(), st.zero_std)
    assert zero.cpu().tolist()[1:4] == [True, True, True]
    assert torch.isfinite(adv).all() and (adv.cpu()[~torch.isfinite(rewards.cpu())] == 0).all()


@pytest.mark.parametrize("dtype, atol, rtol", FP32)
def test_group_advantages_edge_groups(dtype, atol, rtol):
    # G = 1: every group has zero variance; one whole-batch group; a large BLOCK_G past the group
    r = torch.randn(6, dtype=dtype, device=DEVICE)
    adv, _, std, zero = tga.group_advantages(r, 1, 0, False, 1e-4)
    assert (adv == 0).all() and (std == 0).all() and zero.all()
    for scale_mode, scale in enumerate(["group", "batch", "none"]):
        adv, mean, std, zero = tga.group_advantages(r, 6, scale_mode, True, 1e-4)
        radv, st = reference.group_advantages(r.cpu(), 6, scale, True, 1e-4)
        _close(adv, radv, atol, rtol, f"advantages ({scale})")
        _close(std, st.std, atol, rtol, "std")


def test_group_advantages_rejects_inf():
    r = torch.zeros(4, device=DEVICE)
    r[1] = math.inf
    with pytest.raises(ValueError, match="inf"):
        tga.group_advantages(r, 2, 0, False, 1e-4)
    with pytest.raises(ValueError, match="group_size"):
        tga.group_advantages(torch.zeros(5, device=DEVICE), 2, 0, False, 1e-4)


# ---------------------------------------------------------------------------------------------
# fused GRPO loss


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


@pytest.mark.parametrize("dtype, atol, rtol", FP32)
@pytest.mark.parametrize("B, T, loss_type, beta, delta, temperature, with_bias, off_policy, mask_kind", GRPO_CASES)
def test_fused_grpo_loss(dtype, atol, rtol, B, T, loss_type, beta, delta, temperature, with_bias, off_policy, mask_kind):
    H, V = 16, 150
    hidden, weight, bias, targets = _head(B, T, H, V, dtype, with_bias)
    advantages = torch.randn(B, device=DEVICE)
    mask = _mask(B, T, mask_kind)
    old = _policy_logprobs(hidden, weight, bias, targets, temperature, 0.3) if off_policy else None
    ref = _policy_logprobs(hidden, weight, bias, targets, temperature, 0.5) if beta else None
    eps_high = 1.2 if loss_type == "cispo" else 0.28  # cispo: an absolute cap on the ratio
    N = B * T
    scale = token_scale(mask, loss_type)
    args = (
        hidden.reshape(N, H), weight, bias, targets.reshape(-1), scale.reshape(-1),
        advantages.repeat_interleave(T), None if old is None else old.reshape(-1), None if ref is None else ref.reshape(-1),
        beta, 0.2, eps_high, delta, temperature, LOSS_KIND[loss_type], 1.0, 1.05,
    )
    loss, logp, entropy, gh, gw, gb = grpo_loss.fused_grpo_loss(*args, True, chunk_size=CHUNK, block_v=BLOCK_V)

    # the oracle: full logits and autograd
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    b = bias.clone().requires_grad_() if with_bias else None
    rloss, _ = reference.grpo_loss(h, w, targets, advantages, mask, old, ref, b, beta=beta, epsilon_low=0.2,
                                   epsilon_high=eps_high, delta=delta, temperature=temperature, loss_type=loss_type)
    rloss.backward()
    rlogp, rent = reference.token_logprobs(hidden, weight, targets, bias, temperature, return_entropy=True)
    _close(loss, rloss.detach(), atol, rtol, "loss")
    _close(logp, rlogp.reshape(-1), atol, rtol, "logp")
    _close(entropy, rent.reshape(-1), atol, rtol, "entropy")
    _close(gh, h.grad.reshape(N, H), atol, rtol, "grad hidden")
    _close(gw, w.grad, atol, rtol, "grad weight")
    if with_bias:
        _close(gb, b.grad, atol, rtol, "grad bias")
    else:
        assert gb.numel() == 0
    assert loss.dtype == logp.dtype == entropy.dtype == torch.float32 and loss.dim() == 0
    assert gh.dtype == hidden.dtype and gw.dtype == weight.dtype
    if mask_kind == "dead_row":  # masked tokens contribute no gradient at all
        dead = ~mask.reshape(-1)
        assert (gh[dead] == 0).all()

    # the fallback defines the op's contract: same outputs
    for name, ours, theirs in zip(("loss", "logp", "entropy", "gh", "gw", "gb"), (loss, logp, entropy, gh, gw, gb),
                                  torch_grpo_loss.fused_grpo_loss(*args, True)):
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, name


@pytest.mark.parametrize("dtype, atol, rtol", FP32)
def test_fused_grpo_loss_without_grad(dtype, atol, rtol):
    hidden, weight, bias, targets = _head(1, 5, 8, 37, dtype, True)
    N = 5
    args = (hidden.reshape(N, 8), weight, bias, targets.reshape(-1), torch.full((N,), 1.0 / N, device=DEVICE),
            torch.randn(N, device=DEVICE), None, None, 0.0, 0.2, 0.2, None, 1.0, 0, 1.0, 1.05, False)
    loss, logp, entropy, gh, gw, gb = grpo_loss.fused_grpo_loss(*args, block_v=16)
    eloss, elogp, eent, *_ = torch_grpo_loss.fused_grpo_loss(*args)
    _close(loss, eloss, atol, rtol, "loss")
    _close(logp, elogp, atol, rtol, "logp")
    _close(entropy, eent, atol, rtol, "entropy")
    assert gh.numel() == gw.numel() == gb.numel() == 0


def test_fused_grpo_loss_mixed_dtypes():
    # an fp32 hidden state with an fp64 head: the GEMMs run in the promoted dtype, and each gradient
    # comes back in its own input's dtype, as the fallback returns them
    N, H, V = 4, 8, 40
    hidden, weight = torch.randn(N, H, device=DEVICE), torch.randn(V, H, dtype=torch.float64, device=DEVICE)
    args = (hidden, weight, None, torch.randint(0, V, (N,), device=DEVICE), torch.full((N,), 0.25, device=DEVICE),
            torch.randn(N, device=DEVICE), None, None, 0.0, 0.2, 0.2, None, 1.0, 0, 1.0, 1.05, True)
    ours, theirs = grpo_loss.fused_grpo_loss(*args, block_v=16, chunk_size=3), torch_grpo_loss.fused_grpo_loss(*args)
    for name, a, e in zip(("loss", "logp", "entropy", "gh", "gw", "gb"), ours, theirs):
        assert a.dtype == e.dtype and a.shape == e.shape, name
        if e.numel():
            _close(a, e, 5e-5, 1e-4, name)


def test_fused_grpo_loss_requires_ref_with_beta():
    hidden, weight, _, targets = _head(1, 2, 4, 10, torch.float32, False)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss.fused_grpo_loss(hidden.reshape(2, 4), weight, None, targets.reshape(-1), torch.ones(2, device=DEVICE),
                            torch.ones(2, device=DEVICE), None, None, 0.1, 0.2, 0.2, None, 1.0, 0, 1.0, 1.05, True)


# ---------------------------------------------------------------------------------------------
# fused log-probs and their backward


@pytest.mark.parametrize("dtype, atol, rtol", FP32)
@pytest.mark.parametrize("with_bias, temperature, grad_entropy", [(True, 0.8, True), (False, 1.0, False)])
def test_fused_logprobs_forward_backward(dtype, atol, rtol, with_bias, temperature, grad_entropy):
    N, H, V = 7, 16, 150
    hidden, weight, bias, targets = _head(1, N, H, V, dtype, with_bias)
    hidden, targets = hidden[0], targets[0]
    logp, entropy, lse = token_logprobs.fused_logprobs(hidden, weight, bias, targets, temperature, chunk_size=CHUNK, block_v=BLOCK_V)
    elogp, eent, else_ = torch_token_logprobs.fused_logprobs(hidden, weight, bias, targets, temperature)
    _close(logp, elogp, atol, rtol, "logp")
    _close(entropy, eent, atol, rtol, "entropy")
    _close(lse, else_, atol, rtol, "lse")

    g_lp = torch.randn(N, device=DEVICE)
    g_h = torch.randn(N, device=DEVICE) if grad_entropy else None
    gh, gw, gb = token_logprobs.fused_logprobs_backward(g_lp, g_h, hidden, weight, bias, targets, lse, entropy, temperature,
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
# loss from logits, per-token loss from log-probs


@pytest.mark.parametrize("dtype, atol, rtol", FP32)
@pytest.mark.parametrize("loss_type, beta, delta, temperature", [("grpo", 0.04, 1.5, 0.7), ("dapo", 0.0, None, 1.0), ("sapo", 0.04, None, 1.2)])
def test_logits_grpo_loss(dtype, atol, rtol, loss_type, beta, delta, temperature):
    B, T, V = 2, 3, 150
    logits = (torch.randn(B, T, V, device=DEVICE) * 2).to(dtype)
    targets = torch.randint(0, V, (B, T), device=DEVICE)
    advantages = torch.randn(B, device=DEVICE)
    mask = _mask(B, T, "ragged")
    with torch.no_grad():
        cur = (logits.float() / temperature).log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    old = cur + 0.3 * torch.randn_like(cur)
    ref = cur + 0.5 * torch.randn_like(cur) if beta else None
    N = B * T
    original = logits.clone()
    loss, logp, entropy, grad = grpo_loss_from_logits.logits_grpo_loss(
        logits.reshape(N, V), targets.reshape(-1), token_scale(mask, loss_type).reshape(-1), advantages.repeat_interleave(T),
        old.reshape(-1), None if ref is None else ref.reshape(-1), beta, 0.2, 0.28, delta, temperature,
        LOSS_KIND[loss_type], 1.0, 1.05, True, block_v=BLOCK_V,
    )
    assert torch.equal(logits, original), "the logits must be read, never written"
    z = logits.clone().requires_grad_()
    rloss, _ = reference.grpo_loss_from_logits(z, targets, advantages, mask, old, ref, beta=beta, epsilon_low=0.2,
                                               epsilon_high=0.28, delta=delta, temperature=temperature, loss_type=loss_type)
    rloss.backward()
    _close(loss, rloss.detach(), atol, rtol, "loss")
    _close(logp, cur.reshape(-1), atol, rtol, "logp")
    _close(grad, z.grad.reshape(N, V), atol, rtol, "grad logits")
    assert grad.dtype == logits.dtype and entropy.shape == (N,)


@pytest.mark.parametrize("dtype, atol, rtol", FP32)
@pytest.mark.parametrize("loss_kind, beta, delta, with_old", [(0, 0.04, 1.5, True), (0, 0.0, None, False), (1, 0.04, None, True), (2, 0.1, None, True)])
def test_grpo_token_loss(dtype, atol, rtol, loss_kind, beta, delta, with_old):
    N = 37  # not a multiple of the block of 16
    logp = -torch.rand(N, device=DEVICE) * 4
    scale = torch.rand(N, device=DEVICE)
    scale[::5] = 0  # masked tokens
    adv = torch.randn(N, device=DEVICE)
    old = logp + 0.3 * torch.randn(N, device=DEVICE) if with_old else None
    ref = logp + 0.5 * torch.randn(N, device=DEVICE)
    args = (logp, scale, adv, old, ref, beta, 0.2, 1.2 if loss_kind == 1 else 0.28, delta, loss_kind, 1.0, 1.05)
    loss, grad = grpo_token_loss.grpo_token_loss(*args, block=16)
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
# registration


def test_registered_for_cuda():
    for name in KERNELS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"r1kernels::{name}", "CUDA"), name
    assert set(REGISTERED) <= set(KERNELS)


# ---------------------------------------------------------------------------------------------
# ahead-of-time compilation for the GPUs, without one


def _find_ptxas():
    for cand in (os.environ.get("TRITON_PTXAS_PATH"), os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas"),
                 shutil.which("ptxas"), "/usr/local/cuda/bin/ptxas"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


PTXAS = _find_ptxas()


@pytest.mark.skipif(PTXAS is None, reason="ptxas not found (neither triton's nor a CUDA toolkit's)")
def test_kernels_compile_for_sm80_and_sm90a():
    # the interpreter forgives what the compiler rejects; tests/_triton_aot.py compiles every kernel
    # to cubin in a process without TRITON_INTERPRET (about 1 s per specialisation, cached by triton)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_PTXAS_PATH"] = PTXAS
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "_triton_aot.py")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-6000:]}"
    compiled = [line for line in proc.stdout.splitlines() if line.endswith(" ok")]
    assert any(line.startswith("sm_80 ") for line in compiled) and any(line.startswith("sm_90 ") for line in compiled)
