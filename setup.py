"""Builds r1kernels._C with ninja: the C++ CPU ops always, the CUDA ops when a CUDA toolkit and a
CUDA build of torch are both present. A missing nvcc or GPU never fails the install.

Switches, read once here:
  R1_FORCE_CUDA=1   build the CUDA ops even if torch has no CUDA (fails if nvcc is missing)
  R1_SKIP_CUDA=1    never build the CUDA ops
  MAX_JOBS=N        parallel compile jobs (default: 2, this project's CI machine has 2 cores)
"""

import glob
import os
import shutil

import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
FORCE_CUDA = os.environ.get("R1_FORCE_CUDA", "0") == "1"
SKIP_CUDA = os.environ.get("R1_SKIP_CUDA", "0") == "1"
os.environ.setdefault("MAX_JOBS", "2")


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


cpu_sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
cuda_sources = _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))

nvcc = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if os.environ.get("CUDA_HOME") else None)
with_cuda = not SKIP_CUDA and (FORCE_CUDA or (torch.version.cuda is not None and nvcc is not None))
if not with_cuda:
    reason = "R1_SKIP_CUDA=1" if SKIP_CUDA else ("torch is a CPU build" if torch.version.cuda is None else "nvcc not found")
    print(f"r1kernels: building the C++ CPU ops only ({reason}); CUDA tensors use the Triton kernels.")

cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-DNDEBUG"]
extra_compile_args = {"cxx": cxx_flags}
define_macros = []
if with_cuda:
    define_macros.append(("R1_WITH_CUDA", None))
    extra_compile_args["nvcc"] = [
        "-O3",
        "-std=c++20",  # torch 2.13's headers expect C++20 (warning 3306 under C++17)
        "--use_fast_math",
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90a,code=sm_90a",
    ]
    ext = CUDAExtension(
        "r1kernels._C",
        cpu_sources + cuda_sources,
        extra_compile_args=extra_compile_args,
        define_macros=define_macros,
        extra_link_args=["-fopenmp"],
    )
else:
    ext = CppExtension(
        "r1kernels._C",
        cpu_sources,
        extra_compile_args=extra_compile_args,
        define_macros=define_macros,
        extra_link_args=["-fopenmp"],
    )

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
