"""Truncated importance sampling (TIS) in the GRPO losses: grpo_loss and grpo_loss_from_logits with
rollout_logprobs / tis_cap / tis_level against the reference (TRL's token_truncate and
sequence_truncate), on every backend present (the C++ kernel, the plain-PyTorch one and the Triton
one under the interpreter); the ops' kernels against each other and opcheck; the Triton launchers
with chunk and block loops; the errors."""

from __future__ import annotations

import pytest
import torch
from _backends import backend_fixture, triton_module
from _grpo_inputs import leaves, make_inputs

import r1kernels
from r1kernels import reference
from r1kernels._library import op
from r1kernels._torch import grpo_loss as torch_grpo_loss
from r1kernels._torch import grpo_loss_from_logits as torch_logits_loss
from r1kernels._torch import grpo_token_loss as torch_token_loss

backend = backend_fixture("fused_grpo_loss", "logits_grpo_loss", "fused_logprobs", "fused_logprobs_backward")
tgl = triton_module("grpo_loss")
tgll = triton_module("grpo_loss_from_logits")
tgtl = triton_module("grpo_token_loss")

STAT_KEYS = {"kl", "clip_low", "clip_high", "clip_region", "entropy", "tis_ratio_mean", "tis_ratio_max", "tis_clipped"}


def with_rollout(inp, noise=0.6, seed=0):
    """inp plus rollout log-probs far enough from the policy's that the cap bites on some tokens."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lp = reference.token_logprobs(inp["hidden"], inp["weight"], inp["targets"], bias=inp["bias"])
    inp = dict(inp)
    inp["rollout"] = (lp + noise * torch.randn(lp.shape, generator=g)).clamp(max=0.0)
    return inp


def options(loss_type, **kw):
    opt = dict(beta=0.04, loss_type=loss_type, epsilon_high=5.0 if loss_type == "cispo" else 0.28, tis_cap=1.3)
    opt.update(kw)
    return opt


def run(fn, inp, from_logits=False, **opt):
    xs = leaves(inp, True)
    bias = xs[2] if len(xs) > 2 else None
    if from_logits:
        logits = xs[0].float() @ xs[1].float().T + (0.0 if bias is None else bias.float())
        xs = [logits.detach().requires_grad_()]
        args = (xs[0], inp["targets"], inp["advantages"])
        kw = {}
    else:
        args = (xs[0], xs[1], inp["targets"], inp["advantages"])
        kw = {"bias": bias}
    loss, stats = fn(*args, mask=inp["mask"], old_logprobs=inp["old"], ref_logprobs=inp["ref"],
                     rollout_logprobs=inp["rollout"], **kw, **opt)
    return loss, stats, torch.autograd.grad(loss, xs)


def check(ours, ref, atol=1e-5, rtol=1e-4):
    (l1, s1, g1), (l2, s2, g2) = ours, ref
    torch.testing.assert_close(l1, l2.float(), atol=atol, rtol=rtol)
    assert set(s1) == set(s2) == STAT_KEYS
    for k in s2:
        assert not s1[k].requires_grad, k
        torch.testing.assert_close(s1[k].float(), s2[k].float(), atol=max(atol, 1e-5), rtol=max(rtol, 1e-4), msg=k)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("tis_level", ["token", "sequence"])
@pytest.mark.parametrize("importance_sampling", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "cispo", "sapo"])
def test_grpo_loss_matches_reference(backend, loss_type, importance_sampling, tis_level):
    torch.manual_seed(hash((loss_type, importance_sampling, tis_level)) % 1000)
    inp = with_rollout(make_inputs(3, 7, 24, 301, bias=True))
    opt = options(loss_type, importance_sampling=importance_sampling, tis_level=tis_level)
    ours, ref = run(r1kernels.grpo_loss, inp, **opt), run(reference.grpo_loss, inp, **opt)
    check(ours, ref)
    # the cap bites on some tokens (or sequences) and not all, so the test sees both branches
    assert 0 < float(ref[1]["tis_clipped"]) < 1


@pytest.mark.parametrize("tis_level", ["token", "sequence"])
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "cispo"])
def test_grpo_loss_from_logits_matches_reference(backend, loss_type, tis_level):
    torch.manual_seed(7 + len(loss_type))
    inp = with_rollout(make_inputs(3, 6, 16, 97, bias=True), seed=3)
    opt = options(loss_type, tis_level=tis_level, temperature=1.0)
    check(run(r1kernels.grpo_loss_from_logits, inp, from_logits=True, **opt),
          run(reference.grpo_loss_from_logits, inp, from_logits=True, **opt))


def test_tis_changes_the_loss_and_a_huge_cap_is_the_plain_ratio(backend):
    torch.manual_seed(11)
    inp = with_rollout(make_inputs(2, 5, 8, 40, bias=True, mask="all"))
    plain = run(r1kernels.grpo_loss, {**inp, "rollout": None}, **{**options("grpo"), "tis_cap": None})
    capped = run(r1kernels.grpo_loss, inp, **options("grpo", beta=0.0))
    assert abs(float(plain[0].detach()) - float(capped[0].detach())) > 1e-4
    # rollout = the policy itself: every ratio is 1, nothing is clipped, the loss is the plain one
    with torch.no_grad():
        lp = reference.token_logprobs(inp["hidden"], inp["weight"], inp["targets"], bias=inp["bias"])
    same = run(r1kernels.grpo_loss, {**inp, "rollout": lp}, **options("grpo"))
    torch.testing.assert_close(same[0], plain[0])
    assert float(same[1]["tis_clipped"]) == 0.0
    torch.testing.assert_close(same[1]["tis_ratio_mean"], torch.tensor(1.0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("B, T, mask", [(1, 1, "all"), (3, 4, "none"), (4, 1, "random")])
def test_edge_shapes_and_masks(backend, B, T, mask):
    torch.manual_seed(B * 10 + T)
    inp = with_rollout(make_inputs(B, T, 8, 33, bias=True, mask=mask))
    for level in ("token", "sequence"):
        opt = options("grpo", tis_level=level)
        ours = run(r1kernels.grpo_loss, inp, **opt)
        check(ours, run(reference.grpo_loss, inp, **opt))
        if mask == "none":
            assert float(ours[0].detach()) == 0.0 and all(torch.count_nonzero(g) == 0 for g in ours[2])


def test_masked_rollout_logprobs_may_be_anything(backend):
    torch.manual_seed(5)
    inp = with_rollout(make_inputs(3, 6, 8, 40, bias=True))
    bad = {**inp, "rollout": torch.where(inp["mask"], inp["rollout"], torch.full_like(inp["rollout"], float("nan")))}
    for level in ("token", "sequence"):
        check(run(r1kernels.grpo_loss, bad, **options("grpo", tis_level=level)),
              run(r1kernels.grpo_loss, inp, **options("grpo", tis_level=level)))


# ---------------------------------------------------------------------------------------------
# the ops themselves


def _token_args(N=40, loss_kind=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(N, generator=g) * 3
    scale = (torch.rand(N, generator=g) < 0.7).float() / 7
    noisy = [(logp + 0.5 * torch.randn(N, generator=g)).clamp(max=0) for _ in range(3)]
    return (logp, scale, torch.randn(N, generator=g), noisy[0], noisy[1], 0.04, 0.2, 0.28 if loss_kind != 1 else 4.0,
            1.3 if loss_kind == 0 else None, loss_kind, 1.0, 1.05, noisy[2], 1.2)


def _closed_form_float64(args):
    """The token loss with TIS in float64: the unweighted surrogate's closed form (beta 0), times the
    capped ratio, plus the k3 KL written out: the oracle of the ops."""
    logp, scale, adv, old, ref, beta, lo, hi, delta, kind, tp, tn, rollout, cap = args
    lp, A, old, ref, rollout = (t.double() for t in (logp, adv, old, ref, rollout))
    surrogate, dsur = torch_token_loss.token_loss_and_grad(lp, A, old, ref, 0.0, lo, hi, delta, kind, tp, tn)
    w = torch.exp(lp - rollout).clamp(max=cap)
    d = ref - lp
    per, grad = surrogate * w + beta * (d.exp() - d - 1), dsur * w + beta * (1 - d.exp())
    s = scale.double()
    return (per * s).sum(), grad * s


@pytest.mark.parametrize("loss_kind", [0, 1, 2])
def test_grpo_token_loss_op_matches_float64(loss_kind):
    args = _token_args(loss_kind=loss_kind, seed=loss_kind)
    eloss, egrad = _closed_form_float64(args)
    for loss, grad in (op("grpo_token_loss")(*args), torch_token_loss.grpo_token_loss(*args)):
        torch.testing.assert_close(loss.double(), eloss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad.double(), egrad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loss_kind", [0, 1, 2])
def test_triton_token_launcher(loss_kind):
    args = _token_args(N=37, loss_kind=loss_kind, seed=3)
    loss, grad = tgtl.grpo_token_loss(*args, block=16)
    eloss, egrad = torch_token_loss.grpo_token_loss(*args)
    torch.testing.assert_close(loss, eloss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, egrad, atol=1e-5, rtol=1e-5)


def _head_args(N=13, H=8, V=50, seed=0, compute_grad=True):
    g = torch.Generator().manual_seed(seed)
    hidden, weight, bias = torch.randn(N, H, generator=g), torch.randn(V, H, generator=g) / 3, torch.randn(V, generator=g)
    targets = torch.randint(0, V, (N,), generator=g)
    lp = torch.log_softmax(hidden @ weight.T + bias, -1).gather(-1, targets[:, None]).squeeze(-1)
    noisy = [(lp + 0.5 * torch.randn(N, generator=g)).clamp(max=0) for _ in range(3)]
    scale = (torch.rand(N, generator=g) < 0.8).float() / N
    return (hidden, weight, bias, targets, scale, torch.randn(N, generator=g), noisy[0], noisy[1], 0.04, 0.2, 0.28, 1.3, 0.9,
            0, 1.0, 1.05, compute_grad, noisy[2], 1.2)


def _assert_outputs_close(out, expected, active):
    loss, logp, entropy, *grads = out
    eloss, elogp, eentropy, *egrads = expected
    torch.testing.assert_close(loss, eloss, atol=1e-5, rtol=1e-4)
    # logp and entropy on the tokens that count (the C++ kernels skip masked rows: 0 there, Triton computes them)
    torch.testing.assert_close(logp[active], elogp[active], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(entropy[active], eentropy[active], atol=1e-5, rtol=1e-4)
    for a, b in zip(grads, egrads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_fused_ops_match_torch_kernels_and_triton():
    args = _head_args()
    active = args[4] != 0
    expected = torch_grpo_loss.fused_grpo_loss(*args)
    _assert_outputs_close(op("fused_grpo_loss")(*args), expected, active)
    _assert_outputs_close(tgl.fused_grpo_loss(*args, chunk_size=4, block_v=16), expected, active)
    logits = args[0] @ args[1].T + args[2]
    largs = (logits, *args[3:])
    expected = torch_logits_loss.logits_grpo_loss(*largs)
    _assert_outputs_close(op("logits_grpo_loss")(*largs), expected, active)
    _assert_outputs_close(tgll.logits_grpo_loss(*largs, block_v=16), expected, active)


def test_opcheck():
    for compute_grad in (False, True):
        args = _head_args(compute_grad=compute_grad)
        torch.library.opcheck(op("fused_grpo_loss"), args)
    logits = (args[0] @ args[1].T + args[2]).requires_grad_()
    torch.library.opcheck(op("logits_grpo_loss"), (logits, *args[3:]))
    targs = _token_args()
    torch.library.opcheck(op("grpo_token_loss"), (targs[0].clone().requires_grad_(), *targs[1:]))


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("cap", [0.0, -1.0, float("nan"), float("inf")])
def test_tis_cap_must_be_positive(cap):
    inp = with_rollout(make_inputs(2, 3, 8, 20))
    with pytest.raises(ValueError, match="tis_cap"):
        run(r1kernels.grpo_loss, inp, **options("grpo", tis_cap=cap))
    with pytest.raises(ValueError, match="tis_cap"):
        run(r1kernels.grpo_loss_from_logits, inp, from_logits=True, **options("grpo", tis_cap=cap))
    if cap <= 0:
        with pytest.raises(ValueError, match="tis_cap"):
            op("grpo_token_loss")(*_token_args()[:-1], cap)


def test_bad_tis_arguments():
    inp = with_rollout(make_inputs(2, 3, 8, 20))
    with pytest.raises(ValueError, match="tis_level"):
        run(r1kernels.grpo_loss, inp, **options("grpo", tis_level="batch"))
    with pytest.raises(ValueError, match="rollout_logprobs and tis_cap"):
        run(r1kernels.grpo_loss, inp, **options("grpo", tis_cap=None))
    with pytest.raises(ValueError, match="rollout_logprobs and tis_cap"):
        run(r1kernels.grpo_loss, {**inp, "rollout": None}, **options("grpo"))
    with pytest.raises(ValueError, match="rollout_logprobs must have shape"):
        run(r1kernels.grpo_loss, {**inp, "rollout": inp["rollout"][:, :2]}, **options("grpo"))
    with pytest.raises(ValueError, match="rollout_logprobs must hold log-probabilities"):
        run(r1kernels.grpo_loss, {**inp, "rollout": inp["rollout"].abs() + 1.0}, **options("grpo"))
    with pytest.raises(ValueError, match="rollout_logp and tis_cap"):
        op("grpo_token_loss")(*_token_args()[:-1], None)
