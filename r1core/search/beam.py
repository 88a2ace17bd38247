"""Step-level search guided by a verifier: PRM beam search and diverse verifier tree search (DVTS),
as Snell et al. 2024 (arXiv 2408.03314) and Hugging Face's search-and-learn run them.

Beam search with budget N and beam width M: sample N first steps, score each partial solution
(PRM step scores aggregated by last/min/product), keep the best N/M, extend each of them M ways
(N candidates again), repeat. A candidate whose step ends the solution joins the finished pool and
is not extended; the search stops when N solutions are finished, when no partial one is left, after
`max_steps` rounds or when `max_tokens` generated tokens are spent. The answer: the finished
solution with the best score ("best"), or the answer whose finished solutions' scores sum highest
("weighted"), or the most frequent one ("majority").

DVTS: N/M independent subtrees, each extended M ways per round and keeping only its single best
candidate: less greedy about one early step than beam search, which spends all N on the few best.

The expansions of a round go to the step generator in one call (one engine batch), with `Release`
notices for the nodes the round pruned (a `BranchStepGenerator` frees their KV). Each search is
also a coroutine (`beam_search_steps`, `dvts_steps`): `drive_many` runs those of many problems
side by side, one engine batch per round for all of them.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from r1core.rewards.completions import extract_answer

from .result import Candidate, SearchResult
from .scoring import Partial, Scorer, score_partials
from .step_generator import Release, StepRequest, check_positive_int, drive
from .voting import Normalize, majority_index, weighted_index

SELECTIONS = ("best", "weighted", "majority")


def _check_common(budget, beam_width, max_steps, max_step_tokens, max_tokens, select) -> None:
    check_positive_int("budget", budget)
    check_positive_int("beam_width", beam_width)
    check_positive_int("max_steps", max_steps)
    check_positive_int("max_step_tokens", max_step_tokens)
    if max_tokens is not None:
        check_positive_int("max_tokens", max_tokens)
    if beam_width > budget:
        raise ValueError(f"beam_width: expected at most budget={budget} (each kept beam is extended beam_width ways), "
                         f"got {beam_width}")
    if select not in SELECTIONS:
        raise ValueError(f"select: expected one of {SELECTIONS}, got {select!r}")


def _score(scorer: Scorer, partials: Sequence[Partial]) -> None:
    for p, s in zip(partials, score_partials(scorer, partials)):
        if math.isnan(s):
            raise ValueError(f"scorer: returned NaN for {p.text!r}")
        p.score = s


def _split(n: int, parts: int) -> list[int]:
    """n as `parts` near-equal positive counts (the first ones one larger)."""
    q, r = divmod(n, parts)
    return [q + (i < r) for i in range(parts)]


def _result(method: str, finished: list[Partial], fallback: list[Partial], tokens: int, budget: int, select: str,
            extract: Callable[[str], Any], normalize: Normalize, extra: dict) -> SearchResult:
    pool = finished or fallback  # nothing finished: report the best partial solutions, answer None
    answers = [extract(p.text) if p.finished else None for p in pool]
    if select == "best" or not finished:
        order = sorted(range(len(pool)), key=lambda i: (-(pool[i].score if pool[i].score is not None else -math.inf), i))
        i, score = (order[0], pool[order[0]].score) if order else (None, None)
    elif select == "weighted":
        i, score = weighted_index(answers, [p.score for p in pool], normalize)
        if i is None:  # no finished solution had an answer: fall back to the best-scored one
            i = max(range(len(pool)), key=lambda j: pool[j].score)
            score = pool[i].score
    else:
        i = majority_index(answers, normalize)
        score = None
        if i is None:
            i = max(range(len(pool)), key=lambda j: pool[j].score)
            score = pool[i].score
    extra["index"] = i
    candidates = [Candidate(p.text, a, p.score, len(p.token_ids)) for p, a in zip(pool, answers)]
    chosen = pool[i] if i is not None else None
    return SearchResult(answer=answers[i] if i is not None else None, text=chosen.text if chosen else None,
                        score=score, generated_tokens=tokens, candidates=candidates, method=method, budget=budget,
                        extra=extra)


def beam_search(generator, prompt_ids: Sequence[int], scorer: Scorer, **kwargs: Any) -> SearchResult:
    """PRM-guided beam search over steps (module docstring). budget: N, the candidates per round;
    beam_width: M, the expansions of each kept beam (N/M beams are kept, at least one); other
    arguments as `beam_search_steps`."""
    return drive(beam_search_steps(prompt_ids, scorer, **kwargs), generator)


def beam_search_steps(prompt_ids: Sequence[int], scorer: Scorer, *, budget: int, beam_width: int = 4,
                      max_steps: int = 40, max_step_tokens: int = 32, max_tokens: int | None = None, select: str = "best",
                      extract: Callable[[str], Any] = extract_answer, normalize: Normalize = None):
    """Beam search as a coroutine: yields lists of StepRequests, returns the SearchResult."""
    _check_common(budget, beam_width, max_steps, max_step_tokens, max_tokens, select)
    prompt_ids = list(prompt_ids)
    keep = max(1, budget // beam_width)
    active, finished = [Partial()], []
    tokens, rounds, history, pruned = 0, 0, [], []
    while active and len(finished) < budget and rounds < max_steps and (max_tokens is None or tokens < max_tokens):
        counts = _split(budget, len(active)) if rounds == 0 else [beam_width] * len(active)
        props = yield pruned + [StepRequest(prompt_ids + b.token_ids, n, max_step_tokens) for b, n in zip(active, counts)]
        candidates = [b.extend(p) for b, ps in zip(active, props) for p in ps]
        tokens += sum(len(p.token_ids) for ps in props for p in ps)
        _score(scorer, candidates)
        rounds += 1
        done = [c for c in candidates if c.finished]
        finished += done
        open_ = sorted((c for c in candidates if not c.finished), key=lambda c: -c.score)
        # fewer beams as the finished pool fills, so the search ends near N finished solutions
        nxt = open_[:max(0, min(keep, math.ceil((budget - len(finished)) / beam_width)))]
        # the parents and the candidates not kept are never asked about again
        kept = {tuple(b.token_ids) for b in nxt}  # a pruned copy of a kept beam must not release it
        pruned = [Release(prompt_ids + p.token_ids) for p in active + open_[len(nxt):] if tuple(p.token_ids) not in kept]
        active = nxt
        history.append({"candidate_scores": [c.score for c in candidates], "kept_scores": [b.score for b in active],
                        "finished": len(done)})
    extra = {"rounds": rounds, "history": history, "finished": len(finished)}
    return _result("beam_search", finished, active, tokens, budget, select, extract, normalize, extra)


def diverse_verifier_tree_search(generator, prompt_ids: Sequence[int], scorer: Scorer, **kwargs: Any) -> SearchResult:
    """DVTS (module docstring): max(1, budget // beam_width) subtrees, each extended beam_width ways
    per round, keeping its best candidate; a subtree ends when that candidate is finished."""
    return drive(dvts_steps(prompt_ids, scorer, **kwargs), generator)


def dvts_steps(prompt_ids: Sequence[int], scorer: Scorer, *, budget: int, beam_width: int = 4, max_steps: int = 40,
               max_step_tokens: int = 32, max_tokens: int | None = None, select: str = "best",
               extract: Callable[[str], Any] = extract_answer, normalize: Normalize = None):
    """DVTS as a coroutine: yields lists of StepRequests, returns the SearchResult."""
    _check_common(budget, beam_width, max_steps, max_step_tokens, max_tokens, select)
    prompt_ids = list(prompt_ids)
    trees = [Partial() for _ in range(max(1, budget // beam_width))]
    finished: list[Partial] = []
    tokens, rounds, pruned = 0, 0, []
    while trees and rounds < max_steps and (max_tokens is None or tokens < max_tokens):
        props = yield pruned + [StepRequest(prompt_ids + t.token_ids, beam_width, max_step_tokens) for t in trees]
        tokens += sum(len(p.token_ids) for ps in props for p in ps)
        rounds += 1
        nxt, pruned = [], []
        round_cands = [[t.extend(p) for p in ps] for t, ps in zip(trees, props)]
        _score(scorer, [c for cands in round_cands for c in cands])  # the round's candidates in one call
        for t, cands in zip(trees, round_cands):
            best = max(cands, key=lambda c: c.score)
            (finished if best.finished else nxt).append(best)
            # the subtree's parent and its other candidates are never asked about again
            pruned += [Release(prompt_ids + c.token_ids) for c in [t] + cands if not c.finished]
        kept = {tuple(t.token_ids) for t in nxt}  # ... but not a kept one (or an identical copy of it)
        pruned = [r for r in pruned if tuple(r.prefix_ids[len(prompt_ids):]) not in kept]
        trees = nxt
    extra = {"rounds": rounds, "subtrees": max(1, budget // beam_width), "finished": len(finished)}
    return _result("dvts", finished, trees, tokens, budget, select, extract, normalize, extra)
