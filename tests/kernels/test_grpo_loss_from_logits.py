"""r1kernels.grpo_loss_from_logits (the logits_grpo_loss op) against reference.grpo_loss_from_logits:
loss, stats and the gradient of the logits; and the statistics' meanings (TRL's GRPOTrainer,
Liger's clip metrics) through both GRPO losses.

The tests named with a `backend` run the public function on each backend present (tests/kernels/
_backends.py): the C++ kernel, the plain-PyTorch kernel of r1kernels._torch and, where the shapes are
small enough for the interpreter, the Triton kernel under TRITON_INTERPRET=1. The test_triton_*
tests drive the Triton launchers directly on interpreter-sized shapes (chunk and block loops that
run more than once); the *_cuda tests run on a GPU and skip without one.
"""

from __future__ import annotations

import math

import pytest
import torch
from _backends import backend_fixture, triton_module
from _gpu_cases import GPU_FP32
from _grpo_inputs import assert_stats_close, make_inputs
from _triton_cases import BLOCK_V, DEVICE, FP32, _close, _mask
from conftest import requires_cuda

import r1kernels
from r1kernels import reference
from r1kernels._grpo_args import LOSS_KIND, token_scale
from r1kernels._library import has_cpp_kernel, op

backend = backend_fixture("logits_grpo_loss")
both_losses = backend_fixture("logits_grpo_loss", "fused_grpo_loss", "fused_logprobs", "fused_logprobs_backward")
tgll = triton_module("grpo_loss_from_logits")

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"]

DTYPES = [(torch.float32, 1e-5, 1e-4), (torch.bfloat16, 1e-4, 2e-2)]


def _logits(inp, dtype):
    z = inp["hidden"].float() @ inp["weight"].float().T + inp["bias"].float()
    return z.to(dtype)


def run_both(logits, inp, **opt):
    out = []
    for fn in (r1kernels.grpo_loss_from_logits, reference.grpo_loss_from_logits):
        z = logits.clone().requires_grad_()
        kw = dict(mask=inp["mask"], old_logprobs=inp["old"], ref_logprobs=inp["ref"], **opt)
        loss, stats = fn(z, inp["targets"], inp["advantages"], **kw)
        out.append((loss, stats, torch.autograd.grad(loss, z)[0]))
    return out


def test_cpu_kernel_is_the_fast_path():
    assert has_cpp_kernel("logits_grpo_loss")


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("importance_sampling", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_reference(backend, loss_type, importance_sampling, dtype, atol, rtol):
    inp = make_inputs(3, 6, 16, 257, bias=True, temperature=0.8)
    opt = dict(beta=0.04, temperature=0.8, loss_type=loss_type, importance_sampling=importance_sampling,
               epsilon_high=5.0 if loss_type == "cispo" else 0.28, delta=1.2 if loss_type == "grpo" else None,
               num_items=23 if loss_type == "dapo" else None)
    (l1, s1, g1), (l2, s2, g2) = run_both(_logits(inp, dtype), inp, **opt)
    torch.testing.assert_close(l1, l2.float(), atol=atol, rtol=rtol)
    assert_stats_close(s1, s2, atol=max(atol, 1e-5), rtol=max(rtol, 1e-4))
    assert g1.dtype == dtype
    torch.testing.assert_close(g1.float(), g2.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("importance_sampling", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_per_token_advantages(backend, loss_type, importance_sampling):
    inp = make_inputs(3, 6, 16, 257, bias=True, temperature=0.8)
    inp["advantages"] = torch.randn(3, 6)
    opt = dict(beta=0.04, temperature=0.8, loss_type=loss_type, importance_sampling=importance_sampling,
               epsilon_high=5.0 if loss_type == "cispo" else 0.28, delta=1.2 if loss_type == "grpo" else None)
    (l1, s1, g1), (l2, s2, g2) = run_both(_logits(inp, torch.float32), inp, **opt)
    torch.testing.assert_close(l1, l2.float(), atol=1e-5, rtol=1e-4)
    assert_stats_close(s1, s2)
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("T", [1, 4])
def test_plain_on_policy_and_masked(backend, T, monkeypatch):
    monkeypatch.setenv("R1_GRPO_CHUNK_BYTES", str(2 * 99 * 4))  # 2 rows per chunk
    inp = make_inputs(3, T, 8, 99, bias=True, mask="random")
    inp["old"], inp["ref"] = None, None
    (l1, s1, g1), (l2, s2, g2) = run_both(_logits(inp, torch.float32), inp)
    torch.testing.assert_close(l1, l2)
    assert_stats_close(s1, s2)
    torch.testing.assert_close(g1, g2)
    assert (g1[~inp["mask"]] == 0).all()


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(targets=torch.full((2, 3), 40)), "targets must lie in"),
        (dict(logits=torch.randn(6, 40)), "logits must be a floating-point"),
        (dict(logits=torch.ones(2, 3, 40, dtype=torch.long)), "logits must be a floating-point"),
        (dict(loss_type="kl"), "loss_type must be one of"),
        (dict(beta=0.1), "ref_logprobs is required"),
        (dict(mask=torch.full((2, 3), 3.0)), "mask must be bool"),
        (dict(advantages=torch.randn(2, 4)), "advantages must have shape"),
    ],
)
def test_bad_input_raises(change, match):
    args = dict(logits=torch.randn(2, 3, 40), targets=torch.randint(0, 40, (2, 3)), advantages=torch.randn(2))
    args.update(change)
    with pytest.raises(ValueError, match=match):
        r1kernels.grpo_loss_from_logits(args.pop("logits"), args.pop("targets"), args.pop("advantages"), **args)


@pytest.mark.parametrize("compute_grad", [True, False])
def test_opcheck(compute_grad):
    z = torch.randn(6, 33, requires_grad=compute_grad)
    scale = torch.tensor([0.2, 0.2, 0.0, 0.2, 0.2, 0.2])
    lp = torch.log_softmax(z.detach(), -1)[:, 0]
    args = (z, torch.zeros(6, dtype=torch.long), scale, torch.randn(6), lp + 0.1 * torch.randn(6), lp + 0.1 * torch.randn(6),
            0.04, 0.2, 0.28, None, 0.9, 0, 1.0, 1.05, compute_grad)
    torch.library.opcheck(op("logits_grpo_loss"), args)


# ---------------------------------------------------------------------------------------------
# the statistics' meanings (TRL's GRPOTrainer, Liger's clip metrics), on every backend


def _known_ratio_inputs(ratios, mask=None):
    """Uniform logits over V = 4 (logp = -log 4 for every target) and old log-probs chosen so that
    exp(logp - old) is `ratios` [B, T]; advantages +1 for the first sequence, -1 for the second."""
    ratios = torch.tensor(ratios, dtype=torch.float32)
    B, T = ratios.shape
    logits = torch.zeros(B, T, 4)
    logp = torch.full((B, T), -math.log(4.0))
    return dict(logits=logits, targets=torch.zeros(B, T, dtype=torch.long), advantages=torch.tensor([1.0, -1.0]),
                old=logp - ratios.log(), mask=torch.ones(B, T, dtype=torch.bool) if mask is None else torch.tensor(mask))


def _stats_of_both(inp, **opt):
    """stats of grpo_loss_from_logits, of grpo_loss (identity head: hidden = logits) and of the reference."""
    kw = dict(mask=inp["mask"], old_logprobs=inp["old"], **opt)
    _, a = r1kernels.grpo_loss_from_logits(inp["logits"], inp["targets"], inp["advantages"], **kw)
    _, b = r1kernels.grpo_loss(inp["logits"], torch.eye(4), inp["targets"], inp["advantages"], **kw)
    _, c = reference.grpo_loss_from_logits(inp["logits"], inp["targets"], inp["advantages"], **kw)
    return a, b, c


def _assert_clip(stats, low, high, region):
    for name, want in (("clip_low", low), ("clip_high", high), ("clip_region", region)):
        assert float(stats[name]) == pytest.approx(want, abs=1e-6), f"{name}: {float(stats[name])} != {want}"


# ratios: sequence 0 (advantage +1) 1.1, 1.5, 5.5; sequence 1 (advantage -1) 0.5, 1.0, 7.0
RATIOS = [[1.1, 1.5, 5.5], [0.5, 1.0, 7.0]]


def test_clip_stats_grpo_are_the_ppo_region(both_losses):
    for stats in _stats_of_both(_known_ratio_inputs(RATIOS), loss_type="grpo", epsilon_high=0.2):
        # high: 1.5 and 5.5 with A > 0; low: 0.5 with A < 0 (7.0 with A < 0 is not clipped)
        _assert_clip(stats, 1 / 6, 2 / 6, 3 / 6)


def test_clip_stats_grpo_take_the_ratio_after_the_dual_clip(both_losses):
    # TRL clamps the ratio at delta before it counts: min(1.5, 1.1) and min(5.5, 1.1) are inside 1 + 0.2
    for stats in _stats_of_both(_known_ratio_inputs(RATIOS), loss_type="grpo", epsilon_high=0.2, delta=1.1):
        _assert_clip(stats, 1 / 6, 0.0, 1 / 6)


def test_clip_stats_cispo_count_the_cap_itself(both_losses):
    # the cap is epsilon_high itself: only 5.5 (A > 0) exceeds 5; nothing is clipped low (0.5 is not)
    for stats in _stats_of_both(_known_ratio_inputs(RATIOS), loss_type="cispo", epsilon_high=5.0):
        _assert_clip(stats, 0.0, 1 / 6, 1 / 6)


def test_clip_stats_sapo_are_zero(both_losses):
    for stats in _stats_of_both(_known_ratio_inputs(RATIOS), loss_type="sapo", epsilon_high=0.2):
        _assert_clip(stats, 0.0, 0.0, 0.0)


def test_clip_stats_sequence_level_are_per_sequence(both_losses):
    # sequence 0 keeps one token (ratio 1.5: clipped high), sequence 1 three (geometric mean 1.0):
    # one of the two sequences is clipped, though only one of the four tokens is
    inp = _known_ratio_inputs([[1.5, 3.0, 3.0], [0.5, 1.0, 2.0]], mask=[[True, False, False], [True, True, True]])
    for stats in _stats_of_both(inp, loss_type="grpo", epsilon_high=0.2, importance_sampling="sequence"):
        _assert_clip(stats, 0.0, 0.5, 0.5)


# ---------------------------------------------------------------------------------------------
# Triton launcher


@pytest.mark.parametrize("dtype, atol, rtol", FP32)
@pytest.mark.parametrize("loss_type, beta, delta, temperature",
                         [("grpo", 0.04, 1.5, 0.7), ("dapo", 0.0, None, 1.0), ("sapo", 0.04, None, 1.2)])
def test_triton_launcher(dtype, atol, rtol, loss_type, beta, delta, temperature):
    B, T, V = 2, 3, 150
    logits = (torch.randn(B, T, V, device=DEVICE) * 2).to(dtype)
    targets = torch.randint(0, V, (B, T), device=DEVICE)
    advantages = torch.randn(B, device=DEVICE)
    mask = _mask(B, T, "ragged")
    with torch.no_grad():
        cur = (logits.float() / temperature).log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    old = (cur + 0.3 * torch.randn_like(cur)).clamp(max=0.0)  # log-probs: never above 0
    ref = (cur + 0.5 * torch.randn_like(cur)).clamp(max=0.0) if beta else None
    N = B * T
    original = logits.clone()
    loss, logp, entropy, grad = tgll.logits_grpo_loss(
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


# ---------------------------------------------------------------------------------------------
# CUDA


@requires_cuda
@pytest.mark.parametrize("dtype, atol, rtol", [GPU_FP32])
@pytest.mark.parametrize("loss_type", ["grpo", "cispo", "sapo"])
def test_grpo_loss_from_logits_cuda(dtype, atol, rtol, loss_type):
    B, T, V = 3, 17, 5001
    logits = torch.randn(B, T, V) * 3
    targets = torch.randint(0, V, (B, T))
    adv = torch.randn(B)
    mask = torch.rand(B, T) > 0.3
    cur = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    old, ref = (cur + 0.3 * torch.randn(B, T)).clamp(max=0.0), (cur + 0.5 * torch.randn(B, T)).clamp(max=0.0)
    kw = dict(beta=0.04, loss_type=loss_type, temperature=1.1, epsilon_high=5.0 if loss_type == "cispo" else 0.28)
    z = logits.cuda().requires_grad_()
    loss, stats = r1kernels.grpo_loss_from_logits(z, targets.cuda(), adv.cuda(), mask=mask.cuda(), old_logprobs=old.cuda(),
                                                  ref_logprobs=ref.cuda(), **kw)
    loss.backward()
    zr = logits.detach().clone().requires_grad_()
    rloss, rstats = reference.grpo_loss_from_logits(zr, targets, adv, mask, old, ref, **kw)
    rloss.backward()
    _close(loss, rloss, atol, rtol, "loss")
    _close(z.grad, zr.grad, atol, rtol, "grad logits")
    for k in rstats:
        _close(stats[k], rstats[k], atol, rtol, f"stats[{k}]")
