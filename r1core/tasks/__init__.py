"""Reasoning tasks generated in code: seeded, with a held-out split, no downloads.

    from r1core.tasks import make_dataset
    ds = make_dataset("addition", "train", n=1000, seed=0, digits=3)   # a datasets.Dataset

Tasks: "addition", "multiplication" (arithmetic.py, scratchpad per column) and "countdown"
(countdown.py). Every row has `prompt` and `solution` (the gold completion, for SFT) plus the
columns its reward reads: `answer` for arithmetic, `numbers` and `target` for countdown.
"""
from __future__ import annotations

from typing import Any

from .arithmetic import ArithmeticProblem, generate_arithmetic
from .countdown import CountdownProblem, generate_countdown
from .templates import R1_ZERO_TEMPLATE, r1_zero_completion, r1_zero_prompt

TASKS = ("addition", "multiplication", "countdown")


def generate(name: str, split: str = "train", n: int = 1000, seed: int = 0, **kwargs: Any) -> list[dict]:
    """`n` rows of task `name` as a list of dicts; kwargs go to the task's generator (digits, fmt, ...)."""
    if name == "addition":
        return list(generate_arithmetic(n, split, seed, op="+", **kwargs))
    if name == "multiplication":
        return list(generate_arithmetic(n, split, seed, op="*", **kwargs))
    if name == "countdown":
        return list(generate_countdown(n, split, seed, **kwargs))
    raise ValueError(f"name: expected one of {TASKS}, got {name!r}")


def make_dataset(name: str, split: str = "train", n: int = 1000, seed: int = 0, **kwargs: Any):
    """The rows of `generate(...)` as a `datasets.Dataset`."""
    import datasets

    return datasets.Dataset.from_list(generate(name, split, n, seed, **kwargs))


__all__ = [
    "TASKS", "generate", "make_dataset", "ArithmeticProblem", "CountdownProblem",
    "generate_arithmetic", "generate_countdown", "R1_ZERO_TEMPLATE", "r1_zero_prompt", "r1_zero_completion",
]
