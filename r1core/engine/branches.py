"""Branches: sequences whose KV stays resident in the engine's paged cache between calls, for
step-wise search. Open a branch on a prompt, fork it into children that share every block (the
partly filled last one included, copied on the first write: copy-on-write), extend many branches
by one step in one batched call, and release the ones a search prunes:

    root = engine.open_branch(prompt)            # prefill (prefix cache used); the KV stays resident
    kids = engine.fork_branch(root, 4)           # 4 children sharing root's blocks
    steps = engine.extend(kids, SamplingParams(temperature=1.0, stop=["\\n\\n"], max_new_tokens=64, seed=0))
    engine.release(root)                         # frees the blocks only root holds

A branch is a handle on a pinned (resident) `Sequence` of the engine (`Engine.add_resident`,
`fork_resident`, `release_resident`): the scheduler never preempts it, and `generate` works with the
blocks the branches leave. Between calls every branch has the KV of all its tokens but the last one
in the cache: `extend` runs the branches through the engine's own loop (`Engine.decode`: schedule,
run, commit, sample and stop), which computes that pending token first (as a decode step does),
samples, and goes on until each branch stops (stop string, stop token, eos, max_new_tokens, the
model's last position). Nothing already in the KV is computed again. This module is the policy:
what a step is (its sampling, its output) and the rollback when the cache runs out.

Sampling: the branches of one `extend` call given the same SamplingParams object are samples
0, 1, ... of it: branch j draws from `sample_stream(params.seed, j)`, the stream sample j of a
`generate` request with that seed uses, so a step is reproducible from its seed (`sample_indices`
names the indices when one request's samples are split over several calls).

Errors: a released branch, a branch of another engine, n < 1, a branch at the model's last
position: ValueError. The weights changed since a branch was opened (its KV is stale):
RuntimeError. The cache has too few free blocks for the next tokens of the branches: `CacheFull`
(a RuntimeError), and the branches are rolled back to where the call found them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r1core.engine.sample_stream import sample_stream
from r1core.engine.sampling_params import SamplingParams
from r1core.engine.scheduler import CacheFull
from r1core.engine.sequence import Sequence, SequenceGroup


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


def _check_branch(engine, branch, name: str) -> None:
    if not isinstance(branch, Branch):
        raise ValueError(f"{name}: expected a Branch, got {type(branch).__name__}")
    if branch.engine is not engine:
        raise ValueError(f"{name}: the branch belongs to another Engine")
    if branch.released:
        raise ValueError(f"{name}: the branch was released")


def open_branches(engine, prompts) -> list[Branch]:
    """One branch per prompt (strings with a tokenizer, or lists of token ids): the prompts'
    tokens but the last are prefilled in the engine's loop, in batches of at most
    max_num_batched_tokens tokens, the full blocks of a cached prefix taken from the prefix cache."""
    checked = [engine.check_prompt(i, p) for i, p in enumerate(prompts)]
    engine.check_idle("open_branch")
    engine.check_weights()
    seqs = [engine.add_resident(ids, text) for text, ids in checked]
    try:
        engine.forward(seqs, hold_last=True)  # the last token stays pending: extend computes it
    except BaseException as e:
        for seq in seqs:
            engine.release_resident(seq)
        if isinstance(e, CacheFull):
            raise CacheFull(f"open_branch: {e}") from None
        raise
    return [Branch(engine, seq) for seq in seqs]


def fork_branch(engine, branch: Branch, n: int) -> list[Branch]:
    """n new branches sharing every block of `branch` (ref counts up; the shared, partly filled
    last block is copied when a child first writes into it). `branch` stays open."""
    _check_branch(engine, branch, "branch")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    kids = []
    for seq in engine.fork_resident(branch.seq, n):
        kid = Branch(engine, seq)
        kid.weight_version = branch.weight_version
        kids.append(kid)
    return kids


def release(engine, branch: Branch) -> None:
    """Free the blocks only this branch holds (the shared ones lose one reference)."""
    _check_branch(engine, branch, "branch")
    engine.release_resident(branch.seq)
    branch.released = True


def extend(engine, branches, params: SamplingParams | list[SamplingParams],
           sample_indices: list[int] | None = None) -> list[BranchStep]:
    """Grow every branch by one step (module docstring); one BranchStep per branch, in order.
    params: one SamplingParams for all, or one per branch; n must be 1 (fork for more samples).
    sample_indices: the sample index of each branch under its params' seed (default: its position
    among the branches given the same params object), to split one request over several calls."""
    branches, params, sample_indices = _check_extend(engine, branches, params, sample_indices)
    if not branches:
        return []
    engine.check_idle("extend")
    engine.check_weights()
    version = engine.block_manager.weight_version
    for i, b in enumerate(branches):
        if b.weight_version != version:
            raise RuntimeError(f"branches[{i}]: the model's weights changed after the branch was opened, so its KV "
                               f"cache is stale; release it and open a new branch")
    seqs = [b.seq for b in branches]
    starts = [s.num_tokens for s in seqs]
    _start_step(seqs, params, sample_indices)
    try:
        engine.decode(seqs)
    except BaseException as e:
        for s, start in zip(seqs, starts):
            _rollback(engine.block_manager, s, start)
        if isinstance(e, CacheFull):
            raise CacheFull(f"extend: {e}") from None
        raise
    tok = engine.tokenizer
    out = []
    for s in seqs:
        ids = s.output_token_ids
        text = "" if tok is None else tok.decode(ids, skip_special_tokens=s.params.skip_special_tokens)
        out.append(BranchStep(list(ids), text, list(s.logprobs), s.finish_reason))
    return out


def _check_extend(engine, branches, params, sample_indices) -> tuple[list, list, list | None]:
    """The arguments of `extend` as lists, checked (the engine's request checks, per branch)."""
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
        if p.n != 1:
            raise ValueError(f"params[{i}].n: expected 1 (fork the branch for more samples), got {p.n}")
        # a step is checked as it runs against the cache: a full one is rolled back, not refused
        engine.check_request(f"branches[{i}]", b.num_tokens, p, of="branch", fit=False)
    return branches, list(params), sample_indices


def _start_step(seqs: list[Sequence], params: list[SamplingParams], sample_indices: list[int] | None) -> None:
    """Make each sequence's next step a sample of its params: one group per params object (its
    seed), sample index j drawing from `sample_stream(seed, j)`; the step is the output."""
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
        seq.rng = sample_stream(group.seed, seq.index)
        # the stop checker sees this step as the sequence's output
        seq.num_prompt_tokens = seq.num_tokens
        seq.logprobs, seq.text, seq.finish_reason, seq.stop_checked_len = [], None, None, 0


def _rollback(bm, seq: Sequence, start: int) -> None:
    """Back to `start` tokens with the last one pending; blocks past the KV that is kept are freed."""
    del seq.token_ids[start:]
    bm.truncate(seq, start - 1)
    seq.num_prompt_tokens = start
    seq.logprobs, seq.text, seq.finish_reason = [], None, None
