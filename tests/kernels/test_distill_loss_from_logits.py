"""r1kernels.distill_loss_from_logits (the logits_distill_loss op) against
reference.distill_loss_from_logits in float64: the loss and the gradient of the student's logits
over beta {0, 0.3, 1}, temperatures, hard + soft weights, ignored positions, chunking, reductions, on
each backend present; bad input gets its named error; opcheck and torch.compile."""

from __future__ import annotations

import pytest
import torch
from _backends import backend_fixture, triton_module

import r1kernels
from r1kernels import reference
from r1kernels._library import op
from r1kernels._torch import KERNELS as TORCH_KERNELS

backend = backend_fixture("logits_distill_loss")


def make_logits(lead, V, dtype=torch.float64, ignored="sequence"):
    zs = (torch.randn(*lead, V, dtype=torch.float64) * 2).to(dtype)
    zt = (torch.randn(*lead, V, dtype=torch.float64) * 2).to(dtype)
    labels = torch.randint(0, V, lead)
    if ignored:
        labels[torch.rand(lead) < 0.25] = -100
        labels[0] = -100
    return zs, zt, labels


def run_both(zs, zt, labels, **opt):
    out = []
    weights = torch.rand(zs.shape[:-1], dtype=torch.float64)  # reduction="none": a weight per position
    for fn in (r1kernels.distill_loss_from_logits, reference.distill_loss_from_logits):
        x = zs.detach().clone().requires_grad_()
        loss = fn(x, zt, labels, **opt)
        (g,) = torch.autograd.grad(loss, x, grad_outputs=weights.to(loss.dtype) if loss.dim() else None)
        out.append((loss, g))
    return out


def check(ours, ref, atol=1e-4, rtol=1e-4):  # fp32 kernels against float64
    (l1, g1), (l2, g2) = ours, ref
    assert l1.dtype == torch.float32 and l1.shape == l2.shape
    torch.testing.assert_close(l1.double(), l2.double(), atol=atol, rtol=rtol)
    assert g1.dtype == g2.dtype
    torch.testing.assert_close(g1.double(), g2.double(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_matches_reference(backend, beta, reduction):
    zs, zt, labels = make_logits((3, 4), 41)
    check(*run_both(zs, zt, labels, beta=beta, temperature=0.7, weight_hard_loss=0.4, weight_soft_loss=0.8,
                    reduction=reduction))


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_chunks_no_labels_one_position(backend, monkeypatch, beta):
    V = 1100 + 37
    monkeypatch.setenv("R1_DISTILL_CHUNK_BYTES", str(2 * V * 4))
    zs, zt, _ = make_logits((5,), V)
    check(*run_both(zs, zt, None, beta=beta, temperature=1.3))
    zs, zt, labels = make_logits((1,), 9, ignored=None)
    check(*run_both(zs, zt, labels, beta=beta, weight_hard_loss=1.0, reduction="sum"))


def test_bfloat16(backend):
    zs, zt, labels = make_logits((2, 5), 77, dtype=torch.bfloat16)
    check(*run_both(zs, zt, labels, beta=0.3, weight_hard_loss=0.5), atol=1e-2, rtol=2e-2)


@pytest.mark.parametrize("change, kwargs, match", [
    (lambda a: a.__setitem__(1, torch.randn(2, 3, 12, dtype=torch.float64)), {}, "vocabularies differ.*V=13.*V=12"),
    (lambda a: a.__setitem__(1, torch.randn(3, 2, 13, dtype=torch.float64)), {}, "teacher_logits must have student_logits' leading shape"),
    (lambda a: a.__setitem__(2, torch.zeros(3, 2, dtype=torch.long)), {}, "labels must have the positions' shape"),
    (lambda a: a.__setitem__(2, None), {"weight_hard_loss": 1.0}, "labels=None needs weight_hard_loss == 0"),
    (lambda a: None, {"beta": 2.0}, "beta must be a number in"),
    (lambda a: None, {"temperature": 0}, "temperature must be > 0"),
    (lambda a: None, {"reduction": "batchmean"}, "reduction must be one of"),
    (lambda a: a.__setitem__(1, torch.randn(2, 3, 13, device="meta")), {}, "teacher_logits is on meta"),
    (lambda a: a.__setitem__(0, torch.randn(13, dtype=torch.float64)), {}, "student_logits must be"),
], ids=["vocab", "lead-shape", "labels-shape", "labels-none-hard", "beta", "temperature", "reduction", "device", "dims"])
def test_bad_input_is_named(change, kwargs, match):
    args = list(make_logits((2, 3), 13))
    change(args)
    with pytest.raises(ValueError, match=match):
        r1kernels.distill_loss_from_logits(*args, **kwargs)


@pytest.mark.parametrize("compute_grad", [True, False])
def test_opcheck(compute_grad):
    zs, zt, labels = make_logits((6,), 21, dtype=torch.float32)
    scale = (labels != -100).float()
    args = (zs.requires_grad_(compute_grad), zt, labels, scale, 0.3, 0.8, -100, 0.5, 1.0, compute_grad)
    torch.library.opcheck(op("logits_distill_loss"), args)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compile_fullgraph_forward_and_backward(reduction):
    zs, zt, labels = make_logits((2, 5), 33, dtype=torch.float32)

    def step(x):
        return r1kernels.distill_loss_from_logits(x, zt, labels, beta=0.3, weight_hard_loss=0.5, reduction=reduction).sum()

    x1, x2 = zs.clone().requires_grad_(), zs.clone().requires_grad_()
    l1, l2 = torch.compile(step, fullgraph=True, backend="aot_eager")(x1), step(x2)
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(torch.autograd.grad(l1, x1)[0], torch.autograd.grad(l2, x2)[0])


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_triton_blocks_and_chunks(beta):
    tdl = triton_module("distill_loss_from_logits")
    zs, zt, labels = make_logits((7,), 150, dtype=torch.float32)
    scale = (labels != -100).float()
    args = (zs, zt, labels, scale, beta, 0.6, -100, 0.5, 0.8, True)
    # 3 rows per chunk, 64-wide vocabulary blocks (the last one ragged), against the plain-PyTorch kernel
    got = tdl.logits_distill_loss(*args, chunk_size=3, block_v=64)
    want = TORCH_KERNELS["logits_distill_loss"](*args)
    for name, a, b in zip(("loss", "rows", "grad"), got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
