"""Addition whose reasoning may be written in two scripts: the setting of `r1core r1`'s language
consistency.

DeepSeek-R1-Zero mixed languages in its chain of thought; R1 added a reward for the share of the
reasoning in the target language. A character-level model on addition has no languages, so this
task gives it two scripts for the digits of its reasoning: the target script, Latin (ASCII) digits,
and a second one, Arabic-Indic digits (U+0660..U+0669). The prompt and the answer are always Latin;
each step of the `<think>` part (`a+b+carry=sum`, the tagged format of `r1core.tasks.arithmetic`)
is written in one script:

    prompt      864+394=
    latin       <think>4+4+0=8,6+9+0=15,8+3+1=12</think><answer>1258</answer>
    mixed       <think>4+4+0=8,٦+٩+٠=١٥,8+3+1=12</think><answer>1258</answer>

`mixed_rows` draws each step's script (the second with probability `mix`): the base model's
pretraining data, so that it writes both and mixes them, as R1-Zero did. `latin_rows` is the
readable cold-start data (one script). `translation_rows` is the non-reasoning data of R1's stage
3: a number written in the second script, its value in Latin digits, answered without reasoning
(`٣٤٥=` -> `<think></think><answer>345</answer>`). `r1core.rewards.language.script_share` measures the
share of the reasoning's digits in a script.
"""
from __future__ import annotations

import random

from .arithmetic import addition_steps, generate_arithmetic
from .templates import r1_zero_completion
from .tokenizer import TASK_ALPHABET

LATIN_DIGITS = "0123456789"
SECOND_DIGITS = "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669"  # Arabic-Indic
TWO_SCRIPT_ALPHABET = TASK_ALPHABET + SECOND_DIGITS
_TO_SECOND = str.maketrans(LATIN_DIGITS, SECOND_DIGITS)


def in_second_script(text: str) -> str:
    """`text` with its Latin digits written in the second script."""
    return text.translate(_TO_SECOND)


def mixed_completion(a: int, b: int, digits: int, mix: float, rng: random.Random) -> str:
    """The tagged gold completion of a+b, each reasoning step in the second script with probability `mix`."""
    steps = [in_second_script(s) if rng.random() < mix else s for s in addition_steps(a, b, digits)]
    return r1_zero_completion(",".join(steps), str(a + b))


def _check_mix(mix: float) -> None:
    if not isinstance(mix, (int, float)) or isinstance(mix, bool) or not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix: expected a number in [0, 1], got {mix!r}")


def mixed_rows(n: int, split: str = "train", seed: int = 0, *, digits: int = 3, mix: float = 0.5) -> list[dict]:
    """`n` addition rows (prompt, answer, solution, ...) of one split, their reasoning steps in the
    second script with probability `mix` each (seeded)."""
    _check_mix(mix)
    rows = generate_arithmetic(n, split, seed, digits=digits, op="+", fmt="tagged")
    rng = random.Random(seed * 7_919 + 1)
    return [{**r, "solution": mixed_completion(r["a"], r["b"], digits, mix, rng)} for r in rows]


def latin_rows(n: int, split: str = "train", seed: int = 0, *, digits: int = 3) -> list[dict]:
    """`n` addition rows whose reasoning is all in the target script (the readable cold-start data)."""
    return mixed_rows(n, split, seed, digits=digits, mix=0.0)


def translation_rows(n: int, seed: int = 0, *, digits: int = 3) -> list[dict]:
    """`n` non-reasoning rows: a `digits`-digit number in the second script with `=`, answered by
    its Latin digits with an empty <think> (prompt, answer, solution)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    rng = random.Random(seed * 7_919 + 2)
    out = []
    for _ in range(n):
        v = rng.randrange(10**digits)
        out.append({"prompt": in_second_script(f"{v:0{digits}d}") + "=", "answer": str(v),
                    "solution": r1_zero_completion("", str(v))})
    return out


__all__ = ["LATIN_DIGITS", "SECOND_DIGITS", "TWO_SCRIPT_ALPHABET", "in_second_script", "mixed_completion", "mixed_rows",
           "latin_rows", "translation_rows"]
