"""The C++ TORCH_LIBRARY block agrees with r1kernels._library.SCHEMAS, and every op with a C++ CPU
source has its CPU kernel registered (so the fast path, not the plain-PyTorch fallback, runs)."""

import pathlib
import re

import pytest
import torch

import r1kernels  # noqa: F401  loads the ops
from r1kernels._library import HAS_C, SCHEMAS

CSRC = pathlib.Path(__file__).resolve().parents[1] / "csrc"
pytestmark = pytest.mark.skipif(not HAS_C, reason="r1kernels._C is not built")


def _cpu_impls():
    """op name -> file, for every m.impl in a TORCH_LIBRARY_IMPL(r1kernels, CPU, m) block of csrc/cpu."""
    impls = {}
    for path in sorted((CSRC / "cpu").glob("*.cpp")):
        for block in re.findall(r"TORCH_LIBRARY_IMPL\(r1kernels,\s*CPU,\s*m\)\s*\{(.*?)\n?\}", path.read_text(), re.S):
            for name in re.findall(r'm\.impl\("(\w+)"', block):
                impls[name] = path.name
    return impls


def test_registration_source_defs_match_schemas():
    defs = re.findall(r'm\.def\("([^"]+)"\)', (CSRC / "registration.cpp").read_text())
    assert sorted(defs) == sorted(SCHEMAS.values())


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_registered_schema_matches(name):
    assert str(getattr(torch.ops.r1kernels, name).default._schema) == "r1kernels::" + SCHEMAS[name]


def test_cpu_sources_register_their_ops():
    impls = _cpu_impls()
    named_files = {p.stem for p in (CSRC / "cpu").glob("*.cpp") if p.stem in SCHEMAS}
    assert named_files <= set(impls), f"csrc/cpu/<op>.cpp without a CPU m.impl: {named_files - set(impls)}"
    assert set(impls) <= set(SCHEMAS), f"CPU kernels for ops not in SCHEMAS: {set(impls) - set(SCHEMAS)}"
    for name, fname in impls.items():
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"r1kernels::{name}", "CPU"), f"{name} ({fname}) has no CPU kernel"


def test_grpo_ops_have_cpu_kernels():
    grpo = {"group_advantages", "fused_logprobs", "fused_logprobs_backward", "fused_grpo_loss", "logits_grpo_loss", "grpo_token_loss"}
    assert grpo <= set(_cpu_impls())
