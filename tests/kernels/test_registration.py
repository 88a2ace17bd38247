"""The schemas are written once (r1kernels._library.SCHEMAS; csrc only registers kernels), every op
with a C++ CPU source has its CPU kernel registered (so the fast path, not the plain-PyTorch kernel,
runs), and the layers import what they should: no production module the reference, no Triton module
the dispatcher."""

import pathlib
import re

import pytest
import torch

import r1kernels  # noqa: F401  loads the ops
from r1kernels._library import HAS_C, SCHEMAS

CSRC = pathlib.Path(__file__).resolve().parents[2] / "csrc"
requires_c = pytest.mark.skipif(not HAS_C, reason="r1kernels._C is not built")


def _cpu_impls():
    """op name -> file, for every m.impl in a TORCH_LIBRARY_IMPL(r1kernels, CPU, m) block of csrc/cpu."""
    impls = {}
    for path in sorted((CSRC / "cpu").glob("*.cpp")):
        for block in re.findall(r"TORCH_LIBRARY_IMPL\(r1kernels,\s*CPU,\s*m\)\s*\{(.*?)\n?\}", path.read_text(), re.S):
            for name in re.findall(r'm\.impl\("(\w+)"', block):
                impls[name] = path.name
    return impls


def test_csrc_defines_no_schema():
    # one source of schemas: C++ and CUDA sources only register kernels (TORCH_LIBRARY_IMPL)
    sources = sorted(CSRC.rglob("*.cpp")) + sorted(CSRC.rglob("*.cu")) + sorted(CSRC.rglob("*.h"))
    assert sources
    for path in sources:
        text = path.read_text()
        assert not re.search(r"TORCH_LIBRARY(_FRAGMENT)?\(", text), f"{path.name} defines a library"
        assert "m.def(" not in text, f"{path.name} defines a schema"


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_registered_schema_matches(name):
    assert str(getattr(torch.ops.r1kernels, name).default._schema) == "r1kernels::" + SCHEMAS[name]


@requires_c
def test_cpu_sources_register_their_ops():
    impls = _cpu_impls()
    named_files = {p.stem for p in (CSRC / "cpu").glob("*.cpp") if p.stem in SCHEMAS}
    assert named_files <= set(impls), f"csrc/cpu/<op>.cpp without a CPU m.impl: {named_files - set(impls)}"
    assert set(impls) <= set(SCHEMAS), f"CPU kernels for ops not in SCHEMAS: {set(impls) - set(SCHEMAS)}"
    for name, fname in impls.items():
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"r1kernels::{name}", "CPU"), f"{name} ({fname}) has no CPU kernel"


@requires_c
def test_grpo_ops_have_cpu_kernels():
    grpo = {"group_advantages", "fused_logprobs", "fused_logprobs_backward", "fused_grpo_loss", "logits_grpo_loss", "grpo_token_loss"}
    assert grpo <= set(_cpu_impls())


PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "r1kernels"


def _imports(path):
    """Every module a Python file imports (absolute names; `from r1kernels import x` gives r1kernels.x)."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_production_module_imports_the_reference():
    # the reference is the tests' oracle: a production path that called it would be tested against itself
    users = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
             if p.name != "reference.py" and "r1kernels.reference" in _imports(p)]
    assert users == []


def test_the_reference_imports_no_production_module():
    ours = {n for n in _imports(PACKAGE / "reference.py") if n.startswith("r1kernels")}
    assert ours == set()


def test_the_plain_pytorch_kernels_are_every_ops_default():
    from r1kernels._torch import KERNELS

    assert set(KERNELS) == set(SCHEMAS)
    for name in SCHEMAS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"r1kernels::{name}", "CompositeExplicitAutograd"), name


def test_triton_modules_know_nothing_of_dispatch():
    # which kernel serves the CUDA key is decided in r1kernels._library, not by the Triton package
    for path in sorted((PACKAGE / "triton").glob("*.py")):
        ours = {n for n in _imports(path) if n.startswith("r1kernels") and not n.startswith("r1kernels.triton")}
        assert ours == set(), f"triton/{path.name} imports {ours}"
