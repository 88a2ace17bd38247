"""The op table (docs/ops.md, and its short form in r1kernels/__init__.py's docstring) says what the
tree holds: every op of SCHEMAS once, its schema as defined, and for each backend the file that
registers the op's kernel; the reference function and the test file exist."""

from __future__ import annotations

import pathlib
import re

import pytest

import r1kernels
from r1kernels import reference
from r1kernels._library import SCHEMAS
from r1kernels._torch import KERNELS as TORCH_KERNELS

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _rows():
    """[(op names, schemas, reference, torch file, triton file or None, C++ file, CUDA file or None, test file)]."""
    rows = []
    for line in (ROOT / "docs" / "ops.md").read_text().splitlines():
        if not line.startswith("| ") or line.startswith("| op ") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert len(cells) == 8, line
        code = [re.findall(r"`([^`]+)`", c) for c in cells]
        schemas = code[1]
        names = [s.split("(")[0] for s in schemas]
        rows.append((names, schemas, *(c[0] if c else None for c in code[2:])))
    return rows


ROWS = _rows()


def test_every_op_once():
    names = [n for row in ROWS for n in row[0]]
    assert sorted(names) == sorted(SCHEMAS)


@pytest.mark.parametrize("row", ROWS, ids=[r[0][0] for r in ROWS])
def test_row_matches_the_tree(row):
    names, schemas, ref, torch_file, triton_file, cpp_file, cuda_file, test_file = row
    for name, schema in zip(names, schemas):
        assert schema == SCHEMAS[name]
    assert callable(getattr(reference, ref.removeprefix("reference.")))
    assert (ROOT / "tests" / "kernels" / test_file).is_file(), test_file
    main = names[0]
    # the plain-PyTorch and Triton kernels are the functions the dispatch layer registers
    assert pathlib.Path(TORCH_KERNELS[main].__code__.co_filename) == ROOT / "r1kernels" / torch_file
    if triton_file is not None:
        from r1kernels.triton import KERNELS

        assert pathlib.Path(KERNELS[main].__code__.co_filename) == ROOT / "r1kernels" / triton_file
    for path, key in ((cpp_file, "CPU"), (cuda_file, "CUDA")):
        if path is None:
            continue
        text = (ROOT / "csrc" / path).read_text()
        assert f"TORCH_LIBRARY_IMPL(r1kernels, {key}, m)" in text and f'm.impl("{main}"' in text, path


def test_docstring_table_names_every_op():
    doc = r1kernels.__doc__
    for name in SCHEMAS:
        assert re.search(rf"\b{name}\b", doc), name
