"""Compile check of the CUDA sources: every csrc/cuda/*.cu through nvcc `-c` for sm_80 and sm_90a
against torch's headers, as setup.py would build them on a GPU machine. Nothing is run.

nvcc spends 35-40 s of CPU per file, nearly all of it parsing torch's headers three times (host,
sm_80, sm_90a; measured with `nvcc --time` on the 2-core dev machine), so the files compile two at a
time in threads, and a file that
compiled is remembered under build/nvcc-check/ by the hash of everything that goes into the compile
(the source, csrc's headers, the flags, nvcc's and torch's versions): a repeated run costs nothing.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUDA_SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
CACHE_DIR = os.path.join(ROOT, "build", "nvcc-check")
ARCH_FLAGS = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a"]
# as setup.py's nvcc flags and torch's CUDAExtension defines
FLAGS = [
    "-O3", "-std=c++20", "--use_fast_math", "-Xcompiler", "-fPIC", *COMMON_NVCC_FLAGS,
    "-DR1_WITH_CUDA", "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
    f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", *ARCH_FLAGS,
]


def _find_nvcc():
    for cand in ("/usr/local/bin/nvcc", shutil.which("nvcc"),
                 os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


NVCC = _find_nvcc()


def _shim_dir() -> str | None:
    """A CPU build of torch ships c10/cuda's headers but not the one CMake generates for them;
    its whole content in a CUDA build is this one macro."""
    name = os.path.join("c10", "cuda", "impl", "cuda_cmake_macros.h")
    if any(os.path.exists(os.path.join(p, name)) for p in include_paths()):
        return None
    shim = os.path.join(CACHE_DIR, "shim")
    path = os.path.join(shim, name)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # the compiles run in threads and may all get here at once on a fresh checkout: each
        # writes its own temporary file, and the renames are atomic
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w") as f:
            f.write("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        os.replace(tmp, path)
    return shim


def _command(src: str, obj: str) -> list[str]:
    incs = [*include_paths(), sysconfig.get_paths()["include"], os.path.join(ROOT, "csrc")]
    shim = _shim_dir()
    if shim:
        incs.append(shim)
    return [NVCC, "-c", src, "-o", obj, *(f"-I{p}" for p in incs), *FLAGS]


def _fingerprint(src: str) -> str:
    h = hashlib.sha256()
    for path in [src, *sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.h"), recursive=True))]:
        with open(path, "rb") as f:
            h.update(path.encode() + b"\0" + f.read())
    h.update(" ".join(FLAGS).encode())
    h.update(torch.__version__.encode() + sys.version.encode())
    h.update(subprocess.run([NVCC, "--version"], capture_output=True, text=True).stdout.encode())
    return h.hexdigest()[:24]


def _compile(src: str) -> tuple[bool, str]:
    """(ok, log); a success is cached by fingerprint."""
    stamp = os.path.join(CACHE_DIR, f"{os.path.basename(src)}-{_fingerprint(src)}.ok")
    if os.path.exists(stamp):
        return True, "cached"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = _command(src, os.path.join(tmp, "out.o"))
        proc = subprocess.run(cmd, capture_output=True, text=True)
    log = f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    if proc.returncode == 0:
        os.makedirs(CACHE_DIR, exist_ok=True)
        open(stamp, "w").close()
    return proc.returncode == 0, log


@pytest.fixture(scope="module")
def compiled():
    """Starts every compile at once, two at a time; each test waits on its own file."""
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {src: pool.submit(_compile, src) for src in CUDA_SOURCES}
    yield futures
    pool.shutdown(wait=True)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (looked in /usr/local/bin, PATH and CUDA_HOME)")
@pytest.mark.parametrize("src", CUDA_SOURCES, ids=[os.path.basename(s) for s in CUDA_SOURCES])
def test_cuda_source_compiles(src, compiled):
    ok, log = compiled[src].result()
    assert ok, f"nvcc failed on {os.path.relpath(src, ROOT)}:\n{log[-8000:]}"


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (looked in /usr/local/bin, PATH and CUDA_HOME)")
def test_compile_check_catches_errors(tmp_path):
    # the check must be able to fail: a source with a type error does not pass
    bad = tmp_path / "bad.cu"
    bad.write_text("__global__ void k(float* x) { x[0] = undefined_name; }\n")
    proc = subprocess.run([NVCC, "-c", str(bad), "-o", str(tmp_path / "bad.o"), *ARCH_FLAGS[:1]], capture_output=True, text=True)
    assert proc.returncode != 0 and "undefined_name" in proc.stderr


def test_cuda_sources_register_for_cuda():
    # each source registers its kernels with the CUDA key on ops of the schema block
    from r1kernels._library import SCHEMAS

    assert CUDA_SOURCES, "csrc/cuda holds no .cu file"
    for src in CUDA_SOURCES:
        text = open(src).read()
        assert "TORCH_LIBRARY_IMPL(r1kernels, CUDA, m)" in text, src
        for name in [line.split('"')[1] for line in text.splitlines() if "m.impl(\"" in line]:
            assert name in SCHEMAS, f"{os.path.basename(src)} implements {name!r}, which has no schema"
