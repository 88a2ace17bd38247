"""Accuracy reward: the final answer checked against the `answer` column through math-verify."""
from __future__ import annotations

import re
import threading
from typing import Any, Sequence

from .completions import check_column, extract_answer

MAX_ANSWER_CHARS = 1000  # sympy parsing of a long garbage answer can take seconds
_INT_RE = re.compile(r"^-?\d+$")


def answers_match(gold: Any, predicted: str | None) -> bool:
    """Is `predicted` the same value as `gold`? Never raises."""
    if predicted is None or gold is None:
        return False
    gold, predicted = str(gold).strip(), predicted.strip()
    if not predicted or len(predicted) > MAX_ANSWER_CHARS:
        return False
    # integers compare exactly without sympy: 1.3 ms per math-verify call is a tenth of a GRPO step
    # of 128 completions on the default task
    if _INT_RE.match(gold) and _INT_RE.match(predicted):
        return int(gold) == int(predicted)
    try:
        from math_verify import parse, verify

        # math-verify's timeouts use SIGALRM, which only works on the main thread
        timeout = 5 if threading.current_thread() is threading.main_thread() else None
        gold_parsed = parse(gold, parsing_timeout=timeout)
        pred_parsed = parse(predicted, parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # garbage the parser cannot handle is simply not the answer
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
