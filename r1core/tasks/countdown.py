"""Countdown: reach a target from given numbers with + - * /, each number used exactly once.

Generation keeps only solvable instances (an exhaustive search runs while generating) and records
one solution as steps. The step rules (shared by the generator and the exact step verifier): each
step combines two available numbers into a non-negative integer (`a-b` only when a >= b, `a/b`
only when b divides a and b != 0); the result replaces them; a solution ends with the target as
the only number left. (The countdown reward is more permissive: any expression over the numbers
with rational intermediate values that equals the target.)

    prompt      8,3,2>22:
    scratchpad  T8*3=24,24-2=22;A(8*3)-2
    tagged      <think>8*3=24,24-2=22</think><answer>(8*3)-2</answer>

"r1zero" wraps TinyZero's question in the R1-Zero template and uses the tagged completion.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Sequence

from .splits import TEST_FRACTION, check_split, problem_split
from .templates import r1_zero_completion, r1_zero_prompt
from .templates import split_completion as _split_completion

FORMATS = ("scratchpad", "tagged", "r1zero")
STEP_SEPARATORS = ","
MAX_NUMBERS = 6

_STEP_RE = re.compile(r"^\s*(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)\s*$")
_SHORT_PROMPT_RE = re.compile(r"(\d+(?:,\d+)*)>(\d+):")
_LONG_PROMPT_RE = re.compile(r"numbers \[(\d+(?:, \d+)*)\], create an equation that equals (\d+)")


def _combine(a: int, b: int) -> list[tuple[int, str, int, int]]:
    """(a', op, b', result) for every legal step on the pair, larger operand first where it matters."""
    hi, lo = max(a, b), min(a, b)
    out = [(hi, "+", lo, hi + lo), (hi, "-", lo, hi - lo), (hi, "*", lo, hi * lo)]
    if lo != 0 and hi % lo == 0:
        out.append((hi, "/", lo, hi // lo))
    return out


def _reachable(values: tuple[int, ...]) -> dict[int, tuple[str, ...]]:
    """Every value reachable using all of `values` (sorted), with one list of steps reaching it."""
    # sets of up to 3 values recur across instances and have small tables: cache those; the
    # tables of larger sets are big (hundreds of values) and rarely reused
    return _reachable_small(values) if len(values) <= 3 else _search(values)


@lru_cache(maxsize=100_000)
def _reachable_small(values: tuple[int, ...]) -> dict[int, tuple[str, ...]]:
    return _search(values)


def _search(values: tuple[int, ...]) -> dict[int, tuple[str, ...]]:
    if len(values) == 1:
        return {values[0]: ()}
    found: dict[int, tuple[str, ...]] = {}
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            rest = values[:i] + values[i + 1:j] + values[j + 1:]
            for x, op, y, r in _combine(values[i], values[j]):
                step = f"{x}{op}{y}={r}"
                for v, steps in _reachable(tuple(sorted(rest + (r,)))).items():
                    if v not in found:
                        found[v] = (step,) + steps
    return found


def solve(numbers: Sequence[int], target: int) -> list[str] | None:
    """Steps reaching `target` from all of `numbers`, or None when there are none."""
    steps = _reachable(tuple(sorted(numbers))).get(target)
    return None if steps is None else list(steps)


def can_reach(numbers: Sequence[int], target: int) -> bool:
    return target in _reachable(tuple(sorted(numbers)))


def parse_step(step: str) -> tuple[int, str, int, int] | None:
    m = _STEP_RE.match(step)
    return None if m is None else (int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4)))


def apply_step(available: Counter, step: str) -> bool:
    """Apply one step to the multiset `available` in place; False (and `available` unchanged) if illegal."""
    parsed = parse_step(step)
    if parsed is None:
        return False
    a, op, b, r = parsed
    need = Counter([a, b])
    if any(available[v] < c for v, c in need.items()):
        return False
    if op == "+":
        ok = a + b == r
    elif op == "-":
        ok = a >= b and a - b == r
    elif op == "*":
        ok = a * b == r
    else:
        ok = b != 0 and a % b == 0 and a // b == r
    if ok:
        available.subtract(need)
        available[r] += 1
    return ok


def check_steps(numbers: Sequence[int], target: int, steps: Sequence[str]) -> list[bool]:
    """Per step: is the solution up to and including it still good? A step is good if it is legal
    on the numbers left and those numbers can still reach the target; after a bad step every later
    step is bad too (the path is dead)."""
    available = Counter(numbers)
    out, alive = [], True
    for step in steps:
        alive = alive and apply_step(available, step) and can_reach(list(available.elements()), target)
        out.append(alive)
    return out


def is_solved(numbers: Sequence[int], target: int, steps: Sequence[str]) -> bool:
    available = Counter(numbers)
    if not all(apply_step(available, s) for s in steps):
        return False
    return list(available.elements()) == [target]


def steps_to_expression(numbers: Sequence[int], steps: Sequence[str]) -> str:
    """Replay legal steps into one expression, e.g. ["8*3=24", "24-2=22"] -> "(8*3)-2"."""
    pool: list[tuple[int, str]] = [(v, str(v)) for v in numbers]
    for step in steps:
        parsed = parse_step(step)
        if parsed is None:
            raise ValueError(f"steps: expected steps like '8*3=24', got {step!r}")
        a, op, b, r = parsed
        ia = next((i for i, (v, _) in enumerate(pool) if v == a), None)
        if ia is None:
            raise ValueError(f"steps: {step!r} uses {a}, which is not available")
        _, ea = pool.pop(ia)
        ib = next((i for i, (v, _) in enumerate(pool) if v == b), None)
        if ib is None:
            raise ValueError(f"steps: {step!r} uses {b}, which is not available")
        _, eb = pool.pop(ib)
        wrap = lambda e: e if e.isdigit() else f"({e})"  # noqa: E731
        pool.append((r, f"{wrap(ea)}{op}{wrap(eb)}"))
    if len(pool) != 1:
        raise ValueError(f"steps: expected steps using every number, {len(pool)} values are left")
    return pool[0][1]


@dataclass(frozen=True)
class CountdownProblem:
    numbers: tuple[int, ...]
    target: int

    @property
    def key(self) -> str:
        """Canonical text (sorted numbers, target); decides the split."""
        return ",".join(map(str, sorted(self.numbers))) + f">{self.target}"

    def prompt(self, fmt: str = "scratchpad") -> str:
        _check_format(fmt)
        if fmt == "r1zero":
            return r1_zero_prompt(
                f"Using the numbers [{', '.join(map(str, self.numbers))}], create an equation that equals "
                f"{self.target}. You can use basic arithmetic operations (+, -, *, /) and each number "
                f"exactly once")
        return ",".join(map(str, self.numbers)) + f">{self.target}:"

    def row(self, steps: Sequence[str], fmt: str = "scratchpad") -> dict:
        expr = steps_to_expression(self.numbers, steps)
        thinking = ",".join(steps)
        solution = f"T{thinking};A{expr}" if fmt == "scratchpad" else r1_zero_completion(thinking, expr)
        return {
            "prompt": self.prompt(fmt),
            "target": self.target,
            "numbers": list(self.numbers),
            "solution": solution,
            "expression": expr,
            "steps": list(steps),
            "task": "countdown",
        }


def parse_prompt(prompt: str) -> CountdownProblem:
    """The problem a prompt of any format asks."""
    for regex, sep in ((_LONG_PROMPT_RE, ", "), (_SHORT_PROMPT_RE, ",")):
        m = regex.search(prompt) if isinstance(prompt, str) else None
        if m:
            return CountdownProblem(tuple(int(x) for x in m.group(1).split(sep)), int(m.group(2)))
    raise ValueError(f"prompt: expected a countdown prompt such as '8,3,2>22:', got {prompt!r}")


def split_completion(completion: str) -> tuple[list[str], str | None]:
    """(steps, answer expression or None) of a scratchpad or tagged completion; never raises."""
    return _split_completion(completion, STEP_SEPARATORS)


def generate_countdown(n: int, split: str = "train", seed: int = 0, *, num_numbers: int | tuple[int, int] = (3, 4),
                       max_number: int = 20, min_target: int = 1, max_target: int = 100,
                       fmt: str = "scratchpad", test_fraction: float = TEST_FRACTION) -> Iterator[dict]:
    """`n` solvable instances of one split. Numbers are drawn from [1, max_number] (repeats allowed),
    the target uniformly from [min_target, max_target]; a draw without a solution is redrawn."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    check_split(split)
    _check_format(fmt)
    lo, hi = (num_numbers, num_numbers) if isinstance(num_numbers, int) else tuple(num_numbers)
    if not 2 <= lo <= hi <= MAX_NUMBERS:
        raise ValueError(f"num_numbers: expected an int or (min, max) within [2, {MAX_NUMBERS}], got {num_numbers!r}")
    if not isinstance(max_number, int) or max_number < 1:
        raise ValueError(f"max_number: expected an int >= 1, got {max_number!r}")
    if not 0 <= min_target <= max_target:
        raise ValueError(f"max_target: expected 0 <= min_target <= max_target, got {min_target}, {max_target}")
    rng = random.Random(seed)
    made, tries, max_tries = 0, 0, 1000 * n + 10_000
    while made < n:
        tries += 1
        if tries > max_tries:
            raise ValueError(f"max_target: no solvable {split!r} instance found in {max_tries} draws")
        numbers = tuple(rng.randint(1, max_number) for _ in range(rng.randint(lo, hi)))
        target = rng.randint(min_target, max_target)
        problem = CountdownProblem(numbers, target)
        if problem_split(problem.key, test_fraction) != split:
            continue
        steps = solve(numbers, target)
        if steps is not None:
            made += 1
            yield problem.row(steps, fmt)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"fmt: expected one of {FORMATS}, got {fmt!r}")
