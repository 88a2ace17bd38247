"""BlockManager: ref counts, fork sharing every block (the partly filled one included),
copy-on-write, freeing, the prefix cache and its weight version. No tensors, no model."""

import pytest

from r1core.engine.block_manager import BlockManager
from r1core.engine.sampling_params import SamplingParams
from r1core.engine.sequence import Sequence, SequenceGroup


def make_seq(tokens, seq_id=0, index=0):
    group = SequenceGroup(seq_id, None, list(tokens), SamplingParams(), seed=0)
    return Sequence(seq_id, group, index, tokens)


def compute(bm, seq, k=None):
    k = seq.num_tokens - seq.num_computed_tokens if k is None else k
    copies = bm.reserve(seq, k)
    bm.commit(seq, k)
    return copies


def test_allocate_free_counts():
    bm = BlockManager(10, 4)
    seq = make_seq(range(10))
    assert bm.blocks_needed(seq, 10) == 3
    compute(bm, seq)
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 7
    assert all(bm.ref_count(b) == 1 for b in seq.block_table)
    bm.free(seq)
    assert bm.num_free_blocks == 10 and seq.block_table == [] and seq.num_computed_tokens == 0


@pytest.mark.parametrize("prompt_len", [1, 7, 8, 9])
def test_fork_shares_all_blocks_then_copy_on_write(prompt_len):
    bs, n = 4, 5
    bm = BlockManager(32, bs)
    parent = make_seq(range(prompt_len))
    compute(bm, parent)
    children = [make_seq(range(prompt_len), seq_id=i, index=i) for i in range(1, n)]
    for c in children:
        bm.fork(parent, c)
    blocks = -(-prompt_len // bs)
    assert bm.num_used_blocks == blocks
    assert all(c.block_table == parent.block_table for c in children)
    assert all(bm.ref_count(b) == n for b in parent.block_table)
    partial = prompt_len % bs != 0
    copies = []
    for s in [parent, *children]:
        s.token_ids.append(100 + s.seq_id)
        copies += compute(bm, s, 1)
    # each writer of the shared, partly filled block copies it, except the last one, which owns it
    assert len(copies) == (n - 1 if partial else 0)
    assert all(src == parent.block_table[-1] or src in {c[0] for c in copies} for src, _ in copies)
    assert bm.num_used_blocks == (blocks - 1 + n if partial else blocks + n)
    full = prompt_len // bs
    assert all(bm.ref_count(b) == n for b in parent.block_table[:full])
    last = {s.block_table[-1] for s in [parent, *children]}
    assert len(last) == n and all(bm.ref_count(b) == 1 for b in last)
    for s in [parent, *children]:
        bm.free(s)
    assert bm.num_free_blocks == 32


def test_blocks_needed_counts_copy_on_write():
    bm = BlockManager(8, 4)
    a = make_seq(range(6))
    compute(bm, a)
    b = make_seq(range(6), seq_id=1, index=1)
    bm.fork(a, b)
    b.token_ids.append(9)
    assert bm.blocks_needed(b, 1) == 1  # the shared partial block must be copied
    b.token_ids += [9, 9, 9]
    assert bm.blocks_needed(b, 4) == 2  # copy + a new block


def test_prefix_cache_hits_and_weight_version():
    bs = 4
    bm = BlockManager(16, bs)
    a = make_seq(list(range(13)))
    compute(bm, a)
    a_blocks = list(a.block_table)
    bm.free(a)
    b = make_seq(list(range(13)) + [50], seq_id=1)
    assert bm.match_prefix(b) == 3  # full blocks only
    assert b.block_table == a_blocks[:3] and b.num_computed_tokens == 12
    assert all(bm.ref_count(x) == 1 for x in b.block_table)
    compute(bm, b)
    bm.free(b)
    # a prompt of exactly 3 blocks leaves its last token to compute: 2 blocks reused
    c = make_seq(list(range(12)), seq_id=2)
    assert bm.match_prefix(c) == 2 and c.num_computed_tokens == 8
    bm.free(c)
    # a different token inside a block stops the match there
    d = make_seq(list(range(5)) + [99] + list(range(6, 13)), seq_id=3)
    assert bm.match_prefix(d) == 1
    bm.free(d)
    bm.bump_weight_version()
    e = make_seq(list(range(13)), seq_id=4)
    assert bm.match_prefix(e) == 0 and e.block_table == []


def test_cached_blocks_are_reused_last():
    bm = BlockManager(6, 2)
    a = make_seq(range(4))
    compute(bm, a)  # 2 full, hashed blocks
    cached = set(a.block_table)
    bm.free(a)
    b = make_seq([7, 7, 7], seq_id=1)
    compute(bm, b)
    assert not cached & set(b.block_table)  # uncached free blocks went first
    bm.free(b)
    c = make_seq(range(5), seq_id=2)
    assert bm.match_prefix(c) == 2  # still cached


def test_shared_blocks_keep_their_cache_entry_until_last_free():
    bm = BlockManager(8, 2)
    a = make_seq(range(5))
    compute(bm, a)
    b = make_seq(range(5), seq_id=1, index=1)
    bm.fork(a, b)
    bm.free(a)
    assert all(bm.ref_count(x) == 1 for x in b.block_table)
    bm.free(b)
    assert bm.num_free_blocks == 8


def test_weight_version_bump_reuses_the_formerly_cached_blocks_first():
    bm = BlockManager(16, 2)
    a = make_seq(range(6))
    compute(bm, a)
    used = set(a.block_table)
    bm.free(a)
    bm.bump_weight_version()
    b = make_seq([9] * 6, seq_id=1)
    compute(bm, b)
    assert set(b.block_table) == used  # touched pages are reused before fresh ones


def test_pinned_sequences_and_their_blocks():
    bm = BlockManager(16, 4)
    a = make_seq(list(range(10)), 0)  # 3 blocks, the last partly filled
    bm.pin(a)
    compute(bm, a)
    b = make_seq([], 1)
    bm.fork(a, b)
    bm.pin(b)
    free = make_seq(list(range(5)), 2)  # not pinned: its blocks are not counted
    compute(bm, free)
    assert a.pinned and b.pinned and not free.pinned and bm.num_pinned == 2
    assert bm.num_pinned_blocks == 3  # shared blocks once
    b.token_ids.append(7)
    compute(bm, b)  # b copies the shared last block and writes into it
    assert bm.num_pinned_blocks == 4
    bm.release_pinned(a)
    assert not a.pinned and a.block_table == [] and bm.num_pinned == 1 and bm.num_pinned_blocks == 3
    bm.release_pinned(b)
    assert bm.num_pinned_blocks == 0 and bm.num_used_blocks == 2  # only the unpinned sequence's


def test_truncate_frees_the_blocks_past_the_kept_kv():
    bm = BlockManager(16, 4, enable_prefix_caching=True)
    a = make_seq(list(range(14)), 0)
    compute(bm, a)  # 4 blocks, 3 full and hashed
    kept = a.block_table[:2]
    shared = make_seq([], 1)
    bm.fork(a, shared)
    bm.truncate(a, 6)  # the KV of 6 tokens: 2 blocks, the second partly filled
    assert a.num_computed_tokens == 6 and a.block_table == kept and len(a.block_hashes) == 1
    assert bm.num_used_blocks == 4 and all(bm.ref_count(b) == 1 for b in shared.block_table[2:])
    bm.truncate(a, 9)  # never more than it has
    assert a.num_computed_tokens == 6
    with pytest.raises(ValueError, match="num_computed_tokens"):
        bm.truncate(a, -1)
    bm.free(shared)
    bm.free(a)
    assert bm.num_used_blocks == 0
