"""r1kernels.group_advantages against reference.group_advantages and TRL's formula: every scale x
leave_one_out, NaN rewards, zero-variance groups, group_size 1.

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
from _gpu_cases import GPU_BF16, GPU_FP32
from _triton_cases import DEVICE, FP32, _close, _rewards
from conftest import requires_cuda

import r1kernels
from r1kernels import reference
from r1kernels._library import has_cpp_kernel, op

backend = backend_fixture("group_advantages")
tga = triton_module("group_advantages")

SCALES = ["group", "batch", "none"]

DTYPES = [(torch.float32, 1e-6, 1e-5), (torch.float64, 1e-12, 1e-10), (torch.bfloat16, 1e-2, 1e-2)]


def check(rewards, G, scale, loo, atol, rtol, eps=1e-4):
    got = r1kernels.group_advantages(rewards, G, scale=scale, leave_one_out=loo, eps=eps, return_stats=True)
    adv, stats = reference.group_advantages(rewards, G, scale, loo, eps)
    assert got.advantages.dtype == rewards.dtype and got.advantages.shape == rewards.shape
    torch.testing.assert_close(got.advantages, adv, atol=atol, rtol=rtol)
    torch.testing.assert_close(got.stats.mean, stats.mean, atol=atol, rtol=rtol)
    torch.testing.assert_close(got.stats.std, stats.std, atol=atol, rtol=rtol)
    assert torch.equal(got.stats.zero_std, stats.zero_std)
    return got


def test_cpu_kernel_is_the_fast_path():
    assert has_cpp_kernel("group_advantages")


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("leave_one_out", [False, True])
@pytest.mark.parametrize("scale", SCALES)
def test_matches_reference(backend, scale, leave_one_out, dtype, atol, rtol):
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bf16 arithmetic")
    G = 6
    r = torch.randn(7 * G).to(dtype)
    r[3] = float("nan")  # an unscorable sample
    r[G : 2 * G] = 0.5  # a zero-variance group
    r[2 * G : 3 * G] = float("nan")  # a group with nothing scorable
    r[3 * G : 4 * G - 1] = float("nan")  # one scorable sample left
    got = check(r, G, scale, leave_one_out, atol, rtol)
    assert got.stats.zero_std[1:4].all() and not got.stats.zero_std[0]
    assert (got.advantages[G : 4 * G] == 0).all() and got.advantages[3] == 0


@pytest.mark.parametrize("leave_one_out", [False, True])
@pytest.mark.parametrize("scale", SCALES)
def test_group_size_one(backend, scale, leave_one_out):
    got = check(torch.randn(9), 1, scale, leave_one_out, 1e-6, 1e-5)
    assert (got.advantages == 0).all() and got.stats.zero_std.all()


@pytest.mark.parametrize("scale", SCALES)
def test_equals_trl_formula(backend, scale):
    # TRL GRPOTrainer: (r - nanmean of the group) / (nanstd + 1e-4), std of the group or of the batch,
    # or not divided ("none"); NaN advantages become 0
    G = 4
    r = torch.randn(8 * G, dtype=torch.float64)
    r[5] = float("nan")
    grouped = r.view(-1, G)
    mean = torch.nanmean(grouped, 1).repeat_interleave(G)
    valid = ~torch.isnan(grouped)
    std_g = torch.stack([row[v].std() for row, v in zip(grouped, valid)]).repeat_interleave(G)
    std = {"group": std_g, "batch": r[~torch.isnan(r)].std().expand_as(r), "none": None}[scale]
    trl = r - mean if std is None else (r - mean) / (std + 1e-4)
    trl = torch.nan_to_num(trl, nan=0.0)
    got = r1kernels.group_advantages(r, G, scale=scale)
    torch.testing.assert_close(got, trl, atol=1e-12, rtol=1e-10)


def test_leave_one_out_is_rloo(backend):
    r = torch.tensor([1.0, 2.0, 4.0, 0.0, 0.0, 3.0], dtype=torch.float64)
    got = r1kernels.group_advantages(r, 3, scale="none", leave_one_out=True)
    expected = torch.tensor([1 - 3.0, 2 - 2.5, 4 - 1.5, 0 - 1.5, 0 - 1.5, 3 - 0.0], dtype=torch.float64)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    "rewards, group_size, kwargs, match",
    [
        (torch.tensor([1.0, math.inf]), 2, {}, "rewards must not hold"),
        (torch.tensor([1.0, -math.inf, 0.0, 1.0]), 2, {}, "rewards must not hold"),
        (torch.ones(5), 2, {}, "not a multiple of group_size"),
        (torch.ones(4), 0, {}, "group_size must be an int >= 1"),
        (torch.ones(4), 2.0, {}, "group_size must be an int >= 1"),
        (torch.ones(4, dtype=torch.long), 2, {}, "rewards must be floating point"),
        (torch.ones(2, 2), 2, {}, "rewards must be a 1-D tensor"),
        (torch.ones(4), 2, {"scale": "std"}, "scale must be one of"),
        (torch.ones(4), 2, {"eps": -1.0}, "eps must be a finite number"),
    ],
)
def test_bad_input_raises(rewards, group_size, kwargs, match):
    with pytest.raises(ValueError, match=match):
        r1kernels.group_advantages(rewards, group_size, **kwargs)


def test_cpp_op_rejects_inf():
    # the Python check is skipped under torch.compile: the kernel raises the same ValueError
    with pytest.raises(ValueError, match="rewards must not hold"):
        op("group_advantages")(torch.tensor([0.0, math.inf]), 2, 0, False, 1e-4)
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        op("group_advantages")(torch.ones(3), 2, 0, False, 1e-4)


@pytest.mark.parametrize("scale_mode, leave_one_out", [(0, False), (1, True), (2, False)])
def test_opcheck(scale_mode, leave_one_out):
    r = torch.randn(12)
    r[1] = float("nan")
    torch.library.opcheck(op("group_advantages"), (r, 4, scale_mode, leave_one_out, 1e-4))


# ---------------------------------------------------------------------------------------------
# Triton launcher


@pytest.mark.parametrize("dtype, atol, rtol", FP32 + [(torch.float64, 1e-10, 1e-10)])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("leave_one_out", [False, True])
def test_triton_launcher(dtype, atol, rtol, scale, leave_one_out):
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
def test_triton_edge_groups(dtype, atol, rtol):
    # G = 1: every group has zero variance; one whole-batch group; a large BLOCK_G past the group
    r = torch.randn(6, dtype=dtype, device=DEVICE)
    adv, _, std, zero = tga.group_advantages(r, 1, 0, False, 1e-4)
    assert (adv == 0).all() and (std == 0).all() and zero.all()
    for scale_mode, scale in enumerate(["group", "batch", "none"]):
        adv, mean, std, zero = tga.group_advantages(r, 6, scale_mode, True, 1e-4)
        radv, st = reference.group_advantages(r.cpu(), 6, scale, True, 1e-4)
        _close(adv, radv, atol, rtol, f"advantages ({scale})")
        _close(std, st.std, atol, rtol, "std")


def test_triton_rejects_inf():
    r = torch.zeros(4, device=DEVICE)
    r[1] = math.inf
    with pytest.raises(ValueError, match="inf"):
        tga.group_advantages(r, 2, 0, False, 1e-4)
    with pytest.raises(ValueError, match="group_size"):
        tga.group_advantages(torch.zeros(5, device=DEVICE), 2, 0, False, 1e-4)


# ---------------------------------------------------------------------------------------------
# CUDA


@requires_cuda
@pytest.mark.parametrize("dtype, atol, rtol", [GPU_FP32, (torch.float64, 1e-10, 1e-10), GPU_BF16])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("leave_one_out", [False, True])
@pytest.mark.parametrize("G", [1, 8, 37, 1500])
def test_group_advantages_cuda(dtype, atol, rtol, scale, leave_one_out, G):
    num_groups = 6
    r = torch.randn(num_groups * G, dtype=torch.float64)
    rg = r.view(num_groups, G)
    rg[1] = 0.25  # zero variance
    rg[2, 0] = math.nan  # an unscorable sample
    rg[3] = math.nan  # no scorable sample
    r = r.to(dtype)
    adv, st = r1kernels.group_advantages(r.cuda(), G, scale=scale, leave_one_out=leave_one_out, return_stats=True)
    radv, rst = reference.group_advantages(r, G, scale, leave_one_out, 1e-4)
    assert adv.is_cuda and adv.dtype == dtype and st.zero_std.dtype == torch.bool
    _close(adv, radv, atol, rtol, "advantages")
    _close(st.mean, rst.mean, atol, rtol, "mean")
    _close(st.std, rst.std, atol, rtol, "std")
    assert torch.equal(st.zero_std.cpu(), rst.zero_std)


@requires_cuda
def test_group_advantages_cuda_rejects_inf():
    r = torch.zeros(8, device="cuda")
    r[3] = -math.inf
    with pytest.raises(ValueError, match="inf"):
        r1kernels.group_advantages(r, 4)
    with pytest.raises(ValueError, match="inf"):  # the op itself, past the Python checks
        op("group_advantages")(r, 4, 0, False, 1e-4)
