"""Selecting one answer from N samples: majority vote (self-consistency, Wang et al. 2022),
best-of-N by a verifier score, and weighted best-of-N (sum of scores per distinct answer, as in
Snell et al. 2024). Ties go to the answer that appeared first; None answers and None scores (not
scorable) are ignored."""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Hashable, Sequence

Normalize = None | str | Callable[[Any], Hashable]
NORMALIZERS = (None, "strip", "math")


def group_answers(answers: Sequence[Any], normalize: Normalize = None) -> list[list[int]]:
    """Indices of equal answers, groups in order of first appearance; None answers left out.

    normalize: None (exact equality), "strip" (strings compared without surrounding whitespace),
    "math" (mathematical equality through math-verify, e.g. "0.5" == "\\frac{1}{2}"), or a function
    mapping an answer to a hashable key."""
    if isinstance(normalize, str) and normalize not in NORMALIZERS:
        raise ValueError(f"normalize: expected None, 'strip', 'math' or a function, got {normalize!r}")
    if normalize is not None and not isinstance(normalize, str) and not callable(normalize):
        raise ValueError(f"normalize: expected None, 'strip', 'math' or a function, got {normalize!r}")
    if normalize == "math":
        return _group_math(answers)
    key = (lambda a: a.strip() if isinstance(a, str) else a) if normalize == "strip" else (normalize or (lambda a: a))
    groups: dict[Hashable, list[int]] = {}
    for i, a in enumerate(answers):
        if a is not None:
            groups.setdefault(key(a), []).append(i)
    return list(groups.values())  # dicts keep insertion order: first appearance


def _group_math(answers: Sequence[Any]) -> list[list[int]]:
    from r1core.rewards.accuracy import answers_match

    groups: list[list[int]] = []
    for i, a in enumerate(answers):
        if a is None:
            continue
        text = str(a).strip()
        for g in groups:
            rep = str(answers[g[0]]).strip()
            if text == rep or answers_match(rep, text):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def _check_scores(scores: Sequence[float | None], n: int, name: str = "scores") -> None:
    if len(scores) != n:
        raise ValueError(f"{name}: expected one score per answer ({n}), got {len(scores)}")
    for s in scores:
        if s is not None and (isinstance(s, bool) or not isinstance(s, numbers.Real) or math.isnan(s)):
            raise ValueError(f"{name}: expected numbers or None, got {s!r}")


def _best(values: Sequence[float]) -> int:
    """Index of the largest value, the first one on ties."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def majority_index(answers: Sequence[Any], normalize: Normalize = None) -> int | None:
    """Index of the first sample of the most frequent answer; None when every answer is None."""
    groups = group_answers(answers, normalize)
    return groups[_best([len(g) for g in groups])][0] if groups else None


def majority_vote(answers: Sequence[Any], normalize: Normalize = None) -> Any:
    """The most frequent answer (its first spelling); None when every answer is None."""
    i = majority_index(answers, normalize)
    return None if i is None else answers[i]


def best_of_n_index(scores: Sequence[float | None]) -> int | None:
    """Index of the highest score (first on ties); None when every score is None."""
    _check_scores(scores, len(scores))
    scored = [i for i, s in enumerate(scores) if s is not None]
    return scored[_best([scores[i] for i in scored])] if scored else None


def best_of_n(candidates: Sequence[Any], scores: Sequence[float | None]) -> Any:
    """The candidate with the highest score; None when every score is None."""
    _check_scores(scores, len(candidates))
    i = best_of_n_index(scores)
    return None if i is None else candidates[i]


def weighted_index(answers: Sequence[Any], scores: Sequence[float | None],
                   normalize: Normalize = None) -> tuple[int | None, float | None]:
    """(index of the first sample of the answer with the largest summed score, that sum)."""
    _check_scores(scores, len(answers))
    groups = [[i for i in g if scores[i] is not None] for g in group_answers(answers, normalize)]
    groups = [g for g in groups if g]
    if not groups:
        return None, None
    sums = [math.fsum(scores[i] for i in g) for g in groups]
    best = _best(sums)
    return groups[best][0], sums[best]


def weighted_best_of_n(answers: Sequence[Any], scores: Sequence[float | None], normalize: Normalize = None) -> Any:
    """The answer whose samples' scores sum highest; None when no answer has a score."""
    i, _ = weighted_index(answers, scores, normalize)
    return None if i is None else answers[i]
