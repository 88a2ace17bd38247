"""Sampling-based test-time compute: draw `budget` complete samples, then pick one by majority
vote, best-of-N or weighted best-of-N. Engine-agnostic: `generate(prompt, n)` is any function that
returns n samples, each a `(text, num_tokens)` pair, a dict or an object with `text` and
`num_tokens` or `token_ids`. `select` alone applies a method to samples already drawn (e.g. the
first k of 64, to trace accuracy against compute without sampling again)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from r1core.rewards.completions import extract_answer

from .result import Candidate, SearchResult
from .verifiers import Verifier
from .voting import Normalize, best_of_n_index, group_answers, majority_index, weighted_index

METHODS = ("majority", "best_of_n", "weighted_best_of_n")


def select(texts: Sequence[str], method: str = "majority", *, token_counts: Sequence[int], prompt: str = "",
           extract: Callable[[str], Any] = extract_answer, verifier: Verifier | None = None,
           scores: Sequence[float | None] | None = None, aggregate: str | None = None,
           normalize: Normalize = None, problem: dict | None = None) -> SearchResult:
    """Pick one of `texts` by `method`.

    majority: the most frequent extracted answer, score = its share of the votes.
    best_of_n / weighted_best_of_n: by `scores`, or else by `verifier` (its outcome score, or its
    step scores aggregated by `aggregate`: "last", "min" or "product"); `problem` holds the dataset
    columns the verifier reads (numbers, target, answer)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if len(texts) == 0:
        raise ValueError("texts: expected at least one sample")
    if len(token_counts) != len(texts):
        raise ValueError(f"token_counts: expected one count per text ({len(texts)}), got {len(token_counts)}")
    if scores is not None and len(scores) != len(texts):
        raise ValueError(f"scores: expected one score per text ({len(texts)}), got {len(scores)}")
    answers = [extract(t) for t in texts]
    if method != "majority" and scores is None:
        if verifier is None:
            raise ValueError(f"verifier: method {method!r} needs a verifier or scores")
        scores = [verifier.solution_score(prompt, t, aggregate, **(problem or {})) for t in texts]

    extra: dict = {"index": None}
    if method == "majority":
        i = majority_index(answers, normalize)
        groups = group_answers(answers, normalize)
        votes = sum(len(g) for g in groups)
        score = None if i is None else max(len(g) for g in groups) / votes
        extra["distinct_answers"] = len(groups)
    elif method == "best_of_n":
        i = best_of_n_index(scores)
        score = None if i is None else float(scores[i])
    else:
        i, score = weighted_index(answers, scores, normalize)
    extra["index"] = i
    candidates = [Candidate(t, a, None if scores is None else scores[j], int(n))
                  for j, (t, a, n) in enumerate(zip(texts, answers, token_counts))]
    return SearchResult(
        answer=None if i is None else answers[i], text=None if i is None else texts[i], score=score,
        generated_tokens=int(sum(token_counts)), candidates=candidates, method=method, budget=len(texts), extra=extra,
    )


def _text_and_tokens(sample: Any) -> tuple[str, int]:
    if isinstance(sample, (tuple, list)) and len(sample) == 2 and isinstance(sample[0], str):
        return sample[0], int(sample[1])
    get = sample.get if isinstance(sample, dict) else (lambda name: getattr(sample, name, None))
    text = get("text")
    if isinstance(text, str):
        if get("num_tokens") is not None:
            return text, int(get("num_tokens"))
        if get("token_ids") is not None:
            return text, len(get("token_ids"))
    raise ValueError("generate: expected samples as (text, num_tokens) pairs or with text and num_tokens or "
                     f"token_ids (the token count is the search's compute), got {type(sample).__name__}")


def sample_and_select(generate: Callable[[str, int], Sequence[Any]], prompt: str, budget: int,
                      method: str = "majority", **select_kwargs: Any) -> SearchResult:
    """Draw `budget` samples with `generate(prompt, budget)` and `select` one."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget: expected an int >= 1 (samples to draw), got {budget!r}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    samples = list(generate(prompt, budget))
    if len(samples) != budget:
        raise ValueError(f"generate: expected {budget} samples, got {len(samples)}")
    texts, counts = zip(*(_text_and_tokens(s) for s in samples))
    return select(list(texts), method, token_counts=list(counts), prompt=prompt, **select_kwargs)
