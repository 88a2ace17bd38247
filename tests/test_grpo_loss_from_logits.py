"""r1kernels.grpo_loss_from_logits (the C++ logits_grpo_loss on the CPU) against
reference.grpo_loss_from_logits: loss, stats and the gradient of the logits."""

import pytest
import torch
from _grpo_inputs import assert_stats_close, make_inputs

import r1kernels
from r1kernels import reference
from r1kernels._library import has_cpp_kernel, op

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
def test_matches_reference(loss_type, importance_sampling, dtype, atol, rtol):
    inp = make_inputs(3, 6, 16, 257, bias=True, temperature=0.8)
    opt = dict(beta=0.04, temperature=0.8, loss_type=loss_type, importance_sampling=importance_sampling,
               epsilon_high=5.0 if loss_type == "cispo" else 0.28, delta=1.2 if loss_type == "grpo" else None,
               num_items=23 if loss_type == "dapo" else None)
    (l1, s1, g1), (l2, s2, g2) = run_both(_logits(inp, dtype), inp, **opt)
    torch.testing.assert_close(l1, l2.float(), atol=atol, rtol=rtol)
    assert_stats_close(s1, s2, atol=max(atol, 1e-5), rtol=max(rtol, 1e-4))
    assert g1.dtype == dtype
    torch.testing.assert_close(g1.float(), g2.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("T", [1, 4])
def test_plain_on_policy_and_masked(T, monkeypatch):
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
