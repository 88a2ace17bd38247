"""Reasoning tasks generated in code: seeded, with a held-out split, no downloads.

    from r1core.tasks import make_dataset
    ds = make_dataset("addition", "train", n=1000, seed=0, digits=3)   # a datasets.Dataset

Tasks: "addition", "multiplication" (arithmetic.py, scratchpad per column) and "countdown"
(countdown.py), the reasoning tasks (TASKS); "code" (code.py, programs scored in the sandbox), the
programming tasks (CODE_TASKS). Every row has `prompt` and `solution` (the gold completion, for
SFT) plus the columns its reward reads: `answer` for arithmetic, `numbers` and `target` for
countdown, `test_cases` for code.
"""
from __future__ import annotations

from typing import Any

from .arithmetic import ArithmeticProblem, generate_arithmetic
from .code import CodeProblem, generate_code
from .countdown import CountdownProblem, generate_countdown
from .templates import R1_ZERO_TEMPLATE, r1_zero_completion, r1_zero_prompt

TASKS = ("addition", "multiplication", "countdown")
CODE_TASKS = ("code",)  # not in TASKS: no step-by-step scratchpad for the step verifiers of ttc


def generate(name: str, split: str = "train", n: int = 1000, seed: int = 0, **kwargs: Any) -> list[dict]:
    """`n` rows of task `name` as a list of dicts; kwargs go to the task's generator (digits, fmt, ...)."""
    if name == "addition":
        return list(generate_arithmetic(n, split, seed, op="+", **kwargs))
    if name == "multiplication":
        return list(generate_arithmetic(n, split, seed, op="*", **kwargs))
    if name == "countdown":
        return list(generate_countdown(n, split, seed, **kwargs))
    if name == "code":
        return list(generate_code(n, split, seed, **kwargs))
    raise ValueError(f"name: expected one of {TASKS + CODE_TASKS}, got {name!r}")


def make_dataset(name: str, split: str = "train", n: int = 1000, seed: int = 0, **kwargs: Any):
    """The rows of `generate(...)` as a `datasets.Dataset`."""
    import datasets

    return datasets.Dataset.from_list(generate(name, split, n, seed, **kwargs))


__all__ = [
    "TASKS", "CODE_TASKS", "generate", "make_dataset", "ArithmeticProblem", "CountdownProblem", "CodeProblem",
    "generate_arithmetic", "generate_countdown", "generate_code", "R1_ZERO_TEMPLATE", "r1_zero_prompt", "r1_zero_completion",
]
