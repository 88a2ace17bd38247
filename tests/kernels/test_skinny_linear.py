"""r1kernels.skinny_linear against F.linear: fresh random shapes around the tile sizes (4 rows, 4
outputs, 16 / 8 floats of K), empty and 1-row inputs, bias or none, batched leading dims, the
routes to F.linear (gradients, other dtypes), bad input; and the AVX2 and no-vector paths through
R1KERNELS_ISA in a subprocess.

The tests named with a `backend` run the public function on each backend present (tests/kernels/
_backends.py): the C++ kernel, the plain-PyTorch kernel of r1kernels._torch and, where the shapes are
small enough for the interpreter, the Triton kernel under TRITON_INTERPRET=1. (No Triton kernel: CUDA runs the plain-PyTorch one.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from _backends import backend_fixture

from r1kernels import reference, skinny_linear
from r1kernels._library import HAS_C, has_cpp_kernel

backend = backend_fixture("skinny_linear")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _check(M, K, N, bias=True, scale=1.0):
    x, w = torch.randn(M, K) * scale, torch.randn(N, K)
    b = torch.randn(N) if bias else None
    got, want = skinny_linear(x, w, b), reference.skinny_linear(x, w, b)
    assert got.shape == want.shape == (M, N) and got.dtype == torch.float32
    # a different summation order than BLAS: float32 rounding of a K-term dot product
    torch.testing.assert_close(got, want, atol=1e-5 * max(K, 1) ** 0.5 * scale, rtol=1e-5)
    return got


@pytest.mark.skipif(not HAS_C, reason="r1kernels._C is not built")
def test_cpp_kernel_is_registered():
    assert has_cpp_kernel("skinny_linear")


@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 8, 13, 16, 33])
@pytest.mark.parametrize("K,N", [(1, 1), (15, 3), (16, 4), (17, 5), (64, 9), (100, 37), (256, 1024), (1000, 7)])
def test_matches_reference(backend, M, K, N):
    _check(M, K, N, bias=bool(torch.randint(0, 2, ())))


def test_edges_and_leading_dims(backend):
    assert skinny_linear(torch.randn(0, 8), torch.randn(5, 8)).shape == (0, 5)
    b = torch.randn(3)
    torch.testing.assert_close(skinny_linear(torch.randn(4, 0), torch.randn(3, 0), b), b.expand(4, 3))  # K = 0: the bias
    x, w = torch.randn(2, 3, 40), torch.randn(6, 40)
    torch.testing.assert_close(skinny_linear(x, w), F.linear(x, w), atol=1e-5, rtol=1e-5)
    xt = torch.randn(40, 5).T  # not contiguous
    torch.testing.assert_close(skinny_linear(xt, w), F.linear(xt, w), atol=1e-5, rtol=1e-5)
    big = _check(7, 300, 50, scale=1e3)  # large magnitudes: the tolerance scales, the kernel must too
    assert torch.isfinite(big).all()


def test_threads_split_large_outputs_equally():
    # 2*M*K*N above the split threshold: the column range is cut between threads; every column once
    x, w, b = torch.randn(16, 512), torch.randn(4099, 512), torch.randn(4099)
    torch.testing.assert_close(skinny_linear(x, w, b), F.linear(x, w, b), atol=1e-4, rtol=1e-5)


def test_gradients_and_other_dtypes_take_f_linear():
    x, w = torch.randn(3, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    y = skinny_linear(x, w)
    y.square().sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    F.linear(x, w).square().sum().backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, w.grad)
    xb, wb = torch.randn(3, 8, dtype=torch.bfloat16), torch.randn(5, 8, dtype=torch.bfloat16)
    got = skinny_linear(xb, wb)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, F.linear(xb, wb))


def test_bad_input():
    with pytest.raises(ValueError, match="same K"):
        skinny_linear(torch.randn(2, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match="weight \\[N, K\\]"):
        skinny_linear(torch.randn(2, 3), torch.randn(3))
    with pytest.raises(ValueError, match="bias must be None or \\[N\\] = \\[4\\]"):
        skinny_linear(torch.randn(2, 3), torch.randn(4, 3), torch.randn(5))
    with pytest.raises(ValueError, match="x must be a tensor"):
        skinny_linear([1.0], torch.randn(4, 3))


@pytest.mark.skipif(not HAS_C, reason="r1kernels._C is not built")
@pytest.mark.parametrize("isa", ["avx2", "none"])
def test_other_isa_paths(isa):
    code = (
        "import torch, torch.nn.functional as F\n"
        "from r1kernels import skinny_linear\n"
        f"torch.manual_seed({int(torch.randint(0, 10**6, ()))})\n"
        "for M, K, N in [(1, 1, 1), (3, 7, 5), (4, 8, 4), (5, 9, 6), (8, 256, 1024), (13, 100, 37), (16, 33, 4099)]:\n"
        "    x, w, b = torch.randn(M, K), torch.randn(N, K), torch.randn(N)\n"
        "    torch.testing.assert_close(skinny_linear(x, w, b), F.linear(x, w, b), atol=1e-4, rtol=1e-5)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "R1KERNELS_ISA": isa, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
