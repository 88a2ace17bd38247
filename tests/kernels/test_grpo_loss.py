"""r1kernels.grpo_loss (the fused_grpo_loss op; sequence-level importance sampling through
token_logprobs) against reference.grpo_loss: loss, stats and the gradients of hidden, weight and
bias, over every loss_type x importance_sampling.

The tests named with a `backend` run the public function on each backend present (tests/kernels/
_backends.py): the C++ kernel, the plain-PyTorch kernel of r1kernels._torch and, where the shapes are
small enough for the interpreter, the Triton kernel under TRITON_INTERPRET=1. The test_triton_*
tests drive the Triton launchers directly on interpreter-sized shapes (chunk and block loops that
run more than once); the *_cuda tests run on a GPU and skip without one.
"""

from __future__ import annotations

import pytest
import torch
from _backends import backend_fixture, triton_module
from _gpu_cases import GPU_FP32, _gpu_inputs, _run_public, _within_torch_error
from _grpo_inputs import assert_stats_close, leaves, make_inputs
from _triton_cases import (
    BLOCK_V,
    CHUNK,
    DEVICE,
    FP32,
    GRPO_CASES,
    _close,
    _head,
    _mask,
    _policy_logprobs,
)
from conftest import requires_cuda

import r1kernels
from r1kernels import reference
from r1kernels._grpo_args import LOSS_KIND, token_scale
from r1kernels._library import has_cpp_kernel, op
from r1kernels._torch import grpo_loss as torch_grpo_loss

backend = backend_fixture("fused_grpo_loss", "fused_logprobs", "fused_logprobs_backward")
tgl = triton_module("grpo_loss")

LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo"]

DTYPES = [(torch.float32, 1e-5, 1e-4), (torch.bfloat16, 1e-4, 2e-2)]


def options(loss_type, **kw):
    opt = dict(beta=0.04, temperature=0.7, loss_type=loss_type, epsilon_high=5.0 if loss_type == "cispo" else 0.28)
    if loss_type in ("grpo", "dapo"):
        opt["delta"] = 1.2  # the dual clip: bites on tokens with ratio > 1.2 and negative advantage
    if loss_type == "dapo":
        opt["num_items"] = 37
    opt.update(kw)
    return opt


def run_both(inp, use_bias=True, **opt):
    """(loss, stats, grads) of ours and of the reference on the same fresh leaves."""
    out = []
    for fn in (r1kernels.grpo_loss, reference.grpo_loss):
        xs = leaves(inp, use_bias)
        loss, stats = fn(xs[0], xs[1], inp["targets"], inp["advantages"], mask=inp["mask"], old_logprobs=inp["old"],
                         ref_logprobs=inp["ref"], bias=xs[2] if len(xs) > 2 else None, **opt)
        grads = torch.autograd.grad(loss, xs)
        out.append((loss, stats, grads))
    return out


def check(ours, ref, atol, rtol):
    (l1, s1, g1), (l2, s2, g2) = ours, ref
    assert l1.dtype == torch.float32 and l1.dim() == 0
    torch.testing.assert_close(l1, l2.float(), atol=atol, rtol=rtol)
    assert_stats_close(s1, s2, atol=max(atol, 1e-5), rtol=max(rtol, 1e-4))
    for name, a, b in zip(("hidden", "weight", "bias"), g1, g2):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol, msg=lambda m: f"grad of {name}: {m}")


def test_cpu_kernel_is_the_fast_path():
    assert has_cpp_kernel("fused_grpo_loss") and has_cpp_kernel("grpo_token_loss")


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("importance_sampling", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_reference_all_options(backend, loss_type, importance_sampling, dtype, atol, rtol):
    # beta, temperature != 1, bias, delta (grpo, dapo), num_items (dapo), a fully masked sequence
    inp = make_inputs(3, 7, 24, 301, dtype=dtype, bias=True, temperature=0.7)
    check(*run_both(inp, **options(loss_type, importance_sampling=importance_sampling)), atol, rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES[:1])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_reference_plain(backend, loss_type, dtype, atol, rtol):
    # beta 0, no bias, temperature 1, no delta, on-policy (old = detached current log-probs)
    inp = make_inputs(2, 9, 16, 123, dtype=dtype)
    inp["old"] = None
    check(*run_both(inp, loss_type=loss_type), atol, rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES[:1])
@pytest.mark.parametrize("B", [1, 3])
def test_single_token_per_sequence(backend, B, dtype, atol, rtol):
    inp = make_inputs(B, 1, 8, 50, dtype=dtype, bias=True, mask="all")
    check(*run_both(inp, **options("grpo")), atol, rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("importance_sampling", ["token", "sequence"])
def test_chunks_and_masked_rows(backend, monkeypatch, importance_sampling, dtype, atol, rtol):
    # 3 rows per chunk over the compacted unmasked rows (the last chunk short); the vocabulary is not
    # a multiple of fused_logprobs' 8192-wide chunks
    V = 8192 + 77
    monkeypatch.setenv("R1_GRPO_CHUNK_BYTES", str(3 * V * 4))
    inp = make_inputs(3, 6, 8, V, dtype=dtype, bias=True)
    check(*run_both(inp, **options("bnpo", importance_sampling=importance_sampling)), atol, rtol)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_fully_masked_batch(backend, loss_type):
    inp = make_inputs(2, 4, 8, 40, bias=True, mask="none")
    (l1, s1, g1), (l2, s2, g2) = run_both(inp, **options(loss_type))
    assert float(l1.detach()) == 0.0 and float(l2.detach()) == 0.0
    assert all(torch.count_nonzero(g) == 0 for g in g1)
    assert all(torch.isfinite(v).all() for v in s1.values())


def test_masked_tokens_add_nothing_even_if_not_finite(backend):
    inp = make_inputs(2, 6, 8, 40, bias=True)
    ours = run_both(inp, **options("grpo"))[0]
    bad = dict(inp)
    for key, val in (("old", float("nan")), ("ref", float("inf"))):
        bad[key] = torch.where(inp["mask"], inp[key], torch.full_like(inp[key], val))
    xs = leaves(bad)
    loss, _ = r1kernels.grpo_loss(xs[0], xs[1], bad["targets"], bad["advantages"], mask=bad["mask"], old_logprobs=bad["old"],
                                  ref_logprobs=bad["ref"], bias=xs[2], **options("grpo"))
    grads = torch.autograd.grad(loss, xs)
    torch.testing.assert_close(loss, ours[0])
    for a, b in zip(grads, ours[2]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("num_items", [None, 5, 1000.0])
def test_num_items(backend, num_items):
    inp = make_inputs(2, 5, 8, 60)
    check(*run_both(inp, loss_type="dapo", num_items=num_items), 1e-5, 1e-4)


def test_clipping_happens_in_these_tests(backend):
    # the realistic-scale inputs must exercise both clip sides, or the tests above could not fail there
    inp = make_inputs(8, 32, 16, 200, noise=0.15)
    _, stats = r1kernels.grpo_loss(inp["hidden"], inp["weight"], inp["targets"], inp["advantages"], mask=inp["mask"],
                                   old_logprobs=inp["old"])
    assert 0 < float(stats["clip_region"]) < 0.5


def test_no_grad_forward_matches(backend):
    inp = make_inputs(2, 5, 8, 60, bias=True)
    with torch.no_grad():
        loss, stats = r1kernels.grpo_loss(inp["hidden"], inp["weight"], inp["targets"], inp["advantages"], mask=inp["mask"],
                                          old_logprobs=inp["old"], ref_logprobs=inp["ref"], bias=inp["bias"], **options("sapo"))
    ref_loss, ref_stats = reference.grpo_loss(inp["hidden"], inp["weight"], inp["targets"], inp["advantages"], mask=inp["mask"],
                                              old_logprobs=inp["old"], ref_logprobs=inp["ref"], bias=inp["bias"], **options("sapo"))
    torch.testing.assert_close(loss, ref_loss)
    assert_stats_close(stats, ref_stats)


# per-token advantages ([B, T], as on-policy distillation's log p_teacher - log p_student): every
# loss type, both importance samplings, on every backend


@pytest.mark.parametrize("importance_sampling", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_per_token_advantages(backend, loss_type, importance_sampling):
    inp = make_inputs(3, 7, 24, 301, bias=True, temperature=0.7)
    inp["advantages"] = torch.randn(3, 7)
    inp["advantages"][0, 1] = 0.0  # a token whose advantage is 0 (the teacher agrees)
    check(*run_both(inp, **options(loss_type, importance_sampling=importance_sampling)), 1e-5, 1e-4)


@pytest.mark.parametrize("importance_sampling", ["token", "sequence"])
def test_per_token_advantages_repeating_the_sequences_give_the_same_loss(backend, importance_sampling):
    inp = make_inputs(3, 5, 16, 97, bias=True)
    opt = options("grpo", importance_sampling=importance_sampling)
    (l1, s1, g1), _ = run_both(inp, **opt)
    (l2, s2, g2), _ = run_both(dict(inp, advantages=inp["advantages"][:, None].expand(3, 5)), **opt)
    torch.testing.assert_close(l1, l2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    # the clip fractions are over sequences for [B] and over tokens for [B, T] under sequence-level
    # sampling; the token-level ones and the rest agree
    same = s1.keys() if importance_sampling == "token" else ("kl", "entropy")
    for k in same:
        torch.testing.assert_close(s1[k], s2[k])


def _bad(inp, **changes):
    args = dict(hidden=inp["hidden"], weight=inp["weight"], targets=inp["targets"], advantages=inp["advantages"],
                mask=inp["mask"], old_logprobs=inp["old"], ref_logprobs=inp["ref"], bias=None)
    args.update(changes)
    return args

BAD = {
    "targets out of vocab": (lambda i: _bad(i, targets=i["targets"].clone().fill_(40)), "targets must lie in"),
    "negative target": (lambda i: _bad(i, targets=i["targets"].clone().fill_(-1)), "targets must lie in"),
    "targets int32": (lambda i: _bad(i, targets=i["targets"].int()), "targets must be int64"),
    "targets shape": (lambda i: _bad(i, targets=i["targets"][:, :2]), "targets must have shape"),
    "mask not 0/1": (lambda i: _bad(i, mask=i["mask"].float() * 2), "mask must be bool or hold only 0 and 1"),
    "mask shape": (lambda i: _bad(i, mask=i["mask"][:1]), "mask must have shape"),
    "beta without ref": (lambda i: _bad(i, ref_logprobs=None, beta=0.1), "ref_logprobs is required"),
    "unknown loss_type": (lambda i: _bad(i, loss_type="ppo"), "loss_type must be one of"),
    "unknown importance_sampling": (lambda i: _bad(i, importance_sampling="tok"), "importance_sampling must be one of"),
    "epsilon_low >= 1": (lambda i: _bad(i, epsilon_low=1.0), "epsilon_low must be < 1"),
    "negative epsilon_high": (lambda i: _bad(i, epsilon_high=-0.1), "epsilon_high must be a finite number"),
    "delta <= 1": (lambda i: _bad(i, delta=0.9), "delta must be None or a finite number > 1"),
    "temperature 0": (lambda i: _bad(i, temperature=0.0), "temperature must be > 0"),
    "num_items 0": (lambda i: _bad(i, loss_type="dapo", num_items=0), "num_items must be a positive"),
    "advantages shape": (lambda i: _bad(i, advantages=i["advantages"][:1]), "advantages must have shape"),
    "advantages per-token shape": (lambda i: _bad(i, advantages=torch.zeros(i["targets"].shape[0], i["targets"].shape[1] + 1)),
                                   r"advantages must have shape \[B\] = \[2\] \(one per sequence\) or \[B, T\]"),
    "advantages nan": (lambda i: _bad(i, advantages=i["advantages"] * float("nan")), "advantages must be finite"),
    "advantages int": (lambda i: _bad(i, advantages=torch.ones(2, dtype=torch.long)), "advantages must be floating point"),
    "old shape": (lambda i: _bad(i, old_logprobs=i["old"][:, :1]), "old_logprobs must have shape"),
    "hidden 2-D": (lambda i: _bad(i, hidden=i["hidden"][0]), "hidden must be"),
    "H mismatch": (lambda i: _bad(i, weight=i["weight"][:, :4]), "must equal weight's H"),
    "bias shape": (lambda i: _bad(i, bias=torch.zeros(3)), "bias must have shape"),
    "integer hidden": (lambda i: _bad(i, hidden=i["hidden"].long()), "must be floating point"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises(case):
    make, match = BAD[case]
    args = make(make_inputs(2, 3, 8, 40))
    with pytest.raises(ValueError, match=match):
        r1kernels.grpo_loss(**args)


def _op_args(inp, compute_grad, bias=True, old=True, ref=True, delta=None):
    B, T, H = inp["hidden"].shape
    scale = inp["mask"].float().reshape(-1) / 4.0
    adv = inp["advantages"].repeat_interleave(T)
    return (inp["hidden"].reshape(B * T, H), inp["weight"], inp["bias"] if bias else None, inp["targets"].reshape(-1),
            scale, adv, inp["old"].reshape(-1) if old else None, inp["ref"].reshape(-1) if ref else None,
            0.04 if ref else 0.0, 0.2, 0.28, delta, 0.9, 0, 1.0, 1.05, compute_grad)


def test_cpp_op_rejects_targets_outside_vocab():
    # the data-dependent checks are skipped under torch.compile: the C++ kernel raises the same error
    args = list(_op_args(make_inputs(2, 3, 8, 40, bias=True), True))
    args[3] = args[3].clone().fill_(40)
    with pytest.raises(ValueError, match="targets must lie in"):
        op("fused_grpo_loss")(*args)


@pytest.mark.parametrize("compute_grad, bias, old, ref, delta", [(True, True, True, True, 1.5), (False, False, False, False, None)])
def test_opcheck_fused_grpo_loss(compute_grad, bias, old, ref, delta):
    inp = make_inputs(2, 3, 8, 40, bias=True)
    args = list(_op_args(inp, compute_grad, bias, old, ref, delta))
    args[0] = args[0].clone().requires_grad_(compute_grad)
    args[1] = args[1].clone().requires_grad_(compute_grad)
    torch.library.opcheck(op("fused_grpo_loss"), tuple(args))


def test_compile_fullgraph_forward_and_backward():
    inp = make_inputs(4, 5, 8, 40, bias=True)
    rewards = torch.randn(4)

    def step(hidden, weight, bias, rewards):
        adv = r1kernels.group_advantages(rewards, 2)
        loss, stats = r1kernels.grpo_loss(hidden, weight, inp["targets"], adv, mask=inp["mask"], old_logprobs=inp["old"],
                                          ref_logprobs=inp["ref"], bias=bias, beta=0.04, temperature=0.8)
        return loss, stats["entropy"]

    # aot_eager: dynamo, fake tensors and AOT autograd, as inductor sees them, without its C++ codegen
    # (inductor passes too, but compiling takes over a minute on the 2-core CI machine)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    xs, ys = leaves(inp), leaves(inp)
    (l1, e1), (l2, e2) = compiled(*xs, rewards), step(*ys, rewards)
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(e1, e2)
    for a, b in zip(torch.autograd.grad(l1, xs), torch.autograd.grad(l2, ys)):
        torch.testing.assert_close(a, b)


def test_torch_compile_inductor_all_four_ops():
    # the default backend (inductor's C++ codegen, ~30 s here): every public GRPO op in one
    # fullgraph function, forward and backward, against eager
    def step(h, w, t, a, r):
        loss, _ = r1kernels.grpo_loss(h, w, t, a, loss_type="dapo", beta=0.0)
        adv = r1kernels.group_advantages(r, 4)
        lp = r1kernels.token_logprobs(h, w, t)
        l2, _ = r1kernels.grpo_loss_from_logits(h @ w.T, t, a)
        return loss + lp.sum() + l2, adv

    h, w = torch.randn(2, 5, 16), torch.randn(50, 16)
    t, a, r = torch.randint(0, 50, (2, 5)), torch.randn(2), torch.randn(8)
    xs = [h.clone().requires_grad_(), w.clone().requires_grad_()]
    ys = [h.clone().requires_grad_(), w.clone().requires_grad_()]
    (l1, a1), (l2, a2) = torch.compile(step, fullgraph=True)(*xs, t, a, r), step(*ys, t, a, r)
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(a1, a2)
    for g1, g2 in zip(torch.autograd.grad(l1, xs), torch.autograd.grad(l2, ys)):
        torch.testing.assert_close(g1, g2)


# ---------------------------------------------------------------------------------------------
# Triton launcher


@pytest.mark.parametrize("dtype, atol, rtol", FP32)
@pytest.mark.parametrize("B, T, loss_type, beta, delta, temperature, with_bias, off_policy, mask_kind", GRPO_CASES)
def test_triton_launcher(dtype, atol, rtol, B, T, loss_type, beta, delta, temperature, with_bias, off_policy, mask_kind):
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
    loss, logp, entropy, gh, gw, gb = tgl.fused_grpo_loss(*args, True, chunk_size=CHUNK, block_v=BLOCK_V)

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
def test_triton_without_grad(dtype, atol, rtol):
    hidden, weight, bias, targets = _head(1, 5, 8, 37, dtype, True)
    N = 5
    args = (hidden.reshape(N, 8), weight, bias, targets.reshape(-1), torch.full((N,), 1.0 / N, device=DEVICE),
            torch.randn(N, device=DEVICE), None, None, 0.0, 0.2, 0.2, None, 1.0, 0, 1.0, 1.05, False)
    loss, logp, entropy, gh, gw, gb = tgl.fused_grpo_loss(*args, block_v=16)
    eloss, elogp, eent, *_ = torch_grpo_loss.fused_grpo_loss(*args)
    _close(loss, eloss, atol, rtol, "loss")
    _close(logp, elogp, atol, rtol, "logp")
    _close(entropy, eent, atol, rtol, "entropy")
    assert gh.numel() == gw.numel() == gb.numel() == 0


def test_triton_mixed_dtypes():
    # an fp32 hidden state with an fp64 head: the GEMMs run in the promoted dtype, and each gradient
    # comes back in its own input's dtype, as the fallback returns them
    N, H, V = 4, 8, 40
    hidden, weight = torch.randn(N, H, device=DEVICE), torch.randn(V, H, dtype=torch.float64, device=DEVICE)
    args = (hidden, weight, None, torch.randint(0, V, (N,), device=DEVICE), torch.full((N,), 0.25, device=DEVICE),
            torch.randn(N, device=DEVICE), None, None, 0.0, 0.2, 0.2, None, 1.0, 0, 1.0, 1.05, True)
    ours, theirs = tgl.fused_grpo_loss(*args, block_v=16, chunk_size=3), torch_grpo_loss.fused_grpo_loss(*args)
    for name, a, e in zip(("loss", "logp", "entropy", "gh", "gw", "gb"), ours, theirs):
        assert a.dtype == e.dtype and a.shape == e.shape, name
        if e.numel():
            _close(a, e, 5e-5, 1e-4, name)


def test_triton_requires_ref_with_beta():
    hidden, weight, _, targets = _head(1, 2, 4, 10, torch.float32, False)
    with pytest.raises(ValueError, match="ref_logp"):
        tgl.fused_grpo_loss(hidden.reshape(2, 4), weight, None, targets.reshape(-1), torch.ones(2, device=DEVICE),
                            torch.ones(2, device=DEVICE), None, None, 0.1, 0.2, 0.2, None, 1.0, 0, 1.0, 1.05, True)


# ---------------------------------------------------------------------------------------------
# CUDA (the public API on CUDA tensors, whatever kernel the CUDA key runs)


@requires_cuda
@pytest.mark.parametrize("dtype, atol, rtol", [GPU_FP32])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("importance_sampling", ["token", "sequence"])
@pytest.mark.parametrize("beta, delta, temperature, with_bias", [(0.0, None, 1.0, False), (0.04, 1.5, 0.7, True)])
def test_grpo_loss_cuda(dtype, atol, rtol, loss_type, importance_sampling, beta, delta, temperature, with_bias):
    B, T, H, V = 4, 33, 64, 5003  # V spans two 4096-wide vocabulary blocks, the second partial
    hidden, weight, bias, targets, adv, mask, old, ref = _gpu_inputs(B, T, H, V, dtype, with_bias, temperature, beta)
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


@requires_cuda
@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_grpo_loss_cuda_bf16(loss_type):
    B, T, H, V = 4, 64, 128, 8011
    hidden, weight, bias, targets, adv, mask, old, ref = _gpu_inputs(B, T, H, V, torch.bfloat16, True, 1.0, 0.04)
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


@requires_cuda
def test_opcheck_cuda():
    N, H, V = 6, 16, 300
    h, w, b = torch.randn(N, H, device="cuda"), torch.randn(V, H, device="cuda"), torch.randn(V, device="cuda")
    t = torch.randint(0, V, (N,), device="cuda")
    s, a = torch.full((N,), 1.0 / N, device="cuda"), torch.randn(N, device="cuda")
    old = torch.randn(N, device="cuda") - 3
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(op("group_advantages"), (torch.randn(12, device="cuda"), 4, 0, False, 1e-4), test_utils=checks)
    torch.library.opcheck(op("fused_logprobs"), (h, w, b, t, 0.9), test_utils=checks)
    torch.library.opcheck(op("fused_grpo_loss"), (h, w, b, t, s, a, old, None, 0.0, 0.2, 0.2, None, 1.0, 0, 1.0, 1.05, True),
                          test_utils=checks)
    torch.library.opcheck(op("logits_grpo_loss"), (h @ w.T, t, s, a, old, None, 0.0, 0.2, 0.2, 2.0, 1.0, 0, 1.0, 1.05, True),
                          test_utils=checks)
    torch.library.opcheck(op("grpo_token_loss"), (old, s, a, None, None, 0.0, 0.2, 0.2, None, 0, 1.0, 1.05), test_utils=checks)
