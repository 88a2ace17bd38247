"""The one result type every search method returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Candidate:
    """One complete sample a search considered."""
    text: str
    answer: Any = None
    score: float | None = None
    num_tokens: int = 0


@dataclass
class SearchResult:
    """What a search chose and what it cost.

    answer: the chosen final answer (None when no candidate had one); text: the chosen completion;
    score: the chosen answer's score under the method (vote share, verifier score, summed score);
    generated_tokens: every token the search generated, kept or not (the compute axis of the
    accuracy-against-compute plots); candidates: the complete samples it considered.
    """
    answer: Any
    text: str | None
    score: float | None
    generated_tokens: int
    candidates: list[Candidate] = field(default_factory=list)
    method: str = ""
    budget: int = 0
    extra: dict = field(default_factory=dict)
