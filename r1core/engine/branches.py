"""Branches: sequences whose KV stays resident in the engine's paged cache between calls, for
step-wise search. Open a branch on a prompt, fork it into children that share every block (the
partly filled last one included, copied on the first write: copy-on-write), extend many branches
by one step in one batched call, and release the ones a search prunes:

    root = engine.open_branch(prompt)            # prefill (prefix cache used); the KV stays resident
    kids = engine.fork_branch(root, 4)           # 4 children sharing root's blocks
    steps = engine.extend(kids, SamplingParams(temperature=1.0, stop=["\\n\\n"], max_new_tokens=64, seed=0))
    engine.release(root)                         # frees the blocks only root holds

A branch is a `Sequence` the scheduler never sees (so `generate` never preempts or frees it; it
works with the blocks left). Between calls every branch has the KV of all its tokens but the last
one in the cache: `extend` computes that pending token first (as a decode step does), samples, and
goes on until each branch stops (stop string, stop token, eos, max_new_tokens, the model's last
position). Nothing already in the KV is computed again.

Sampling: the branches of one `extend` call given the same SamplingParams object are samples
0, 1, ... of it: branch j draws from `sample_generator(params.seed, j)`, the generator sample j of a
`generate` request with that seed uses, so a step is reproducible from its seed (`sample_indices`
names the indices when one request's samples are split over several calls).

Errors: a released branch, a branch of another engine, n < 1, a branch at the model's last
position: ValueError. The weights changed since a branch was opened (its KV is stale), or the cache
has too few free blocks for the next token of every branch: RuntimeError; on the second the
branches are rolled back to where the call found them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r1core.engine.sampling_params import SamplingParams
from r1core.engine.scheduler import ScheduledBatch
from r1core.engine.sequence import Sequence, SequenceGroup, SequenceStatus, sample_generator


class Branch:
    """A handle on one resident sequence. token_ids: every token of the branch (prompt included);
    the last one's KV is computed by the next `extend`."""

    __slots__ = ("engine", "seq", "weight_version", "released")

    def __init__(self, engine, seq: Sequence):
        self.engine = engine
        self.seq = seq
        self.weight_version = engine.block_manager.weight_version
        self.released = False

    @property
    def token_ids(self) -> list[int]:
        return list(self.seq.token_ids)

    @property
    def num_tokens(self) -> int:
        return self.seq.num_tokens

    @property
    def block_table(self) -> list[int]:
        return list(self.seq.block_table)

    def __repr__(self) -> str:
        state = "released" if self.released else f"blocks={self.seq.block_table}"
        return f"Branch(id={self.seq.seq_id}, tokens={self.seq.num_tokens}, {state})"


@dataclass
class BranchStep:
    """What one `extend` added to a branch. token_ids: the step's tokens (the stop string's or the
    eos token included); text: their decoded text (the stop string included); logprobs: the
    log-probs of those tokens as the engine reports them (log_softmax(logits / temperature), before
    top-k/top-p truncation; empty when params.logprobs is False); finish_reason: "stop" (stop
    string, stop token or eos) or "length" (max_new_tokens or the model's last position)."""
    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: str

    @property
    def logprob(self) -> float:
        return float(sum(self.logprobs))

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def held_blocks(engine) -> int:
    """The blocks the open branches hold (shared ones once)."""
    return len({b for seq in engine._open_branches.values() for b in seq.block_table})


def _check_idle(engine, what: str) -> None:
    if engine.scheduler.has_unfinished():
        raise RuntimeError(f"{what} needs an idle engine: requests added with add_request are still running")


def _check_branch(engine, branch, name: str) -> None:
    if not isinstance(branch, Branch):
        raise ValueError(f"{name}: expected a Branch, got {type(branch).__name__}")
    if branch.engine is not engine:
        raise ValueError(f"{name}: the branch belongs to another Engine")
    if branch.released:
        raise ValueError(f"{name}: the branch was released")


def open_branches(engine, prompts) -> list[Branch]:
    """One branch per prompt (strings with a tokenizer, or lists of token ids): the prompts'
    tokens but the last are prefilled in batches of at most max_num_batched_tokens tokens, the full
    blocks of a cached prefix taken from the prefix cache."""
    checked = [engine._tokenize(i, p) for i, p in enumerate(prompts)]
    for i, (_, ids) in enumerate(checked):
        if engine.max_positions is not None and len(ids) >= engine.max_positions:
            raise ValueError(f"request {i}: prompt has {len(ids)} tokens, more than the model's {engine.max_positions} "
                             f"positions allow (max_position_embeddings) with one new token")
    _check_idle(engine, "open_branch")
    engine._check_weights()
    bm = engine.block_manager
    limit = engine.scheduler.max_num_batched_tokens
    params = SamplingParams(n=1, max_new_tokens=1)
    seqs: list[Sequence] = []
    try:
        with engine._engine_mode():
            batch = ScheduledBatch()
            for text, ids in checked:
                group = SequenceGroup(next(engine._request_ids), text, ids, params, 0)
                seq = Sequence(next(engine._seq_ids), group, 0, ids)
                seq.status = SequenceStatus.RUNNING
                seqs.append(seq)
                bm.match_prefix(seq)
                todo = seq.num_tokens - 1 - seq.num_computed_tokens  # the last token stays pending
                while todo > 0:
                    k = min(todo, limit - batch.num_tokens)
                    if bm.blocks_needed(seq, k) > bm.num_free_blocks:
                        raise RuntimeError(
                            f"open_branch: the KV cache has {bm.num_free_blocks} free blocks of {bm.block_size} "
                            f"(of {bm.num_blocks}; open branches hold the others), too few for a prompt of "
                            f"{seq.num_tokens} tokens; release branches or give the Engine more num_blocks")
                    batch.copies += bm.reserve(seq, k)
                    batch.seqs.append(seq)
                    batch.num_new_tokens.append(k)
                    todo -= k
                    if batch.num_tokens >= limit:
                        _prefill(engine, batch)
                        batch = ScheduledBatch()
            if batch.seqs:
                _prefill(engine, batch)
    except BaseException:
        for seq in seqs:
            bm.free(seq)
        raise
    branches = [Branch(engine, seq) for seq in seqs]
    engine._open_branches.update((b.seq.seq_id, b.seq) for b in branches)
    return branches


def _prefill(engine, batch: ScheduledBatch) -> None:
    # a sequence is in a batch once: a batch runs as soon as a chunk fills it
    engine.model_runner.run(batch)  # no sequence reaches its last token: no logits
    for seq, k in zip(batch.seqs, batch.num_new_tokens):
        engine.block_manager.commit(seq, k)


def fork_branch(engine, branch: Branch, n: int) -> list[Branch]:
    """n new branches sharing every block of `branch` (ref counts up; the shared, partly filled
    last block is copied when a child first writes into it). `branch` stays open."""
    _check_branch(engine, branch, "branch")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    parent = branch.seq
    kids = []
    for _ in range(n):
        seq = Sequence(next(engine._seq_ids), parent.group, 0, parent.token_ids)
        seq.status = SequenceStatus.RUNNING
        engine.block_manager.fork(parent, seq)
        kid = Branch(engine, seq)
        kid.weight_version = branch.weight_version
        kids.append(kid)
    engine._open_branches.update((k.seq.seq_id, k.seq) for k in kids)
    return kids


def release(engine, branch: Branch) -> None:
    """Free the blocks only this branch holds (the shared ones lose one reference)."""
    _check_branch(engine, branch, "branch")
    engine.block_manager.free(branch.seq)
    branch.seq.status = SequenceStatus.FINISHED
    branch.released = True
    engine._open_branches.pop(branch.seq.seq_id, None)


def extend(engine, branches, params: SamplingParams | list[SamplingParams],
           sample_indices: list[int] | None = None) -> list[BranchStep]:
    """Grow every branch by one step (module docstring); one BranchStep per branch, in order.
    params: one SamplingParams for all, or one per branch; n must be 1 (fork for more samples).
    sample_indices: the sample index of each branch under its params' seed (default: its position
    among the branches given the same params object), to split one request over several calls."""
    branches = list(branches)
    if sample_indices is not None:
        sample_indices = list(sample_indices)
        if len(sample_indices) != len(branches) or not all(
                isinstance(j, int) and not isinstance(j, bool) and j >= 0 for j in sample_indices):
            raise ValueError(f"sample_indices: expected one int >= 0 per branch, got {sample_indices!r}")
    if isinstance(params, SamplingParams):
        params = [params] * len(branches)
    elif len(params) != len(branches):
        raise ValueError(f"params: got {len(params)} SamplingParams for {len(branches)} branches")
    if len({id(b) for b in branches}) != len(branches):
        raise ValueError("branches: the same branch is given twice")
    for i, (b, p) in enumerate(zip(branches, params)):
        _check_branch(engine, b, f"branches[{i}]")
        if not isinstance(p, SamplingParams):
            raise ValueError(f"params[{i}]: expected a SamplingParams, got {type(p).__name__}")
        p.validate()
        if p.n != 1:
            raise ValueError(f"params[{i}].n: expected 1 (fork the branch for more samples), got {p.n}")
        if p.stop_strings and engine.tokenizer is None:
            raise ValueError(f"params[{i}]: stop strings need a tokenizer")
        if engine.max_positions is not None and b.num_tokens >= engine.max_positions:
            raise ValueError(f"branches[{i}]: {b.num_tokens} tokens leave no room in the model's "
                             f"{engine.max_positions} positions")
        total = b.num_tokens + p.max_new_tokens
        if engine.sliding_window is not None and total > engine.sliding_window:
            raise ValueError(f"branches[{i}]: tokens + max_new_tokens ({total}) exceed the model's sliding window "
                             f"({engine.sliding_window}); sliding-window attention is not implemented")
    if not branches:
        return []
    _check_idle(engine, "extend")
    engine._check_weights()
    bm = engine.block_manager
    for i, b in enumerate(branches):
        if b.weight_version != bm.weight_version:
            raise RuntimeError(f"branches[{i}]: the model's weights changed after the branch was opened, so its KV "
                               f"cache is stale; release it and open a new branch")

    seqs = [b.seq for b in branches]
    starts = [s.num_tokens for s in seqs]
    groups: dict[int, SequenceGroup] = {}
    counts: dict[int, int] = {}
    for i, (seq, p) in enumerate(zip(seqs, params)):
        key = id(p)
        if key not in groups:
            seed = p.seed if p.seed is not None else int(torch.randint(0, 2**62, ()).item())
            groups[key] = SequenceGroup(seq.group.request_id, None, [], p, seed)
        group = groups[key]
        seq.group = group
        seq.index = counts.get(key, 0) if sample_indices is None else sample_indices[i]
        counts[key] = counts.get(key, 0) + 1
        seq.generator = sample_generator(group.seed, seq.index)
        # the stop checker sees this step as the sequence's output
        seq.num_prompt_tokens = seq.num_tokens
        seq.logprobs, seq.text, seq.finish_reason, seq.stop_checked_len = [], None, None, 0

    # Twins (forks of one branch not extended since: same blocks, same pending token) compute that
    # token once: the first one computes it, the others then share its blocks, as generate's samples
    # share their prompt's, and every twin samples from the same logits.
    leaders: dict[tuple, Sequence] = {}
    twins: dict[int, list[Sequence]] = {}
    for seq in seqs:
        key = (tuple(seq.block_table), seq.num_computed_tokens, tuple(seq.token_ids[seq.num_computed_tokens :]))
        lead = leaders.setdefault(key, seq)
        if lead is not seq:
            twins.setdefault(lead.seq_id, []).append(seq)
    limit = engine.scheduler.max_num_batched_tokens
    active = list(leaders.values())
    try:
        with engine._engine_mode():
            while active:
                nxt = []
                for at in range(0, len(active), limit):
                    chunk = active[at : at + limit]
                    need = sum(bm.blocks_needed(s, s.num_tokens - s.num_computed_tokens) for s in chunk)
                    if need > bm.num_free_blocks:
                        raise RuntimeError(
                            f"extend: the KV cache has {bm.num_free_blocks} free blocks of {bm.block_size} "
                            f"(of {bm.num_blocks}; open branches hold the others), {need} needed for the next token "
                            f"of {len(chunk)} branches; release branches or give the Engine more num_blocks")
                    batch = ScheduledBatch()
                    for s in chunk:
                        k = s.num_tokens - s.num_computed_tokens
                        batch.copies += bm.reserve(s, k)
                        batch.seqs.append(s)
                        batch.num_new_tokens.append(k)
                    logits = engine.model_runner.run(batch)  # [len(chunk), V]
                    for s, k in zip(batch.seqs, batch.num_new_tokens):
                        bm.commit(s, k)
                    if twins:
                        rows = []
                        for r, s in enumerate(list(chunk)):
                            for t in twins.pop(s.seq_id, ()):
                                bm.free(t)
                                bm.fork(s, t)
                                chunk.append(t)
                                rows.append(r)
                        if rows:
                            logits = torch.cat([logits, logits[torch.tensor(rows, device=logits.device)]])
                    tokens, logprobs = engine.sampler(logits, chunk)
                    for s, tok, lp in zip(chunk, tokens, logprobs):
                        s.token_ids.append(tok)
                        if s.params.logprobs:
                            s.logprobs.append(lp)
                        reason = engine.stop_checker(s)
                        if reason is None:
                            nxt.append(s)
                        else:
                            s.finish_reason = reason
                active = nxt
    except BaseException:
        for s, start in zip(seqs, starts):
            _rollback(bm, s, start)
        raise

    tok = engine.tokenizer
    out = []
    for s in seqs:
        ids = s.output_token_ids
        text = "" if tok is None else tok.decode(ids, skip_special_tokens=s.params.skip_special_tokens)
        out.append(BranchStep(list(ids), text, list(s.logprobs), s.finish_reason))
    return out


def _rollback(bm, seq: Sequence, start: int) -> None:
    """Back to `start` tokens with the last one pending; blocks past the KV that is kept are freed."""
    del seq.token_ids[start:]
    seq.num_computed_tokens = min(seq.num_computed_tokens, start - 1)
    bs = bm.block_size
    keep = -(-seq.num_computed_tokens // bs)
    for block_id in reversed(seq.block_table[keep:]):
        bm._release(block_id)
    del seq.block_table[keep:]
    del seq.block_hashes[seq.num_computed_tokens // bs :]
    seq.num_prompt_tokens = start
    seq.logprobs, seq.text, seq.finish_reason = [], None, None
