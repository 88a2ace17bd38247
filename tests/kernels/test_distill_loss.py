"""r1kernels.distill_loss (the fused_distill_loss op) against reference.distill_loss in float64: the
loss and the gradients of the student's hidden states, weight and bias over beta {0, 0.3, 1},
temperatures, hard + soft weights, ignored positions, biases, Hs != Ht, chunking, reductions.

The tests named with a `backend` run the public function on each backend present (tests/kernels/
_backends.py): the C++ kernel, the plain-PyTorch kernel of r1kernels._torch and the Triton kernel
under TRITON_INTERPRET=1 (small shapes). Every bad input of the API gets its named error.
"""

from __future__ import annotations

import pytest
import torch
from _backends import backend_fixture, triton_module
from _distill_inputs import make_inputs, student_leaves
from conftest import requires_cuda

import r1kernels
from r1kernels import reference
from r1kernels._library import has_cpp_kernel, op
from r1kernels._torch import KERNELS as TORCH_KERNELS

backend = backend_fixture("fused_distill_loss")

BETAS = [0.0, 0.3, 1.0]


def test_cpu_kernel_is_the_fast_path():
    assert has_cpp_kernel("fused_distill_loss") and has_cpp_kernel("logits_distill_loss")


def run_both(inp, **opt):
    """(loss, grads) of ours and of the reference on fresh leaves of the same inputs."""
    out = []
    weights = None  # reduction="none": one non-uniform weight per position, the same for both
    for fn in (r1kernels.distill_loss, reference.distill_loss):
        xs = student_leaves(inp)
        args = {**inp, **xs}
        loss = fn(args["student_hidden"], args["student_weight"], args["teacher_hidden"], args["teacher_weight"],
                  args["labels"], student_bias=args["student_bias"], teacher_bias=args["teacher_bias"], **opt)
        if loss.dim() and weights is None:
            weights = torch.rand(loss.shape, dtype=torch.float64)
        g = weights.to(loss.dtype) if loss.dim() else None
        grads = torch.autograd.grad(loss, list(xs.values()), grad_outputs=g)
        out.append((loss, dict(zip(xs, grads))))
    return out


def check(ours, ref, atol=1e-4, rtol=1e-4):  # fp32 kernels against float64
    (l1, g1), (l2, g2) = ours, ref
    assert l1.dtype == torch.float32 and l1.shape == l2.shape
    torch.testing.assert_close(l1.double(), l2.double(), atol=atol, rtol=rtol)
    assert g1.keys() == g2.keys()
    for name in g1:
        assert g1[name].dtype == g2[name].dtype, name
        torch.testing.assert_close(g1[name].double(), g2[name].double(), atol=atol, rtol=rtol,
                                   msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("beta", BETAS)
def test_matches_reference(backend, beta, reduction):
    # temperature != 1, hard + soft weights, biases, Hs != Ht, a fully ignored sequence
    inp = make_inputs((3, 5), 12, 20, 37, bias=True, ignored="sequence")
    check(*run_both(inp, beta=beta, temperature=0.7, weight_hard_loss=0.4, weight_soft_loss=0.8, reduction=reduction))


@pytest.mark.parametrize("beta", BETAS)
def test_soft_only_no_labels(backend, beta):
    # labels=None: every position counts; no bias, temperature 1
    inp = make_inputs((9,), 8, 8, 29, ignored="none")
    inp["labels"] = None
    check(*run_both(inp, beta=beta))


@pytest.mark.parametrize("beta", BETAS)
def test_hard_only_and_temperature_above_one(backend, beta):
    inp = make_inputs((2, 4), 6, 10, 19, bias=True)
    check(*run_both(inp, beta=beta, temperature=2.5, weight_hard_loss=1.0, weight_soft_loss=0.0))
    inp["labels"] = torch.where(inp["labels"] == -100, 3, inp["labels"])  # another ignore_index; -100 out of range
    check(*run_both(inp, beta=beta, temperature=2.5, weight_hard_loss=0.5, weight_soft_loss=1.5, ignore_index=3))


@pytest.mark.parametrize("beta", BETAS)
def test_chunks_over_rows_and_vocabulary(backend, monkeypatch, beta):
    # 3 rows per chunk (the last one short), and a vocabulary no power of two and above the kernels'
    # vocabulary blocks, so both chunk loops run more than once with a ragged tail
    V = 1100 + 37
    monkeypatch.setenv("R1_DISTILL_CHUNK_BYTES", str(3 * V * 4))
    inp = make_inputs((2, 4), 16, 24, V, bias=True)
    check(*run_both(inp, beta=beta, temperature=0.9, weight_hard_loss=0.3))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_one_position(backend, reduction):
    inp = make_inputs((1,), 4, 6, 13, bias=True, ignored="none")
    check(*run_both(inp, beta=0.3, weight_hard_loss=0.5, reduction=reduction))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_position_ignored(backend, reduction):
    inp = make_inputs((2, 3), 4, 6, 13, bias=True)
    inp["labels"][:] = -100
    (loss, grads), _ = ours_and_ref = run_both(inp, weight_hard_loss=0.5, reduction=reduction)
    check(*ours_and_ref)
    assert (loss == 0).all()  # "mean" over no positions is 0, not NaN
    assert all((g == 0).all() for g in grads.values())


def test_bfloat16(backend):
    inp = make_inputs((2, 6), 16, 24, 97, dtype=torch.bfloat16, bias=True, scale=0.5)
    check(*run_both(inp, beta=0.3, temperature=0.8, weight_hard_loss=0.5), atol=1e-2, rtol=2e-2)


def test_teacher_in_another_dtype(backend):
    # a bfloat16 teacher beside a float32 student (the teacher's copy kept small): the student's
    # gradients stay float32
    inp = make_inputs((2, 5), 16, 24, 61, dtype=torch.float32, bias=True, scale=0.5)
    for k in ("teacher_hidden", "teacher_weight", "teacher_bias"):
        inp[k] = inp[k].bfloat16()
    ref_inp = {k: (v.float() if k.startswith("teacher") else v) for k, v in inp.items()}
    (l1, g1), _ = run_both(inp, beta=0.3, weight_hard_loss=0.5)
    _, (l2, g2) = run_both(ref_inp, beta=0.3, weight_hard_loss=0.5)
    check((l1, g1), (l2, g2), atol=1e-4, rtol=1e-4)


def test_teacher_gets_no_gradient(backend):
    inp = make_inputs((5,), 4, 6, 11, bias=True)
    th = inp["teacher_hidden"].clone().requires_grad_()
    tw = inp["teacher_weight"].clone().requires_grad_()
    sh = inp["student_hidden"].clone().requires_grad_()
    loss = r1kernels.distill_loss(sh, inp["student_weight"], th, tw, inp["labels"])
    loss.backward()
    assert th.grad is None and tw.grad is None and sh.grad is not None


def test_no_grad_forward_matches(backend):
    inp = make_inputs((2, 3), 4, 6, 13, bias=True)
    args = (inp["student_hidden"], inp["student_weight"], inp["teacher_hidden"], inp["teacher_weight"], inp["labels"])
    with torch.no_grad():
        got = r1kernels.distill_loss(*args, beta=0.3, student_bias=inp["student_bias"], teacher_bias=inp["teacher_bias"])
    want = reference.distill_loss(*args, beta=0.3, student_bias=inp["student_bias"], teacher_bias=inp["teacher_bias"])
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# bad input: each gets an error that names it


def _good():
    inp = make_inputs((2, 3), 4, 6, 13)
    return [inp["student_hidden"], inp["student_weight"], inp["teacher_hidden"], inp["teacher_weight"], inp["labels"]]


@pytest.mark.parametrize("change, kwargs, match", [
    (lambda a: a.__setitem__(3, torch.randn(14, 6, dtype=torch.float64)), {}, "vocabularies differ.*V=13.*V=14"),
    (lambda a: a.__setitem__(2, torch.randn(3, 2, 6, dtype=torch.float64)), {}, "teacher_hidden must have student_hidden's leading shape"),
    (lambda a: a.__setitem__(2, torch.randn(6, 6, dtype=torch.float64)), {}, "teacher_hidden must have student_hidden's leading shape"),
    (lambda a: a.__setitem__(4, torch.zeros(3, 2, dtype=torch.long)), {}, "labels must have the positions' shape"),
    (lambda a: a.__setitem__(4, torch.zeros(2, 3, dtype=torch.int32)), {}, "labels must be int64"),
    (lambda a: a.__setitem__(4, torch.full((2, 3), 13)), {}, r"labels must lie in \[0, 13\)"),
    (lambda a: a.__setitem__(4, None), {"weight_hard_loss": 0.5}, "labels=None needs weight_hard_loss == 0"),
    (lambda a: None, {"beta": -0.1}, "beta must be a number in"),
    (lambda a: None, {"beta": 1.5}, "beta must be a number in"),
    (lambda a: None, {"beta": float("nan")}, "beta must be a number in"),
    (lambda a: None, {"temperature": 0.0}, "temperature must be > 0"),
    (lambda a: None, {"temperature": -1.0}, "temperature must be > 0"),
    (lambda a: None, {"reduction": "batchmean"}, "reduction must be one of"),
    (lambda a: None, {"weight_soft_loss": float("inf")}, "weight_soft_loss must be a finite number"),
    (lambda a: None, {"ignore_index": 1.5}, "ignore_index must be an int"),
    (lambda a: a.__setitem__(1, torch.randn(13, 5, dtype=torch.float64)), {}, "student_hidden's last dimension"),
    (lambda a: a.__setitem__(3, torch.randn(13, 5, dtype=torch.float64)), {}, "teacher_hidden's last dimension"),
    (lambda a: a.__setitem__(0, torch.randn(4, dtype=torch.float64)), {}, "student_hidden must be"),
    (lambda a: None, {"student_bias": torch.zeros(12, dtype=torch.float64)}, r"student_bias must have shape \[V\]"),
    (lambda a: None, {"teacher_bias": torch.zeros(12, dtype=torch.float64)}, r"teacher_bias must have shape \[V\]"),
    (lambda a: a.__setitem__(2, torch.zeros(2, 3, 6, dtype=torch.long)), {}, "teacher_hidden and teacher_weight must be floating"),
    (lambda a: a.__setitem__(2, torch.randn(2, 3, 6, device="meta")), {}, "teacher_hidden is on meta"),
    (lambda a: a.__setitem__(3, torch.randn(13, 6, device="meta")), {}, "teacher_weight is on meta"),
], ids=["vocab", "lead-shape", "lead-dims", "labels-shape", "labels-dtype", "labels-range", "labels-none-hard", "beta-neg",
        "beta-big", "beta-nan", "temperature-0", "temperature-neg", "reduction", "weight-inf", "ignore-index",
        "student-H", "teacher-H", "student-dims", "student-bias", "teacher-bias", "teacher-dtype", "teacher-device",
        "teacher-weight-device"])
def test_bad_input_is_named(change, kwargs, match):
    args = _good()
    change(args)
    with pytest.raises(ValueError, match=match):
        r1kernels.distill_loss(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# the op: opcheck (schema, fake, autograd registration) and torch.compile


@pytest.mark.parametrize("compute_grad", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(compute_grad, bias):
    inp = make_inputs((6,), 4, 5, 17, dtype=torch.float32, bias=bias)
    scale = (inp["labels"] != -100).float() / 6
    sh = inp["student_hidden"].requires_grad_(compute_grad)
    args = (sh, inp["student_weight"], inp["student_bias"], inp["teacher_hidden"], inp["teacher_weight"], inp["teacher_bias"],
            inp["labels"], scale, 0.3, 0.8, -100, 0.5, 1.0, compute_grad)
    torch.library.opcheck(op("fused_distill_loss"), args)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compile_fullgraph_forward_and_backward(reduction):
    inp = make_inputs((2, 5), 8, 12, 40, dtype=torch.float32, bias=True)

    def step(sh, sw, sb):
        loss = r1kernels.distill_loss(sh, sw, inp["teacher_hidden"], inp["teacher_weight"], inp["labels"], beta=0.3,
                                      temperature=0.8, weight_hard_loss=0.5, student_bias=sb,
                                      teacher_bias=inp["teacher_bias"], reduction=reduction)
        return loss.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    xs, ys = list(student_leaves(inp).values()), list(student_leaves(inp).values())
    l1, l2 = compiled(*xs), step(*ys)
    torch.testing.assert_close(l1, l2)
    for a, b in zip(torch.autograd.grad(l1, xs), torch.autograd.grad(l2, ys)):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------
# the Triton launchers directly: vocabulary blocks and row chunks that loop more than once


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_triton_blocks_and_chunks(beta, temperature):
    tdl = triton_module("distill_loss")
    inp = make_inputs((7,), 8, 12, 150, dtype=torch.float32, bias=True)
    counted = inp["labels"] != -100
    scale = counted.float() / counted.sum()
    args = (inp["student_hidden"], inp["student_weight"], inp["student_bias"], inp["teacher_hidden"], inp["teacher_weight"],
            inp["teacher_bias"], inp["labels"], scale, beta, temperature, -100, 0.5, 0.8, True)
    # 3 rows per chunk, 64-wide vocabulary blocks (the last one ragged), against the plain-PyTorch kernel
    got = tdl.fused_distill_loss(*args, chunk_size=3, block_v=64)
    want = TORCH_KERNELS["fused_distill_loss"](*args)
    for name, a, b in zip(("loss", "rows", "grad_hidden", "grad_weight", "grad_bias"), got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------------
# on a GPU: the CUDA kernel where built (else Triton's), at a realistic vocabulary


@requires_cuda
@pytest.mark.parametrize("beta", BETAS)
def test_matches_reference_cuda(beta, atol=1e-4, rtol=1e-3):
    inp = make_inputs((4, 64), 64, 96, 32000 + 17, dtype=torch.float32, bias=True, ignored="sequence", scale=0.5)
    inp = {k: (v.cuda() if v is not None else None) for k, v in inp.items()}
    ours, ref = run_both(inp, beta=beta, temperature=0.8, weight_hard_loss=0.3)
    check(ours, ref, atol=atol, rtol=rtol)


def test_torch_compile_inductor_both_ops():
    # the default backend (inductor's C++ codegen): both public distillation ops in one fullgraph
    # function, forward and backward, against eager
    inp = make_inputs((2, 4), 8, 12, 40, dtype=torch.float32, bias=True)

    def step(sh, sw, zs):
        a = r1kernels.distill_loss(sh, sw, inp["teacher_hidden"], inp["teacher_weight"], inp["labels"], beta=0.3,
                                   weight_hard_loss=0.5)
        b = r1kernels.distill_loss_from_logits(zs, zs.detach() * 0.5, inp["labels"], beta=1.0, reduction="sum")
        return a + b

    xs = [inp["student_hidden"].clone().requires_grad_(), inp["student_weight"].clone().requires_grad_(),
          torch.randn(2, 4, 40, requires_grad=True)]
    ys = [x.detach().clone().requires_grad_() for x in xs]
    l1, l2 = torch.compile(step, fullgraph=True)(*xs), step(*ys)
    torch.testing.assert_close(l1, l2)
    for a, b in zip(torch.autograd.grad(l1, xs), torch.autograd.grad(l2, ys)):
        torch.testing.assert_close(a, b)
