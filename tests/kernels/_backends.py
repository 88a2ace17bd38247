"""Runs an op's public function on each kernel this machine has: the C++ kernel ("cpp"), the
plain-PyTorch kernel of r1kernels._torch ("torch") or the Triton launcher ("triton", on CPU tensors
under TRITON_INTERPRET=1, which tests/conftest.py sets where no GPU is present).

The chosen kernel is registered for the CPU dispatch key for the duration of the test (a scoped
torch.library registration, undone on exit), so the whole public path runs as in production: the
argument checks, the fake and the autograd formula registered on the op, then that kernel. A
backend without a kernel for the op skips with the reason.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import pytest
import torch

from r1kernels import _library
from r1kernels._torch import KERNELS as TORCH_KERNELS

BACKENDS = ("cpp", "torch", "triton")


def _triton_kernels():
    if not _library.HAS_TRITON:
        return None
    from r1kernels.triton import KERNELS

    return KERNELS


def _why_absent(backend, names):
    if backend == "cpp":
        missing = [n for n in names if not _library.has_cpp_kernel(n, "cpu")]
        return f"no C++ CPU kernel for {missing} (r1kernels._C built: {_library.HAS_C})" if missing else None
    if backend == "triton":
        kernels = _triton_kernels()
        if kernels is None:
            return "triton is not installed"
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "Triton kernels run on CPU tensors only under TRITON_INTERPRET=1 (the GPU tests cover them here)"
        missing = [n for n in names if n not in kernels]
        return f"no Triton kernel for {missing}" if missing else None
    return None


@contextlib.contextmanager
def running_on(backend, *names):
    """Within the block, the ops `names` run `backend`'s kernel on CPU tensors (skips if absent)."""
    why = _why_absent(backend, names)
    if why:
        pytest.skip(why)
    if backend == "cpp":  # what is registered already
        yield
        return
    kernels = TORCH_KERNELS if backend == "torch" else _triton_kernels()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel": that is the point
        with torch.library._scoped_library("r1kernels", "IMPL") as lib:
            for name in names:
                lib.impl(name, kernels[name], "CPU")
            yield


def backend_fixture(*names, backends=BACKENDS):
    """A fixture `backend` parametrised over `backends` that runs the ops `names` on it."""

    @pytest.fixture(params=backends)
    def backend(request):
        params = getattr(request.node, "callspec", None)
        if request.param == "triton" and params is not None and params.params.get("dtype") == torch.bfloat16:
            pytest.skip("the Triton interpreter has no bf16 arithmetic")
        with running_on(request.param, *names):
            yield request.param

    return backend


class _Absent:
    """Stands for a Triton module where triton is not installed: using it skips the test."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        pytest.skip(f"triton is not installed (r1kernels.triton.{self._name})")


def triton_module(name):
    """r1kernels.triton.<name> (the launchers, callable on CPU tensors under TRITON_INTERPRET=1), or
    a stand-in that skips the test which uses it where triton is not installed."""
    if not _library.HAS_TRITON:
        return _Absent(name)
    import importlib

    return importlib.import_module(f"r1kernels.triton.{name}")
