"""Accuracy reward: the final answer checked against the `answer` column through math-verify."""
from __future__ import annotations

import re
from typing import Any, Sequence

from .completions import check_column, extract_answer

MAX_ANSWER_CHARS = 1000  # for math-verify only: sympy parsing of a long garbage answer can take seconds
# every math-verify comparison runs in a child process and counts as no match past this many
# seconds, on any thread (math-verify's own timeout works on the main thread only)
ANSWER_TIMEOUT_S = 2.0
_INT_RE = re.compile(r"^[+-]?\d+$")


def _canonical_int(s: str) -> str:
    """An integer's digits without sign noise or leading zeros ("+0123" -> "123", "-0" -> "0"):
    compared as strings, so a 5000-digit answer needs no int() (limited to 4300 digits)."""
    negative = s.startswith("-")
    digits = s.lstrip("+-").lstrip("0") or "0"
    return "-" + digits if negative and digits != "0" else digits


def answers_match(gold: Any, predicted: str | None) -> bool:
    """Is `predicted` the same value as `gold`? Never raises, and returns within about
    ANSWER_TIMEOUT_S seconds whatever the answer and whichever thread calls it."""
    if predicted is None or gold is None:
        return False
    gold, predicted = str(gold).strip(), predicted.strip()
    if not predicted:
        return False
    # integers compare exactly without sympy (any length): 1.3 ms per math-verify call is a tenth of
    # a GRPO step of 128 completions on the default task
    if _INT_RE.match(gold) and _INT_RE.match(predicted):
        return _canonical_int(gold) == _canonical_int(predicted)
    if len(predicted) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    from .verify_worker import verify_answer

    try:
        return verify_answer(gold, predicted, ANSWER_TIMEOUT_S)
    except Exception:  # the worker could not start: not the answer, as any other failure to verify
        return False


def accuracy_reward(prompts: Sequence | None, completions: Sequence, answer: Sequence | None = None,
                    **kwargs: Any) -> list[float | None]:
    """1.0 when a completion's final answer equals its row's `answer`, else 0.0; None for rows
    without a gold answer (or all rows when the dataset has no `answer` column)."""
    n = len(completions)
    check_column("answer", answer, n)
    if answer is None:
        return [None] * n
    out: list[float | None] = []
    for completion, gold in zip(completions, answer):
        if gold is None or (isinstance(gold, str) and not gold.strip()):
            out.append(None)
        else:
            out.append(1.0 if answers_match(gold, extract_answer(completion)) else 0.0)
    return out


# the dataset columns the reward reads: GRPOTrainer checks them before the first step
accuracy_reward.required_columns = ("answer",)
