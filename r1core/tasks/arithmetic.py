"""Multi-digit addition and multiplication with a column-by-column scratchpad.

Addition, `digits`-digit zero-padded operands, one step per column, least significant first, each
step `a_i+b_i+carry=sum`:

    prompt      989+796=
    scratchpad  T9+6+0=15,8+9+1=18,9+7+1=17;A1785
    tagged      <think>9+6+0=15,8+9+1=18,9+7+1=17</think><answer>1785</answer>

Multiplication, one partial product per digit of the second operand (least significant first,
shifted by its place), then the running sums:

    prompt      123*045=
    scratchpad  T123*5=615,123*40=4920,123*000=0;615+4920=5535,5535+0=5535;A5535

The "r1zero" format wraps the question in the R1-Zero template and uses the tagged completion.
The answer is the exact integer, without padding. Train and test are disjoint by a hash of the
problem (see splits.py).
"""
from __future__ import annotations

import functools
import random
import re
import warnings
from dataclasses import dataclass
from typing import Iterator

from .splits import TEST_FRACTION, check_split, problem_split
from .templates import r1_zero_completion, r1_zero_prompt
from .templates import split_completion as _split_completion

OPS = ("+", "*")
FORMATS = ("scratchpad", "tagged", "r1zero")
MAX_DIGITS = 9
STEP_SEPARATORS = ",;"  # steps are separated by "," (and ";" between partial products and sums)

_PROMPT_RE = re.compile(r"(\d+)([+*])(\d+)")


@dataclass(frozen=True)
class ArithmeticProblem:
    a: int
    b: int
    op: str
    digits: int

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"op: expected one of {OPS}, got {self.op!r}")
        if not isinstance(self.digits, int) or not 1 <= self.digits <= MAX_DIGITS:
            raise ValueError(f"digits: expected an int in [1, {MAX_DIGITS}], got {self.digits!r}")
        for name in ("a", "b"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 0 <= v < 10**self.digits:
                raise ValueError(f"{name}: expected an int in [0, 10**{self.digits}), got {v!r}")

    @property
    def key(self) -> str:
        """Canonical text of the problem, e.g. "989+796"; decides the split."""
        return f"{self.a:0{self.digits}d}{self.op}{self.b:0{self.digits}d}"

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a * self.b

    def steps(self) -> list[str]:
        """The scratchpad steps, in order (partial products then sums for multiplication)."""
        return addition_steps(self.a, self.b, self.digits) if self.op == "+" else [
            s for group in multiplication_steps(self.a, self.b, self.digits) for s in group]

    def thinking(self) -> str:
        if self.op == "+":
            return ",".join(addition_steps(self.a, self.b, self.digits))
        return ";".join(",".join(g) for g in multiplication_steps(self.a, self.b, self.digits) if g)

    def prompt(self, fmt: str = "scratchpad") -> str:
        _check_format(fmt)
        if fmt == "r1zero":
            return r1_zero_prompt(f"Compute {self.key}")
        return f"{self.key}="

    def completion(self, fmt: str = "scratchpad") -> str:
        """The gold completion (no end-of-sequence token)."""
        _check_format(fmt)
        if fmt == "scratchpad":
            return f"T{self.thinking()};A{self.answer}"
        return r1_zero_completion(self.thinking(), str(self.answer))

    def row(self, fmt: str = "scratchpad") -> dict:
        return {
            "prompt": self.prompt(fmt),
            "answer": str(self.answer),
            "solution": self.completion(fmt),
            "a": self.a,
            "b": self.b,
            "op": self.op,
            "digits": self.digits,
            "task": "addition" if self.op == "+" else "multiplication",
        }


def addition_steps(a: int, b: int, digits: int) -> list[str]:
    steps, carry = [], 0
    for i in range(digits):
        da, db = (a // 10**i) % 10, (b // 10**i) % 10
        s = da + db + carry
        steps.append(f"{da}+{db}+{carry}={s}")
        carry = s // 10
    return steps


def multiplication_steps(a: int, b: int, digits: int) -> tuple[list[str], list[str]]:
    """(partial products, running sums); no sums when there is a single partial product."""
    a_text = f"{a:0{digits}d}"
    partials, products = [], []
    for i in range(digits):
        d = (b // 10**i) % 10
        p = a * d * 10**i
        partials.append(f"{a_text}*{d}{'0' * i}={p}")
        products.append(p)
    sums, total = [], products[0]
    for p in products[1:]:
        sums.append(f"{total}+{p}={total + p}")
        total += p
    return partials, sums


def parse_prompt(prompt: str) -> ArithmeticProblem:
    """The problem a prompt of any format asks (the last `a+b` or `a*b` in it)."""
    matches = _PROMPT_RE.findall(prompt) if isinstance(prompt, str) else []
    if not matches:
        raise ValueError(f"prompt: expected an arithmetic prompt such as '989+796=', got {prompt!r}")
    a, op, b = matches[-1]
    if len(a) != len(b):
        raise ValueError(f"prompt: expected zero-padded operands of equal length, got {a}{op}{b}")
    return ArithmeticProblem(int(a), int(b), op, len(a))


def split_completion(completion: str) -> tuple[list[str], str | None]:
    """(steps, final answer text or None) of a scratchpad or tagged completion; never raises."""
    return _split_completion(completion, STEP_SEPARATORS)


def generate_arithmetic(n: int, split: str = "train", seed: int = 0, *, digits: int = 3, op: str = "+",
                        fmt: str = "scratchpad", test_fraction: float = TEST_FRACTION) -> Iterator[dict]:
    """`n` rows of one split, drawn with replacement; the same arguments give the same rows."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    check_split(split)
    _check_format(fmt)
    ArithmeticProblem(0, 0, op, digits)  # validates op and digits before drawing
    distinct = distinct_problems(split, digits, op, test_fraction) if digits <= 2 else None
    if distinct is not None and n > distinct:
        warnings.warn(f"n={n} rows drawn with replacement from the {distinct} distinct {split!r} problems of "
                      f"digits={digits}: rows repeat (use more digits for more problems)", RuntimeWarning, stacklevel=3)
    rng = random.Random(seed)
    made, tries, max_tries = 0, 0, 1000 * n + 10_000
    while made < n:
        tries += 1
        if tries > max_tries:
            raise ValueError(f"split: no {split!r} problem found for digits={digits} in {max_tries} draws")
        p = ArithmeticProblem(rng.randrange(10**digits), rng.randrange(10**digits), op, digits)
        if problem_split(p.key, test_fraction) == split:
            made += 1
            yield p.row(fmt)


@functools.lru_cache(maxsize=None)
def distinct_problems(split: str, digits: int, op: str = "+", test_fraction: float = TEST_FRACTION) -> int:
    """How many distinct problems of `digits` digits the split holds (counted: 10**(2*digits) keys)."""
    return sum(problem_split(ArithmeticProblem(a, b, op, digits).key, test_fraction) == split
               for a in range(10**digits) for b in range(10**digits))


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"fmt: expected one of {FORMATS}, got {fmt!r}")
