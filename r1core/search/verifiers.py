"""Verifiers with one interface: `score(prompt, steps)` gives one score per reasoning step (a
process verifier), `outcome(prompt, completion)` one score for a finished completion (an outcome
verifier). Problem data (`numbers`/`target`, `answer`) can be passed as keyword arguments, as the
dataset columns are passed to rewards; without them it is read back from the prompt.

The exact rule-based verifiers here score 1.0 (good) or 0.0 (bad):
- CountdownVerifier: a step is good if it is legal on the numbers left and those can still reach
  the target (tasks/countdown.py); outcome: the countdown reward.
- ArithmeticVerifier: a step is good if it and every step before it equal the gold scratchpad's
  steps; outcome: the final answer equals the exact result.

Step scores become a solution score by `aggregate_step_scores` (last, min or product).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Sequence

from r1core.rewards.accuracy import answers_match
from r1core.rewards.completions import extract_answer
from r1core.rewards.countdown import countdown_answer, score_expression
from r1core.tasks import arithmetic, countdown

AGGREGATIONS = ("last", "min", "product", "prod")  # "prod": numpy/torch spelling of product


def aggregate_step_scores(scores: Sequence[float], how: str = "last") -> float:
    """One solution score from per-step scores: the last step's (the PRM's judgement of the whole
    prefix), the minimum (a chain is as good as its worst step), or the product."""
    if how not in AGGREGATIONS:
        raise ValueError(f"how: expected one of {AGGREGATIONS}, got {how!r}")
    if len(scores) == 0:
        raise ValueError("scores: expected at least one step score")
    if how == "last":
        return float(scores[-1])
    if how == "min":
        return float(min(scores))
    return math.prod(float(s) for s in scores)


class Verifier(ABC):
    """Scores steps of a solution and finished solutions; see the module docstring."""

    #: what separates steps in this verifier's completions
    step_separator: str = "\n\n"

    @abstractmethod
    def split(self, completion: str) -> tuple[list[str], str | None]:
        """(steps, final answer or None) of a completion."""

    @abstractmethod
    def score(self, prompt: str, steps: Sequence[str], **problem: Any) -> list[float]:
        """One score per step; step i's score judges the solution up to and including step i."""

    @abstractmethod
    def outcome(self, prompt: str, completion: str, **problem: Any) -> float:
        """Score of a finished completion."""

    def solution_score(self, prompt: str, completion: str, aggregate: str | None = None, **problem: Any) -> float:
        """The outcome score, or with `aggregate` the aggregated step scores of the completion
        (0.0 for a completion without steps)."""
        if aggregate is None:
            return self.outcome(prompt, completion, **problem)
        steps, _ = self.split(completion)
        return aggregate_step_scores(self.score(prompt, steps, **problem), aggregate) if steps else 0.0


class CountdownVerifier(Verifier):
    step_separator = countdown.STEP_SEPARATORS

    def split(self, completion: str) -> tuple[list[str], str | None]:
        return countdown.split_completion(completion)

    @staticmethod
    def _problem(prompt: str, numbers=None, target=None) -> tuple[list[int], int]:
        if numbers is None or target is None:
            parsed = countdown.parse_prompt(prompt)
            return list(parsed.numbers), parsed.target
        return list(numbers), int(target)

    def score(self, prompt: str, steps: Sequence[str], numbers=None, target=None, **_: Any) -> list[float]:
        numbers, target = self._problem(prompt, numbers, target)
        return [1.0 if ok else 0.0 for ok in countdown.check_steps(numbers, target, steps)]

    def outcome(self, prompt: str, completion: str, numbers=None, target=None, **_: Any) -> float:
        numbers, target = self._problem(prompt, numbers, target)
        return score_expression(countdown_answer(completion), numbers, target)


class ArithmeticVerifier(Verifier):
    step_separator = ","

    def split(self, completion: str) -> tuple[list[str], str | None]:
        return arithmetic.split_completion(completion)

    def score(self, prompt: str, steps: Sequence[str], **_: Any) -> list[float]:
        gold = arithmetic.parse_prompt(prompt).steps()
        out, alive = [], True
        for i, step in enumerate(steps):
            alive = alive and i < len(gold) and step.strip() == gold[i]
            out.append(1.0 if alive else 0.0)
        return out

    def outcome(self, prompt: str, completion: str, answer=None, **_: Any) -> float:
        gold = answer if answer is not None else arithmetic.parse_prompt(prompt).answer
        return 1.0 if answers_match(gold, extract_answer(completion)) else 0.0
