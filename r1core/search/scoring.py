"""Scoring partial and finished solutions for the step-wise searches, and the partial solution
they grow. A `Scorer` is `score(completion_text, finished) -> float`; `verifier_scorer` builds one
from any `Verifier` (the exact rule-based ones, or a trained outcome / process reward model)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .verifiers import AGGREGATIONS, Verifier, aggregate_step_scores

Scorer = Callable[[str, bool], float]


def verifier_scorer(verifier: Verifier, prompt: str, problem: dict | None = None, aggregate: str = "last",
                    outcome_when_finished: bool = True) -> Scorer:
    """A partial solution scores its steps' verifier scores aggregated by `aggregate` ("last",
    "min", "product"); a finished one its outcome score (or, with outcome_when_finished=False, its
    aggregated step scores as well). A partial solution with no complete step yet scores 1.0 (no
    evidence against it), so the first round ranks by the first step alone."""
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate: expected one of {AGGREGATIONS}, got {aggregate!r}")
    problem = dict(problem or {})

    def score(completion: str, finished: bool) -> float:
        if finished and outcome_when_finished:
            return float(verifier.outcome(prompt, completion, **problem))
        steps, _ = verifier.split(completion)
        if not steps:
            return 0.0 if finished else 1.0
        return aggregate_step_scores(verifier.score(prompt, steps, **problem), aggregate)

    return score


@dataclass
class Partial:
    """A partial (or finished) solution: its completion tokens and text, step by step."""
    token_ids: list[int] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    logprob: float = 0.0
    finished: bool = False
    score: float | None = None

    @property
    def text(self) -> str:
        return "".join(self.steps)

    def extend(self, proposal: Any) -> "Partial":
        return Partial(self.token_ids + list(proposal.token_ids), self.steps + [proposal.text],
                       self.logprob + float(proposal.logprob), bool(proposal.finished))
