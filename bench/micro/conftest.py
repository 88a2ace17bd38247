"""Options of the microbenchmark suite. `--micro-shapes small` keeps only the small model shapes
(seconds in all with --benchmark-disable); `all` (the default) adds the benchmarks' own shapes."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_addoption(parser):
    parser.addoption(
        "--micro-shapes",
        choices=["small", "all"],
        default="all",
        help="small: the small model shapes only; all: also the shapes bench/*.py use",
    )
    parser.addoption("--micro-threads", type=int, default=2, help="torch threads (default 2, the CI machine's cores)")


def pytest_configure(config):
    torch.set_num_threads(config.getoption("--micro-threads"))


def pytest_collection_modifyitems(config, items):
    if config.getoption("--micro-shapes") == "all":
        return
    skip = pytest.mark.skip(reason="a benchmark shape: --micro-shapes all runs it")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)
