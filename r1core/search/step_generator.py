"""Step generators: how step-wise searches (beam search, diverse verifier tree search, MCTS) ask a
policy for the next reasoning step.

A step is the text up to and including a step delimiter: a blank line for free-form reasoning,
"," for the scratchpad tasks (`T9+6+0=15,` `8+9+1=18,` `9+7+1=17;A1785</s>`: the last step runs
to the end of the solution). The protocol:

    expand(prefix_ids, n, max_step_tokens) -> n StepProposals (token ids, text, sum log-prob, finished)
    rollout(prefix_ids, n, max_tokens)     -> n StepProposals that run to the end of the solution

`EngineStepGenerator` asks `r1core.engine.Engine` for n samples of the prefix with the delimiter as
a stop string: the engine prefills the prefix once and forks its KV into the n children, and the
prefix cache serves the full blocks of a prefix seen in an earlier call (a parent's prefix when its
children are expanded), so a search pays for each new step's tokens, not for its whole history.
`serve` answers many requests (expansions and rollouts) in one engine call: the searches are
coroutines that yield their requests, so `drive_many` runs the searches of many problems side by
side with one engine batch per round.

`BranchStepGenerator` does the same on engine branches: each search node keeps a resident branch
(its KV, the partly filled last block included), a node's steps are forks of its branch extended by
one step, and pruned or finished nodes release their blocks; nothing a node holds is recomputed.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable


@dataclass
class StepProposal:
    """One sampled step (or, from `rollout`, the rest of a solution).

    token_ids: the step's tokens, delimiter included; text: their decoded text; logprob: the sum of
    the policy's log-probs of those tokens (at the sampling temperature); finished: the solution
    ends with this step (end of sequence, or the step ran out of tokens without a delimiter)."""
    token_ids: list[int]
    text: str
    logprob: float
    finished: bool

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@runtime_checkable
class StepGenerator(Protocol):
    def expand(self, prefix_ids: Sequence[int], n: int, max_step_tokens: int) -> list[StepProposal]: ...

    def rollout(self, prefix_ids: Sequence[int], n: int, max_tokens: int) -> list[StepProposal]: ...


@dataclass
class StepRequest:
    """One question to a step generator: n next steps of a prefix (rollout=False: each up to the
    delimiter, at most max_tokens) or n rollouts to the end of the solution (rollout=True)."""
    prefix_ids: list[int]
    n: int
    max_tokens: int
    rollout: bool = False


@dataclass
class Release:
    """A search's notice that it will not ask about `prefix_ids` again (a pruned node): a search
    coroutine may yield these among its StepRequests; `drive_many` hands them to the generator's
    `release_prefixes` (a `BranchStepGenerator` frees that node's branch) and answers only the
    requests."""
    prefix_ids: list[int]


def serve(generator, requests: Sequence[StepRequest]) -> list[list[StepProposal]]:
    """Answer every request, in one call where the generator has a `serve` of its own (one engine
    batch for all of them)."""
    if not requests:
        return []
    if hasattr(generator, "serve"):
        return generator.serve(requests)
    return [generator.rollout(r.prefix_ids, r.n, r.max_tokens) if r.rollout else
            generator.expand(r.prefix_ids, r.n, r.max_tokens) for r in requests]


def expand_batch(generator, requests: Sequence[tuple[Sequence[int], int]], max_step_tokens: int) -> list[list[StepProposal]]:
    """`generator.expand` for every (prefix_ids, n) pair, batched as `serve` does."""
    return serve(generator, [StepRequest(list(p), n, max_step_tokens) for p, n in requests])


def drive(search, generator):
    """Run one search coroutine (it yields lists of StepRequests and is sent their answers) to its
    result."""
    return drive_many([search], generator)[0]


def drive_many(searches, generator) -> list:
    """Run many search coroutines side by side: each round, the requests of all of them go to the
    generator in one `serve` call (with the engine: one batch across problems). At the end a
    generator's `end_search` (if it has one) runs: a `BranchStepGenerator` releases its branches."""
    try:
        return _drive_many(searches, generator)
    finally:
        end = getattr(generator, "end_search", None)
        if end is not None:
            end()


def _drive_many(searches, generator) -> list:
    results: list = [None] * len(searches)
    pending: dict[int, list[StepRequest]] = {}
    for i, co in enumerate(searches):
        try:
            pending[i] = next(co)
        except StopIteration as stop:
            results[i] = stop.value
    release = getattr(generator, "release_prefixes", None)
    while pending:
        order = list(pending)
        notices = [r.prefix_ids for i in order for r in pending[i] if isinstance(r, Release)]
        for i in order:
            pending[i] = [r for r in pending[i] if not isinstance(r, Release)]
        if notices and release is not None:
            release(notices)
        flat = [r for i in order for r in pending[i]]
        answers = serve(generator, flat)
        at = 0
        for i in order:
            k = len(pending[i])
            try:
                pending[i] = searches[i].send(answers[at:at + k])
            except StopIteration as stop:
                results[i] = stop.value
                del pending[i]
            at += k
    return results


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return value


class EngineStepGenerator:
    """Steps sampled by an `Engine` with `delimiter` as the stop string.

    end_marker: text that ends a solution even when a delimiter follows it (";A" for the scratchpad
    tasks: a model that writes `17;A1785,` has answered); temperature, top_p: the sampling
    distribution of the steps (the log-probs reported are those of the temperature-scaled
    distribution, as the engine reports them); seed: each call draws from seed + a call counter, so
    a search is reproducible and two calls never repeat each other."""

    def __init__(self, engine, delimiter: str = "\n\n", *, end_marker: str | None = None, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0):
        if engine.tokenizer is None:
            raise ValueError("engine: expected an Engine built with a tokenizer (steps end at a stop string)")
        if not isinstance(delimiter, str) or not delimiter:
            raise ValueError(f"delimiter: expected a non-empty string, got {delimiter!r}")
        if end_marker is not None and (not isinstance(end_marker, str) or not end_marker):
            raise ValueError(f"end_marker: expected None or a non-empty string, got {end_marker!r}")
        if not isinstance(temperature, (int, float)) or temperature < 0:
            raise ValueError(f"temperature: expected a number >= 0, got {temperature!r}")
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.delimiter = delimiter
        self.end_marker = end_marker
        self.temperature = float(temperature)
        self.top_p = top_p
        self.seed = seed
        self._calls = 0
        self.generated_tokens = 0  # every token this generator produced, for budget accounting

    def _params(self, n: int, max_new_tokens: int, stop):
        from r1core.engine import SamplingParams

        self._calls += 1
        return SamplingParams(n=n, temperature=self.temperature, top_p=self.top_p, max_new_tokens=max_new_tokens,
                              stop=stop, seed=self.seed * 1_000_003 + self._calls, logprobs=True)

    def _proposal(self, out, eos: set[int]) -> StepProposal:
        ids = list(out.token_ids)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        lp = float(sum(out.logprobs or []))
        # `in`, not endswith: the token that completed the delimiter may carry more text after it
        at_delimiter = out.finish_reason == "stop" and not (ids and ids[-1] in eos) and self.delimiter in text
        ended = self.end_marker is not None and self.end_marker in text
        self.generated_tokens += len(ids)
        return StepProposal(ids, text, lp, finished=ended or not at_delimiter)

    def _eos(self) -> set[int]:
        return self.engine.stop_checker.eos_token_ids

    def serve(self, requests: Sequence[StepRequest]) -> list[list[StepProposal]]:
        """All requests in one engine call: steps stop at the delimiter, rollouts run to the end."""
        if not requests:
            return []
        prompts, params = [], []
        for i, r in enumerate(requests):
            check_positive_int(f"requests[{i}].n", r.n)
            check_positive_int(f"requests[{i}].max_tokens", r.max_tokens)
            prompts.append(list(r.prefix_ids))
            params.append(self._params(r.n, self._room(r.prefix_ids, r.max_tokens), None if r.rollout else [self.delimiter]))
        outs = self.engine.generate(prompts, params)
        eos = self._eos()
        answers = []
        for r, o in zip(requests, outs):
            props = [self._proposal(c, eos) for c in o.outputs]
            if r.rollout:
                for p in props:
                    p.finished = True
            answers.append(props)
        return answers

    def expand_batch(self, requests: Sequence[tuple[Sequence[int], int]], max_step_tokens: int) -> list[list[StepProposal]]:
        check_positive_int("max_step_tokens", max_step_tokens)
        return self.serve([StepRequest(list(p), n, max_step_tokens) for p, n in requests])

    def expand(self, prefix_ids: Sequence[int], n: int, max_step_tokens: int) -> list[StepProposal]:
        check_positive_int("n", n)
        check_positive_int("max_step_tokens", max_step_tokens)
        return self.serve([StepRequest(list(prefix_ids), n, max_step_tokens)])[0]

    def rollout(self, prefix_ids: Sequence[int], n: int, max_tokens: int) -> list[StepProposal]:
        check_positive_int("n", n)
        check_positive_int("max_tokens", max_tokens)
        return self.serve([StepRequest(list(prefix_ids), n, max_tokens, rollout=True)])[0]

    def _room(self, prefix: Sequence[int], want: int) -> int:
        """`want` new tokens, fewer where the model's positions run out (the engine refuses more)."""
        limit = self.engine.max_positions
        if limit is None:
            return want
        room = limit - len(prefix)
        if room < 1:
            raise ValueError(f"prefix_ids: {len(prefix)} tokens leave no room in the model's {limit} positions")
        return min(want, room)


KEEP = ("tree", "frontier")


class BranchStepGenerator(EngineStepGenerator):
    """Steps from engine branches (`Engine.open_branch` / `fork_branch` / `extend` / `release`): one
    resident branch per search node, so a node's steps are sampled by forking its branch (its KV,
    the partly filled last block included, shared copy-on-write) and extending the children by one
    step in one batched call; nothing the node already holds is computed again. Same sampling,
    seeds and proposals as `EngineStepGenerator` (its samples are those `generate` draws with the
    same seeds).

    The branches are keyed by their token ids: the child that proposed a step becomes the branch of
    the node `prefix + step` (an identical second one, or a finished step, is released at once);
    rollouts are forked, extended to the end and released. A prefix with no branch (the first
    request, or one released) is opened from the prefix cache. keep: "tree" keeps every node's
    branch (MCTS goes back to any node) and releases the least recently used ones when a request
    needs more free blocks than there are; "frontier" keeps only the branches the last call made
    (PRM beam search and DVTS never return to an older node). `end_search` (run by `drive_many`
    when a search ends) or `close` releases them all; so does a change in the model's weights."""

    def __init__(self, engine, delimiter: str = "\n\n", *, end_marker: str | None = None, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0, keep: str = "tree"):
        super().__init__(engine, delimiter, end_marker=end_marker, temperature=temperature, top_p=top_p, seed=seed)
        if keep not in KEEP:
            raise ValueError(f"keep: expected one of {KEEP}, got {keep!r}")
        self.keep = keep
        self._branches: OrderedDict[tuple[int, ...], object] = OrderedDict()  # least recently used first
        self.opened = 0  # branches opened by a prefill (not found resident), for tests and stats

    @property
    def num_branches(self) -> int:
        return len(self._branches)

    def close(self) -> None:
        """Release every branch this generator holds."""
        while self._branches:
            _, branch = self._branches.popitem(last=False)
            self.engine.release(branch)

    end_search = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def release_prefixes(self, prefixes: Sequence[Sequence[int]]) -> None:
        """Release the branches of these prefixes (pruned nodes), where this generator holds them."""
        for p in prefixes:
            branch = self._branches.pop(tuple(p), None)
            if branch is not None:
                self.engine.release(branch)

    def _evict(self, need: int, protect: set) -> None:
        """Release least recently used branches outside `protect` until `need` blocks are free."""
        bm = self.engine.block_manager
        for key in [k for k in self._branches if k not in protect]:
            if bm.num_free_blocks >= need:
                return
            self.engine.release(self._branches.pop(key))

    def serve(self, requests: Sequence[StepRequest]) -> list[list[StepProposal]]:
        """All requests in one batched `extend`: steps stop at the delimiter, rollouts run to the end."""
        if not requests:
            return []
        engine = self.engine
        bm = engine.block_manager
        plans = []
        for i, r in enumerate(requests):
            check_positive_int(f"requests[{i}].n", r.n)
            check_positive_int(f"requests[{i}].max_tokens", r.max_tokens)
            plans.append((tuple(r.prefix_ids), self._room(r.prefix_ids, r.max_tokens)))
        engine.check_weights()
        if any(b.weight_version != bm.weight_version for b in self._branches.values()):
            self.close()  # their KV is stale
        keys = {key for key, _ in plans}
        # worst case: every child runs to max_tokens, plus a copy of its parent's last block
        need = sum(r.n * (-(-(room + 1) // bm.block_size) + 1) for r, (_, room) in zip(requests, plans))
        missing = [k for k in dict.fromkeys(key for key, _ in plans) if k not in self._branches]
        need += sum(-(-len(k) // bm.block_size) for k in missing)
        self._evict(need, keys)
        if missing:
            for key, branch in zip(missing, engine.open_branches([list(k) for k in missing])):
                self._branches[key] = branch
            self.opened += len(missing)
        for key in keys:
            self._branches.move_to_end(key)
        old = set(self._branches) if self.keep == "frontier" else set()

        params = [self._params(1, room, None if r.rollout else [self.delimiter]) for r, (_, room) in zip(requests, plans)]
        done = self._fork_and_extend([(q, 0, r.n) for q, r in enumerate(requests)], [key for key, _ in plans], params)
        kids = [[None] * r.n for r in requests]
        steps = [[None] * r.n for r in requests]
        for q, j, kid, step in done:
            kids[q][j], steps[q][j] = kid, step

        eos = self._eos()
        answers = []
        for r, ks, ss in zip(requests, kids, steps):
            props = [self._proposal(st, eos) for st in ss]
            for kid, p in zip(ks, props):
                if r.rollout:
                    p.finished = True
                key = tuple(kid.token_ids)
                if kid.released:  # let go for room (`_fork_and_extend`): the node has no branch, opened if expanded
                    continue
                if r.rollout or p.finished or key in self._branches:
                    engine.release(kid)
                else:
                    self._branches[key] = kid
            answers.append(props)
        for key in old:
            engine.release(self._branches.pop(key))
        return answers

    def _fork_and_extend(self, items: list[tuple[int, int, int]], keys: list, params: list) -> list[tuple]:
        """Samples j0..j1-1 of request q, for each (q, j0, j1) in items: forks of the request's
        branch extended by one step in one `engine.extend`; [(q, j, child, step)]. Where the free
        blocks are too few for all at once, the children are let go (rolled back, a child still
        holds a private copy of its parent's last block) and the items run in two halves, each
        forking afresh; the children of a finished half are released to make room for the next
        (their steps are kept)."""
        from r1core.engine import CacheFull

        engine = self.engine
        kids, flat_params, indices, where = [], [], [], []
        for q, j0, j1 in items:
            kids += engine.fork_branch(self._branches[keys[q]], j1 - j0)
            flat_params += [params[q]] * (j1 - j0)
            indices += range(j0, j1)  # samples j0..j1-1 of the request's seed, as generate draws them
            where += [(q, j) for j in range(j0, j1)]
        try:
            steps = engine.extend(kids, flat_params, indices)
        except BaseException as e:
            for k in kids:
                if not k.released:
                    engine.release(k)
            if not isinstance(e, CacheFull) or len(kids) < 2:
                raise
            first, second = _halves(items)
            done = self._fork_and_extend(first, keys, params)
            for _, _, kid, _ in done:
                if not kid.released:
                    engine.release(kid)
            return done + self._fork_and_extend(second, keys, params)
        return [(q, j, kid, step) for (q, j), kid, step in zip(where, kids, steps)]


def _halves(items: list[tuple[int, int, int]]) -> tuple[list, list]:
    """Split sample ranges [(q, j0, j1)] into two lists of about half the samples each."""
    half = sum(j1 - j0 for _, j0, j1 in items) // 2
    first, second, count = [], [], 0
    for q, j0, j1 in items:
        if count >= half:
            second.append((q, j0, j1))
        elif count + (j1 - j0) <= half:
            first.append((q, j0, j1))
        else:
            cut = j0 + half - count
            first.append((q, j0, cut))
            second.append((q, cut, j1))
        count += j1 - j0
    return first, second
