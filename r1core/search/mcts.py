"""Monte-Carlo tree search over reasoning steps (AlphaZero-style PUCT, as in rStar / ReST-MCTS*
but without a learned value network).

Each simulation:
1. select: from the root, go to the child maximising Q + c_puct * P * sqrt(N_parent) / (1 + N_child)
   until a leaf (not yet expanded) or a finished solution;
2. expand: ask the step generator for `num_children` next steps; identical steps merge into one
   child; priors P are the policy's step probabilities exp(sum log-prob), normalised over the
   distinct children;
3. evaluate every new child: the scorer on the partial solution (a verifier or PRM, `value="verifier"`)
   or the mean outcome score of `num_rollouts` rollouts to the end of the solution (`value="rollout"`);
   a finished child is scored as a finished solution;
4. back up: each new child starts with N=1, W=its value; the leaf and its ancestors get one visit
   and the mean value of the new children.
Subtrees whose every leaf is a finished solution and whose nodes used up their expansions are
marked exhausted and never selected again; the search also ends when the root is exhausted.
The budget is the number of simulations (`budget`) and, optionally, generated tokens
(`max_tokens`); with `stop_score` the search ends as soon as a finished solution scores at least
that (e.g. 1.0 under an exact verifier).

A node is expanded again (up to `max_expansions` times, `num_children` fresh samples each, only
new distinct steps kept) when every branch below it has ended: a confident policy samples the
same step four times, and without this its single branch would be a dead end once it failed.

Nodes marked exhausted are announced to the step generator (`Release`): a `BranchStepGenerator`,
which keeps one engine branch per node (expansion forks it), frees their KV.

The answer: the finished solution with the highest score (ties: more visits); with none finished,
the most visited path is completed by one rollout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from r1core.rewards.completions import extract_answer

from .result import Candidate, SearchResult
from .scoring import Partial, Scorer, score_partials
from .step_generator import Release, StepRequest, check_positive_int, drive

VALUES = ("verifier", "rollout")


@dataclass(eq=False)
class Node:
    partial: Partial
    prior: float = 1.0
    parent: "Node | None" = None
    children: list["Node"] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    expanded: bool = False
    expansions: int = 0
    exhausted: bool = False  # a finished solution, or every child exhausted: nothing left to find below

    @property
    def q(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def depth(self) -> int:
        return len(self.partial.steps)


def puct_select(node: Node, c_puct: float) -> Node:
    """The child with the largest PUCT score (first on ties), among those not exhausted."""
    sqrt_n = math.sqrt(max(1, node.visits))
    open_ = [ch for ch in node.children if not ch.exhausted] or node.children
    return max(open_, key=lambda ch: ch.q + c_puct * ch.prior * sqrt_n / (1 + ch.visits))


def _mark_exhausted(node: Node | None, max_expansions: int = 1) -> list[Node]:
    """Mark `node` and its ancestors exhausted while all their children are and they may not be
    expanded again; returns the nodes marked."""
    marked = []
    while (node is not None and node.expanded and node.expansions >= max_expansions
           and all(ch.exhausted for ch in node.children)):
        node.exhausted = True
        marked.append(node)
        node = node.parent
    return marked


def _priors(logprobs: Sequence[float]) -> list[float]:
    m = max(logprobs)
    w = [math.exp(lp - m) for lp in logprobs]
    s = sum(w)
    return [x / s for x in w]


def mcts(generator, prompt_ids: Sequence[int], scorer: Scorer, **kwargs: Any) -> SearchResult:
    """MCTS over steps (module docstring); arguments as `mcts_steps`."""
    return drive(mcts_steps(prompt_ids, scorer, **kwargs), generator)


def mcts_steps(prompt_ids: Sequence[int], scorer: Scorer, *, budget: int, num_children: int = 4,
         c_puct: float = 1.0, value: str = "verifier", outcome_scorer: Scorer | None = None, num_rollouts: int = 1,
         max_depth: int = 40, max_step_tokens: int = 32, max_rollout_tokens: int = 256, max_tokens: int | None = None,
         stop_score: float | None = None, max_expansions: int = 4, extract: Callable[[str], Any] = extract_answer):
    """MCTS as a coroutine (yields lists of StepRequests, returns the SearchResult). scorer(text,
    finished) values partial and finished solutions; outcome_scorer (default: scorer) scores the
    end of a rollout. The rollouts of a simulation's new children go out in one request list."""
    _check_args(budget, num_children, num_rollouts, max_depth, max_step_tokens, max_rollout_tokens, max_expansions,
                max_tokens, value, c_puct)
    outcome_scorer = outcome_scorer or scorer
    st = _Search(list(prompt_ids), Node(Partial()))
    root = st.root
    while (st.sims < budget and not st.solved and not root.exhausted
           and (max_tokens is None or st.tokens < max_tokens)):
        st.sims += 1
        node = _descend(root, c_puct, max_expansions)
        if node.partial.finished or node.depth >= max_depth:
            v = node.partial.score if node.partial.finished else node.q
            _backup(node, v)
            node.exhausted = True  # a leaf that cannot grow: count the visit, then never select it again
            st.pruned.append(node)
            st.pruned.extend(_mark_exhausted(node.parent, max_expansions))
            continue
        (props,) = yield st.notices() + [st.request(node, num_children, max_step_tokens)]
        st.tokens += sum(len(p.token_ids) for p in props)
        st.expansions += 1
        fresh = _expand(node, props)
        if not fresh:  # only steps it already had: nothing to evaluate
            _backup(node, node.q)
            st.pruned.extend(_mark_exhausted(node, max_expansions))
            continue
        values = yield from _evaluate(st, fresh, scorer, outcome_scorer, value, num_rollouts, max_rollout_tokens)
        _record(st, node, fresh, values, stop_score, max_expansions)
    chosen = yield from _choose(st, outcome_scorer, max_rollout_tokens)
    extra = {"simulations": st.sims, "expansions": st.expansions, "solved": st.solved, "finished": len(st.finished),
             "tree_size": _size(root)}
    candidates = [Candidate(n.partial.text, extract(n.partial.text), n.partial.score, len(n.partial.token_ids))
                  for n in st.finished]
    return SearchResult(answer=extract(chosen.text), text=chosen.text, score=chosen.score, generated_tokens=st.tokens,
                        candidates=candidates, method="mcts", budget=budget, extra=extra)


def _check_args(budget, num_children, num_rollouts, max_depth, max_step_tokens, max_rollout_tokens, max_expansions,
                max_tokens, value, c_puct) -> None:
    check_positive_int("budget", budget)
    check_positive_int("num_children", num_children)
    check_positive_int("num_rollouts", num_rollouts)
    check_positive_int("max_depth", max_depth)
    check_positive_int("max_step_tokens", max_step_tokens)
    check_positive_int("max_rollout_tokens", max_rollout_tokens)
    check_positive_int("max_expansions", max_expansions)
    if max_tokens is not None:
        check_positive_int("max_tokens", max_tokens)
    if value not in VALUES:
        raise ValueError(f"value: expected one of {VALUES}, got {value!r}")
    if isinstance(c_puct, bool) or not isinstance(c_puct, (int, float)) or not c_puct >= 0:
        raise ValueError(f"c_puct: expected a number >= 0, got {c_puct!r}")


@dataclass(eq=False)
class _Search:
    """The state of one search: its tree, the finished solutions, the counts, and the exhausted
    nodes not yet announced (`Release`: their branches may go)."""
    prompt_ids: list[int]
    root: Node
    finished: list[Node] = field(default_factory=list)
    pruned: list[Node] = field(default_factory=list)
    tokens: int = 0
    sims: int = 0
    expansions: int = 0
    solved: bool = False

    def notices(self) -> list[Release]:
        out = [Release(self.prompt_ids + n.partial.token_ids) for n in self.pruned if n is not self.root]
        self.pruned.clear()
        return out

    def request(self, node: Node, n: int, max_tokens: int, rollout: bool = False) -> StepRequest:
        return StepRequest(self.prompt_ids + node.partial.token_ids, n, max_tokens, rollout=rollout)


def _descend(root: Node, c_puct: float, max_expansions: int) -> Node:
    """select: PUCT from the root to a leaf, or to a node whose every branch ended (expanded again)."""
    node = root
    while node.expanded and node.children and not node.partial.finished:
        if node.expansions < max_expansions and all(ch.exhausted for ch in node.children):
            break  # every branch below ended: sample this node's step again
        node = puct_select(node, c_puct)
    return node


def _expand(node: Node, props) -> list[Node]:
    """expand: the new distinct steps among `props` become children (priors over every distinct
    step sampled at `node` so far); returns them (empty when nothing was new)."""
    node.expanded = True
    node.expansions += 1
    seen = {tuple(ch.partial.token_ids[len(node.partial.token_ids):]) for ch in node.children}
    new: dict[tuple[int, ...], Any] = {}
    for p in props:
        key = tuple(p.token_ids)
        if key not in seen:
            new.setdefault(key, p)
    if not new:
        return []
    first_new = len(node.children)
    for p in new.values():
        node.children.append(Node(node.partial.extend(p), 0.0, node))
    for ch, prior in zip(node.children, _priors([ch.partial.logprob - node.partial.logprob for ch in node.children])):
        ch.prior = prior
    return node.children[first_new:]


def _evaluate(st: _Search, fresh: list[Node], scorer: Scorer, outcome_scorer: Scorer, value: str, num_rollouts: int,
              max_rollout_tokens: int):
    """evaluate (a coroutine: the rollouts are one request list): each new child's score, and its
    value (the score, or the mean outcome of its rollouts)."""
    # the siblings in one call each to the scorer and the outcome scorer (score_many, where they have it)
    for sc, kids in ((scorer, [ch for ch in fresh if not ch.partial.finished]),
                     (outcome_scorer, [ch for ch in fresh if ch.partial.finished])):
        for ch, s in zip(kids, score_partials(sc, [ch.partial for ch in kids])):
            ch.partial.score = s
    values = [ch.partial.score for ch in fresh]
    if value == "rollout":
        open_ = [i for i, ch in enumerate(fresh) if not ch.partial.finished]
        outs = yield st.notices() + [st.request(fresh[i], num_rollouts, max_rollout_tokens, rollout=True)
                                     for i in open_]
        for i, os_ in zip(open_, outs):
            st.tokens += sum(len(o.token_ids) for o in os_)
            text = fresh[i].partial.text
            values[i] = sum(float(outcome_scorer(text + o.text, True)) for o in os_) / len(os_)
    return values


def _record(st: _Search, node: Node, fresh: list[Node], values: list[float], stop_score: float | None,
            max_expansions: int) -> None:
    """back up: the new children start with one visit of their value; `node` and its ancestors get
    one visit of their mean; finished children join the solutions."""
    for ch, v in zip(fresh, values):
        ch.visits, ch.value_sum = 1, v
        if ch.partial.finished:
            ch.exhausted = True
            st.finished.append(ch)
            if stop_score is not None and ch.partial.score >= stop_score:
                st.solved = True
    _backup(node, sum(values) / len(values))
    st.pruned.extend(_mark_exhausted(node, max_expansions))


def _choose(st: _Search, outcome_scorer: Scorer, max_rollout_tokens: int):
    """The answer (a coroutine): the best finished solution (ties: more visits), or with none
    finished, the most visited path completed by one rollout."""
    if st.finished:
        return max(st.finished, key=lambda n: (n.partial.score, n.visits)).partial
    node = st.root
    while node.children:
        node = max(node.children, key=lambda ch: (ch.visits, ch.q))
    (outs,) = yield st.notices() + [st.request(node, 1, max_rollout_tokens, rollout=True)]
    st.tokens += sum(len(o.token_ids) for o in outs)
    chosen = node.partial.extend(outs[0])
    chosen.score = float(outcome_scorer(chosen.text, True))
    return chosen


def _backup(node: Node | None, v: float) -> None:
    while node is not None:
        node.visits += 1
        node.value_sum += v
        node = node.parent


def _size(node: Node) -> int:
    return 1 + sum(_size(c) for c in node.children)
