"""Small programming problems from templates, with generated test cases, scored by
r1core.rewards.code_reward (the program run in r1core.sandbox).

    prompt      Read two integers a and b from one line and print 3*a + 7*b. Write a Python program
                that reads standard input and writes standard output; answer with the program in a
                ```python code block.
    solution    ```python
                a, b = map(int, input().split())
                print(3 * a + 7 * b)
                ```
    test_cases  [{"input": "12 -5\\n", "output": "1\\n"}, ...]

A problem is a family and its parameters (the key, e.g. "linear:3,7"); its test cases are drawn
from a generator seeded by the key, so a problem has the same tests in every dataset. Expected
outputs come from a reference function here, never from running code. Train and test are
disjoint by a hash of the key (splits.py).
"""
from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .splits import TEST_FRACTION, check_split, problem_split
from .templates import r1_zero_completion, r1_zero_prompt

FORMATS = ("plain", "r1zero")
INSTRUCTION = ("Write a Python program that reads standard input and writes standard output; "
               "answer with the program in a ```python code block.")


def _ints(rng: random.Random, lo: int, hi: int, most: int) -> str:
    return " ".join(str(rng.randint(lo, hi)) for _ in range(rng.randint(1, most))) + "\n"


@dataclass(frozen=True)
class _Family:
    params: Callable[[random.Random], tuple]  # draws a problem's parameters
    statement: Callable[..., str]
    solution: Callable[..., str]
    make_input: Callable[[random.Random], str]
    expected: Callable[..., str]  # (input text, *params) -> output text


_SEPARATORS = "-+,:"
FAMILIES: dict[str, _Family] = {
    "linear": _Family(
        params=lambda r: (r.randint(1, 9), r.randint(1, 9)),
        statement=lambda p, q: f"Read two integers a and b from one line and print {p}*a + {q}*b.",
        solution=lambda p, q: f"a, b = map(int, input().split())\nprint({p} * a + {q} * b)",
        make_input=lambda r: f"{r.randint(-99, 99)} {r.randint(-99, 99)}\n",
        expected=lambda text, p, q: f"{p * int(text.split()[0]) + q * int(text.split()[1])}\n"),
    "count_multiples": _Family(
        params=lambda r: (r.randint(2, 9),),
        statement=lambda k: f"Read a line of integers and print how many of them are divisible by {k}.",
        solution=lambda k: f"xs = list(map(int, input().split()))\nprint(sum(1 for x in xs if x % {k} == 0))",
        make_input=lambda r: _ints(r, 0, 99, 8),
        expected=lambda text, k: f"{sum(1 for x in text.split() if int(x) % k == 0)}\n"),
    "repeat": _Family(
        params=lambda r: (r.randint(2, 5), r.randrange(len(_SEPARATORS))),
        statement=lambda k, s: f"Read a word and print it {k} times, separated by '{_SEPARATORS[s]}'.",
        solution=lambda k, s: f"w = input().strip()\nprint({_SEPARATORS[s]!r}.join([w] * {k}))",
        make_input=lambda r: "".join(r.choice(string.ascii_lowercase) for _ in range(r.randint(1, 6))) + "\n",
        expected=lambda text, k, s: _SEPARATORS[s].join([text.strip()] * k) + "\n"),
    "digit_sum_mod": _Family(
        params=lambda r: (r.randint(2, 9),),
        statement=lambda m: f"Read a non-negative integer and print the sum of its digits modulo {m}.",
        solution=lambda m: f"n = input().strip()\nprint(sum(int(c) for c in n) % {m})",
        make_input=lambda r: f"{r.randint(0, 10**6)}\n",
        expected=lambda text, m: f"{sum(int(c) for c in text.strip()) % m}\n"),
    "sum_multiples": _Family(
        params=lambda r: (r.randint(1, 5),),
        statement=lambda s: f"Read an integer n and print the sum of the multiples of {s} from 0 to n inclusive.",
        solution=lambda s: f"n = int(input())\nprint(sum(range(0, n + 1, {s})))",
        make_input=lambda r: f"{r.randint(0, 60)}\n",
        expected=lambda text, s: f"{sum(range(0, int(text) + 1, s))}\n"),
    "sort": _Family(
        params=lambda r: (r.randint(0, 1),),
        statement=lambda desc: (f"Read a line of integers and print them in {'descending' if desc else 'ascending'} "
                                "order, separated by spaces."),
        solution=lambda desc: ("xs = sorted(map(int, input().split())" + (", reverse=True" if desc else "") + ")\n"
                               "print(' '.join(map(str, xs)))"),
        make_input=lambda r: _ints(r, -50, 50, 7),
        expected=lambda text, desc: " ".join(map(str, sorted(map(int, text.split()), reverse=bool(desc)))) + "\n"),
}


@dataclass(frozen=True)
class CodeProblem:
    family: str
    params: tuple

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family: expected one of {sorted(FAMILIES)}, got {self.family!r}")

    @property
    def key(self) -> str:
        """Canonical text of the problem, e.g. "linear:3,7"; decides the split and seeds its tests."""
        return f"{self.family}:{','.join(map(str, self.params))}"

    @property
    def program(self) -> str:
        """The reference program."""
        return FAMILIES[self.family].solution(*self.params) + "\n"

    def test_cases(self, n: int) -> list[dict]:
        """`n` test cases, the same for this problem in every dataset."""
        fam = FAMILIES[self.family]
        rng = random.Random(int.from_bytes(hashlib.blake2b(self.key.encode(), digest_size=8).digest(), "big"))
        inputs = [fam.make_input(rng) for _ in range(n)]
        return [{"input": text, "output": fam.expected(text, *self.params)} for text in inputs]

    def prompt(self, fmt: str = "plain") -> str:
        _check_format(fmt)
        question = f"{FAMILIES[self.family].statement(*self.params)} {INSTRUCTION}"
        return r1_zero_prompt(question.rstrip(".")) if fmt == "r1zero" else question + "\n"  # the template ends it

    def completion(self, fmt: str = "plain") -> str:
        """The gold completion: the reference program in a ```python block."""
        _check_format(fmt)
        block = f"```python\n{self.program}```"
        return r1_zero_completion("read the input, compute, print", f"\n{block}\n") if fmt == "r1zero" else block

    def row(self, fmt: str = "plain", num_tests: int = 4) -> dict:
        return {"prompt": self.prompt(fmt), "solution": self.completion(fmt), "test_cases": self.test_cases(num_tests),
                "family": self.family, "key": self.key, "task": "code"}


def generate_code(n: int, split: str = "train", seed: int = 0, *, fmt: str = "plain", num_tests: int = 4,
                  test_fraction: float = TEST_FRACTION) -> Iterator[dict]:
    """`n` rows of one split, problems drawn with replacement; the same arguments give the same rows."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    if isinstance(num_tests, bool) or not isinstance(num_tests, int) or num_tests < 1:
        raise ValueError(f"num_tests: expected a positive int, got {num_tests!r}")
    check_split(split)
    _check_format(fmt)
    rng = random.Random(seed)
    families = sorted(FAMILIES)
    made, tries, max_tries = 0, 0, 1000 * n + 10_000
    while made < n:
        tries += 1
        if tries > max_tries:
            raise ValueError(f"split: no {split!r} problem found in {max_tries} draws")
        family = rng.choice(families)
        p = CodeProblem(family, FAMILIES[family].params(rng))
        if problem_split(p.key, test_fraction) == split:
            made += 1
            yield p.row(fmt, num_tests)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"fmt: expected one of {FORMATS}, got {fmt!r}")
