"""Accuracy against compute for sampling-based methods: every budget is the first `b` of the
samples already drawn per problem, so one set of N samples traces the whole curve (the table and
plot of `r1core ttc`)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from r1core.rewards.completions import extract_answer

from .metrics import pass_at_k
from .sampling import METHODS, select
from .voting import Normalize


def accuracy_by_budget(texts: Sequence[Sequence[str]], token_counts: Sequence[Sequence[int]],
                       correct: Sequence[Sequence[bool]], budgets: Sequence[int], method: str = "majority", *,
                       scores: Sequence[Sequence[float | None]] | None = None,
                       extract: Callable[[str], Any] = extract_answer, normalize: Normalize = None) -> list[dict]:
    """One row per budget: {"method", "budget", "accuracy", "generated_tokens", "pass_at_k"}.

    texts[p][i], token_counts[p][i], correct[p][i]: sample i of problem p, its length in tokens, and
    whether an exact check accepts it; scores[p][i]: its verifier score (best-of-N methods).
    accuracy: share of problems whose selected sample is correct (no selection counts as wrong);
    generated_tokens: mean tokens generated per problem; pass_at_k: the unbiased pass@budget over
    all the samples, the ceiling an exact verifier reaches."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if len(texts) == 0:
        raise ValueError("texts: expected samples of at least one problem")
    for name, other in (("token_counts", token_counts), ("correct", correct), ("scores", scores)):
        if other is not None and (len(other) != len(texts) or any(len(o) != len(t) for o, t in zip(other, texts))):
            raise ValueError(f"{name}: expected the same [problems][samples] shape as texts")
    n_min = min(len(t) for t in texts)
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= n_min:
            raise ValueError(f"budgets: expected ints in [1, {n_min}] (samples per problem), got {b!r}")
    rows = []
    for b in budgets:
        hits, tokens, passes = 0, 0, 0.0
        for p, samples in enumerate(texts):
            r = select(list(samples[:b]), method, token_counts=list(token_counts[p][:b]), extract=extract,
                       scores=None if scores is None else list(scores[p][:b]), normalize=normalize)
            i = r.extra["index"]
            hits += i is not None and bool(correct[p][i])
            tokens += r.generated_tokens
            passes += pass_at_k(len(samples), sum(map(bool, correct[p])), b)
        rows.append({"method": method, "budget": b, "accuracy": hits / len(texts),
                     "generated_tokens": tokens / len(texts), "pass_at_k": passes / len(texts)})
    return rows
