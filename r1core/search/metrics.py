"""Evaluation metrics: pass@k by the unbiased estimator of Chen et al. 2021 and maj@k
(DeepSeek's cons@k: majority vote over k samples)."""
from __future__ import annotations

import operator
from typing import Any, Sequence

from .voting import Normalize, majority_vote


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected an int, got {value!r}") from None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n samples, c of
    them correct, is correct: 1 - C(n-c, k) / C(n, k), as the product 1 - prod_{i=n-c+1}^{n} (1 - k/i)
    so that no binomial coefficient is formed (they overflow floats for n in the hundreds)."""
    n, c, k = _as_int("n", n), _as_int("c", c), _as_int("k", k)
    if n < 1:
        raise ValueError(f"n: expected at least 1 sample, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c: expected 0 <= c <= n={n}, got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k: expected 1 <= k <= n={n}, got {k}")
    if n - c < k:
        return 1.0  # every k-subset holds a correct sample
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(num_samples: Sequence[int], num_correct: Sequence[int], k: int) -> float:
    """pass@k averaged over problems."""
    if len(num_samples) != len(num_correct):
        raise ValueError(f"num_correct: expected one count per problem ({len(num_samples)}), got {len(num_correct)}")
    if not num_samples:
        raise ValueError("num_samples: expected at least one problem")
    return sum(pass_at_k(n, c, k) for n, c in zip(num_samples, num_correct)) / len(num_samples)


def maj_at_k(answers: Sequence[Any], gold: Any, k: int | None = None, normalize: Normalize = None) -> float:
    """1.0 when the majority answer of the first k samples (all when k is None) equals `gold`."""
    n = len(answers)
    k = n if k is None else _as_int("k", k)
    if not 1 <= k <= n:
        raise ValueError(f"k: expected 1 <= k <= len(answers)={n}, got {k}")
    voted = majority_vote(answers[:k], normalize)
    if voted is None or gold is None:
        return 0.0
    if normalize == "math":
        from r1core.rewards.accuracy import answers_match

        return 1.0 if str(voted).strip() == str(gold).strip() or answers_match(gold, str(voted)) else 0.0
    if normalize == "strip":
        return 1.0 if str(voted).strip() == str(gold).strip() else 0.0
    key = normalize if callable(normalize) else (lambda a: a)
    return 1.0 if key(voted) == key(gold) else 0.0
