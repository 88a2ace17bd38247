"""Scheduler: token budget and chunked prefill, admission of waiting requests, the seats of a
group, preemption by recomputation, newest first, and pinned (resident) sequences, which are never
preempted. No model: steps are simulated."""

import pytest

from r1core.engine.block_manager import BlockManager
from r1core.engine.sampling_params import SamplingParams
from r1core.engine.scheduler import CacheFull, Scheduler
from r1core.engine.sequence import Sequence, SequenceGroup, SequenceStatus


def make_seq(n_tokens, seq_id, fork_into=1):
    group = SequenceGroup(seq_id, None, list(range(n_tokens)), SamplingParams(n=fork_into), seed=0)
    seq = Sequence(seq_id, group, 0, list(range(n_tokens)))
    seq.fork_into = fork_into
    return seq


def run_step(sched, batch):
    """What the engine does after the model ran: commit, then append a sampled token to done seqs."""
    for seq, k in zip(batch.seqs, batch.num_new_tokens):
        sched.block_manager.commit(seq, k)
        if seq.num_computed_tokens == seq.num_tokens and seq.status is SequenceStatus.RUNNING:
            seq.token_ids.append(1)


def test_chunked_prefill_respects_budget():
    sched = Scheduler(BlockManager(64, 4), max_num_batched_tokens=8)
    a, b = make_seq(13, 0), make_seq(3, 1)
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    assert batch.seqs == [a] and batch.num_new_tokens == [8]
    run_step(sched, batch)
    batch = sched.schedule()  # a's last 5 tokens, then b joins with the 3 left
    assert batch.seqs == [a, b] and batch.num_new_tokens == [5, 3]
    run_step(sched, batch)
    batch = sched.schedule()
    assert batch.num_new_tokens == [1, 1]  # both decode


def test_max_num_seqs_counts_a_groups_samples():
    sched = Scheduler(BlockManager(64, 4), max_num_seqs=4)
    a, b = make_seq(3, 0, fork_into=3), make_seq(3, 1, fork_into=2)
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    assert batch.seqs == [a]  # b's 2 samples would make 5 > 4


def test_preemption_newest_first_and_recompute():
    bm = BlockManager(6, 2)
    sched = Scheduler(bm)
    seqs = [make_seq(3, i) for i in range(3)]  # 2 blocks each: all 6 blocks
    for s in seqs:
        sched.add(s)
    batch = sched.schedule()
    assert batch.seqs == seqs[:2] or batch.seqs == seqs  # admission keeps a block per sample in hand
    run_step(sched, batch)
    while sched.waiting:
        batch = sched.schedule()
        run_step(sched, batch)
    # the sequences grow until they need a third block: the newest are preempted for the oldest
    for _ in range(4):
        batch = sched.schedule()
        assert batch.seqs[0] is seqs[0]
        if sched.num_preemptions:
            break
        run_step(sched, batch)
    assert sched.num_preemptions >= 1
    assert seqs[2] in sched.waiting and seqs[0] in sched.running
    preempted = sched.waiting[0]
    assert preempted.status is SequenceStatus.WAITING and preempted.block_table == [] and preempted.num_computed_tokens == 0
    assert preempted.num_tokens > 3  # it keeps its sampled tokens and recomputes all of them later


def test_finish_frees_blocks():
    bm = BlockManager(8, 4)
    sched = Scheduler(bm)
    a = make_seq(5, 0)
    sched.add(a)
    run_step(sched, sched.schedule())
    assert bm.num_used_blocks == 2
    sched.finish(a)
    assert bm.num_used_blocks == 0 and not sched.has_unfinished()


def resident(bm, n_tokens, seq_id):
    """A pinned sequence with the KV of all its tokens but the last (a branch between calls)."""
    seq = make_seq(n_tokens, seq_id)
    bm.pin(seq)
    bm.reserve(seq, n_tokens - 1)
    bm.commit(seq, n_tokens - 1)
    return seq


def test_pinned_sequences_are_never_preempted():
    bm = BlockManager(7, 2, enable_prefix_caching=False)
    sched = Scheduler(bm)
    a, b = make_seq(3, 0), make_seq(3, 1)
    for s in (a, b):
        sched.add(s)
    run_step(sched, sched.schedule())
    p = resident(bm, 3, 2)  # 1 block; the newest in the running queue once resumed
    sched.resume([p])
    assert sched.running == [a, b, p] and p.status is SequenceStatus.RUNNING
    # everyone grows until the blocks run out: the unpinned ones are preempted, p never; once nothing
    # unpinned is left behind it, p short of blocks is an error
    computed = p.num_computed_tokens
    with pytest.raises(CacheFull, match="free blocks"):
        for _ in range(20):
            run_step(sched, sched.schedule())
            assert p in sched.running and p.num_computed_tokens == computed + 1  # its KV only grows
            computed = p.num_computed_tokens
    assert sched.num_preemptions >= 1
    assert p in sched.running and p.pinned and len(p.block_table) == -(-p.num_computed_tokens // 2)


def test_pinned_finish_keeps_blocks_and_park_resume():
    bm = BlockManager(8, 4)
    sched = Scheduler(bm)
    p = resident(bm, 6, 0)
    with pytest.raises(ValueError, match="not pinned"):
        sched.resume([make_seq(3, 1)])
    sched.resume([p])
    run_step(sched, sched.schedule())
    used = bm.num_used_blocks
    sched.finish(p)  # a resident sequence stops: it leaves the queue and keeps its KV
    assert p.status is SequenceStatus.RESIDENT and not sched.has_unfinished()
    assert bm.num_used_blocks == used and p.num_computed_tokens == p.num_tokens - 1
    sched.resume([p])
    sched.park([p])
    assert p.status is SequenceStatus.RESIDENT and not sched.running and bm.num_used_blocks == used
    bm.reserve(p, 1)
    bm.commit(p, 1)  # its pending token computed: nothing left for a step
    with pytest.raises(ValueError, match="no token left"):
        sched.resume([p])
