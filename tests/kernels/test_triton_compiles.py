"""Every Triton kernel is registered for the CUDA key (by r1kernels._library, where no CUDA C++ kernel
is built) and compiles ahead of time to cubin for sm_80 and sm_90a without a GPU (tests/_triton_aot.py):
the interpreter the CPU tests run is lenient where the compiler is not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import triton

from r1kernels._library import TRITON_REGISTERED as REGISTERED
from r1kernels.triton import KERNELS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_registered_for_cuda():
    for name in KERNELS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"r1kernels::{name}", "CUDA"), name
    assert set(REGISTERED) <= set(KERNELS)


def test_paged_cache_kernels_are_listed():
    for name in ("reshape_and_cache", "copy_blocks", "merge_attention_states"):
        assert name in KERNELS, name


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
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "_triton_aot.py")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-6000:]}"
    compiled = [line for line in proc.stdout.splitlines() if line.endswith(" ok")]
    assert any(line.startswith("sm_80 ") for line in compiled) and any(line.startswith("sm_90 ") for line in compiled)
