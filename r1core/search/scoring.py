"""Scoring partial and finished solutions for the step-wise searches, and the partial solution
they grow. A `Scorer` is `score(completion_text, finished) -> float`; `verifier_scorer` builds one
from any `Verifier` (the exact rule-based ones, or a trained outcome / process reward model). A
scorer may also have `score_many(completions, finished) -> list[float]` (the trained reward
models' scorers do: a node's sibling steps in one forward over their packed tree); the searches
score the candidates of a node, or of a round, through `score_partials`, which uses it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .verifiers import AGGREGATIONS, Verifier, aggregate_step_scores

Scorer = Callable[[str, bool], float]


FINISHED_SCORES = ("outcome", "steps", "steps_and_outcome")


def verifier_scorer(verifier: Verifier, prompt: str, problem: dict | None = None, aggregate: str = "last",
                    finished: str = "outcome") -> Scorer:
    """A partial solution scores its steps' verifier scores aggregated by `aggregate` ("last",
    "min", "product"). A finished one scores by `finished`: "outcome" (the verifier's outcome
    score), "steps" (its step scores aggregated, the final answer not looked at) or
    "steps_and_outcome" (the outcome as one more step score, aggregated with the others: a PRM
    whose last label judges the answer). A partial solution with no complete step yet scores 1.0
    (no evidence against it), so the first round ranks by the first step alone."""
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate: expected one of {AGGREGATIONS}, got {aggregate!r}")
    if finished not in FINISHED_SCORES:
        raise ValueError(f"finished: expected one of {FINISHED_SCORES}, got {finished!r}")
    problem = dict(problem or {})
    mode = finished

    def score(completion: str, finished: bool) -> float:
        if finished and mode == "outcome":
            return float(verifier.outcome(prompt, completion, **problem))
        steps, _ = verifier.split(completion)
        scores = list(verifier.score(prompt, steps, **problem)) if steps else []
        if finished and mode == "steps_and_outcome":
            scores.append(float(verifier.outcome(prompt, completion, **problem)))
        if not scores:
            return 0.0 if finished else 1.0
        return aggregate_step_scores(scores, aggregate)

    return score


def score_partials(scorer: Scorer, partials: Sequence["Partial"]) -> list[float]:
    """Each partial's score: one `scorer.score_many` call where the scorer has it, else one
    `scorer(text, finished)` call each."""
    many = getattr(scorer, "score_many", None)
    if many is None or not partials:
        return [float(scorer(p.text, p.finished)) for p in partials]
    scores = [float(s) for s in many([p.text for p in partials], [p.finished for p in partials])]
    if len(scores) != len(partials):
        raise ValueError(f"scorer.score_many: returned {len(scores)} scores for {len(partials)} completions")
    return scores


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
