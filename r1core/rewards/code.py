"""Code reward: the completion's program run on its row's test cases in r1core.sandbox.

    code_reward(prompts, completions, test_cases=[[{"input": "1 2\\n", "output": "3\\n"}, ...], ...])

A completion scores the fraction of its test cases it passes: exit status 0, within the limits,
and stdout equal to the expected output with trailing whitespace of each line and trailing blank
lines ignored (0.0 for a program larger than the run's directory, SandboxLimits.disk_mb). None
when the completion holds no code block, or its row has no test cases. All the runs of a call
(completions x test cases) go through one thread pool of `max_workers` sandboxes.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .completions import check_column, completion_text

PYTHON_TAGS = ("", "python", "python3", "py")


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, body) of each fenced block, fences paired in order. A pair with no newline
    after the opening fence is inline code, not a block; a fence left open at the end (a
    completion cut at its length limit) closes nothing."""
    fences = [m.start() for m in re.finditer("```", text)]
    blocks = []
    for start, end in zip(fences[0::2], fences[1::2]):
        tag, newline, body = text[start + 3:end].partition("\n")
        if newline:
            blocks.append((tag.strip().lower(), body))
    return blocks


def extract_code(completion: Any) -> str | None:
    """The last fenced Python block of a completion (```python, ```py or an untagged ```), or None."""
    blocks = [body for tag, body in _fenced_blocks(completion_text(completion)) if tag in PYTHON_TAGS]
    return blocks[-1] if blocks else None


def _normalise(output: str) -> list[str]:
    lines = [line.rstrip() for line in output.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def outputs_match(expected: str, got: str) -> bool:
    """Equal line by line, ignoring trailing whitespace on each line and blank lines at the end."""
    return _normalise(expected) == _normalise(got)


def _check_cases(i: int, cases: Any) -> list[dict] | None:
    if cases is None:
        return None
    if not isinstance(cases, (list, tuple)):
        raise ValueError(f"test_cases[{i}]: expected a list of {{'input', 'output'}} dicts, got {type(cases).__name__}")
    for j, case in enumerate(cases):
        if not (isinstance(case, dict) and isinstance(case.get("input"), str) and isinstance(case.get("output"), str)):
            raise ValueError(f"test_cases[{i}][{j}]: expected a dict with str 'input' and 'output', got {case!r}")
    return list(cases) or None


def make_code_reward(limits=None, *, max_workers: int | None = None, stop_on_first_failure: bool = False,
                     allow_unsandboxed: bool = False, site_packages: bool = False) -> Callable[..., list[float | None]]:
    """A code reward with TRL's signature, running each program under `limits` (a SandboxLimits;
    default: SandboxLimits()) in `max_workers` sandboxes at once (default: the CPU count).
    `stop_on_first_failure` runs a completion's tests in order and stops at its first failure (the
    rest count as failed). `allow_unsandboxed` and `site_packages` go to run_python."""
    from r1core.sandbox import SandboxLimits, run_python

    limits = SandboxLimits() if limits is None else limits
    if not isinstance(limits, SandboxLimits):
        raise TypeError(f"limits: expected a SandboxLimits, got {type(limits).__name__}")
    workers = (os.cpu_count() or 1) if max_workers is None else max_workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"max_workers: expected a positive int or None, got {max_workers!r}")

    def does_not_fit(code: str) -> bool:
        return len(code.encode("utf-8", "surrogatepass")) > limits.disk_mb << 20

    def passes(code: str, case: dict) -> bool:
        res = run_python(code, case["input"], limits, allow_unsandboxed=allow_unsandboxed, site_packages=site_packages)
        return res.ok and outputs_match(case["output"], res.stdout)

    def passed_in_order(code: str, cases: list[dict]) -> int:
        for n, case in enumerate(cases):
            if not passes(code, case):
                return n
        return len(cases)

    def code_reward(prompts: Sequence | None, completions: Sequence, test_cases: Sequence | None = None,
                    **kwargs: Any) -> list[float | None]:
        n = len(completions)
        check_column("test_cases", test_cases, n)
        if test_cases is None:
            return [None] * n
        rows = [(extract_code(c), _check_cases(i, t)) for i, (c, t) in enumerate(zip(completions, test_cases))]
        scored = [i for i, (code, cases) in enumerate(rows) if code is not None and cases]
        out: list[float | None] = [None] * n
        unfit = {i for i in scored if does_not_fit(rows[i][0])}
        for i in unfit:  # main.py would not fit the run's directory: it fails every test
            out[i] = 0.0
        scored = [i for i in scored if i not in unfit]
        if not scored:
            return out
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="code_reward") as pool:
            if stop_on_first_failure:
                futures = {i: pool.submit(passed_in_order, *rows[i]) for i in scored}
                for i, fut in futures.items():
                    out[i] = fut.result() / len(rows[i][1])
            else:
                futures = {i: [pool.submit(passes, rows[i][0], case) for case in rows[i][1]] for i in scored}
                for i, futs in futures.items():
                    out[i] = sum(f.result() for f in futs) / len(futs)
        return out

    code_reward.required_columns = ("test_cases",)  # GRPOTrainer checks the dataset has it before step 1
    return code_reward


code_reward = make_code_reward()
