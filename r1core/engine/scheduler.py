"""`Scheduler`: the waiting and running queues. Each step it gives every running sequence the tokens
it still has to compute (one for a decode; a chunk of the prompt for a prefill), admits waiting
sequences while the token budget and the free blocks allow (continuous batching, chunked prefill),
and when blocks run out preempts the newest running sequences by recomputation: their blocks are
freed and they go back to the front of the waiting queue with every token they sampled, to be
prefilled again later (the prefix cache usually gives their prompt blocks back).

Pinned sequences (resident branches and beams, `BlockManager.pin`) join the running queue with
their KV in place (`resume`) and leave it keeping their blocks (`park`, or `finish` when they stop).
They are never preempted: when the blocks run out for one and no unpinned sequence is left to
preempt, `schedule` raises `CacheFull`, and the caller decides (roll back, release, retry)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from r1core.engine.block_manager import BlockManager
from r1core.engine.sequence import Sequence, SequenceStatus


class CacheFull(RuntimeError):
    """The free blocks cannot hold the next tokens of a pinned sequence, and nothing can be preempted.

    `copies`: the copy-on-write (src, dst) blocks of the sequences scheduled before it in the same
    step. Their block tables already point at dst, so the engine copies them before the error goes
    on: a caller that rolls the sequences back keeps dst as the block of their earlier tokens."""

    def __init__(self, message: str, copies: list[tuple[int, int]] | None = None):
        super().__init__(message)
        self.copies = list(copies or [])


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write (src, dst) blocks

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __len__(self) -> int:
        return len(self.seqs)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int = 256, max_num_batched_tokens: int = 2048):
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        if max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {max_num_batched_tokens}")
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _seats(self, seq: Sequence) -> int:
        return seq.fork_into  # a group's prompt takes the seats of all its samples

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _preempt_newest(self, after: int) -> bool:
        """Preempt the newest unpinned running sequence behind position `after`; False if none."""
        running = self.running
        for j in range(len(running) - 1, after, -1):
            if not running[j].pinned:
                self._preempt(running.pop(j))
                return True
        return False

    def _cache_full(self, seq: Sequence, k: int, copies: list[tuple[int, int]] | None = None) -> CacheFull:
        bm = self.block_manager
        return CacheFull(
            f"the KV cache has {bm.num_free_blocks} free blocks of {bm.block_size} (of {bm.num_blocks}; "
            f"resident sequences hold {bm.num_pinned_blocks}), {bm.blocks_needed(seq, k)} needed for the next "
            f"{k} tokens of a resident sequence of {seq.num_tokens}; release branches or give the Engine more "
            f"num_blocks", copies)

    def schedule(self) -> ScheduledBatch:
        bm = self.block_manager
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens

        # 1. Running sequences, oldest first; preempt from the newest end when blocks run out.
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            k = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while bm.blocks_needed(seq, k) > bm.num_free_blocks and self._preempt_newest(i):
                pass
            if bm.blocks_needed(seq, k) > bm.num_free_blocks:
                if seq.pinned:  # nothing behind it to preempt, and it is never preempted itself
                    raise self._cache_full(seq, k, batch.copies)
                # alone and still too big for the free blocks: compute the part that fits, or wait
                k = self._tokens_that_fit(seq, k)
                if k == 0:
                    if not batch.seqs:
                        raise RuntimeError(
                            f"the KV cache ({bm.num_blocks} blocks of {bm.block_size}) cannot hold one sequence of "
                            f"{seq.num_tokens} tokens; give the Engine more num_blocks or memory")
                    # behind it only pinned sequences are left (the others went first): they go on
                    self._preempt(self.running.pop(i))
                    continue
            batch.copies += bm.reserve(seq, k)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(k)
            budget -= k
            i += 1

        # 2. Waiting sequences, while the budget, the seats and the free blocks allow.
        if not self.waiting:  # a decode step: no seats to count
            return batch
        seats = sum(self._seats(s) for s in self.running)
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            if seats + self._seats(seq) > self.max_num_seqs and self.running:
                break
            bm.match_prefix(seq)
            k = min(seq.num_tokens - seq.num_computed_tokens, budget)
            # keep a block per sample in hand so the group can start decoding after its prefill
            reserve = self._seats(seq) if self.running else 0
            if bm.blocks_needed(seq, k) + reserve > bm.num_free_blocks:
                k = self._tokens_that_fit(seq, k, reserve)
                if k == 0:
                    bm.free(seq)
                    if not self.running and not batch.seqs:
                        raise RuntimeError(
                            f"the KV cache ({bm.num_blocks} blocks of {bm.block_size}) cannot hold one sequence of "
                            f"{seq.num_tokens} tokens; give the Engine more num_blocks or memory")
                    break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            seats += self._seats(seq)
            batch.copies += bm.reserve(seq, k)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(k)
            budget -= k
        return batch

    def _tokens_that_fit(self, seq: Sequence, k: int, reserve: int = 0) -> int:
        """The most of the next k tokens of seq whose blocks fit in the free blocks less `reserve`."""
        bm = self.block_manager
        cow = bm.blocks_needed(seq, 0)  # 1 if the block of its next token is shared
        available = bm.num_free_blocks - reserve - cow
        if available < 0:
            return 0
        room = (len(seq.block_table) + available) * bm.block_size - seq.num_computed_tokens
        return max(0, min(k, room))

    def finish(self, seq: Sequence) -> None:
        """seq stopped: it leaves the running queue; its blocks are freed unless it is pinned."""
        self.running.remove(seq)
        if seq.pinned:
            seq.status = SequenceStatus.RESIDENT
            return
        seq.status = SequenceStatus.FINISHED
        self.block_manager.free(seq)

    def resume(self, seqs: list[Sequence]) -> None:
        """Pinned sequences with their KV in place join the running queue (at its end), each with
        at least one token to compute."""
        for seq in seqs:
            if not seq.pinned:
                raise ValueError(f"resume: sequence {seq.seq_id} is not pinned (only resident sequences resume)")
            if seq.num_computed_tokens >= seq.num_tokens:
                raise ValueError(f"resume: sequence {seq.seq_id} has no token left to compute")
            seq.status = SequenceStatus.RUNNING
        self.running += seqs

    def park(self, seqs: list[Sequence]) -> None:
        """Pinned sequences leave the running queue keeping their blocks (those not in it are skipped)."""
        if seqs == self.running:  # all of them (identity: sequences define no __eq__)
            self.running = []
        else:
            gone = set(map(id, seqs))
            self.running = [s for s in self.running if id(s) not in gone]
        for seq in seqs:
            seq.status = SequenceStatus.RESIDENT

    def add_forked(self, parent: Sequence, children: list[Sequence]) -> None:
        """Children forked from a running parent run right behind it."""
        pos = self.running.index(parent) + 1
        for child in children:
            child.status = SequenceStatus.RUNNING
        self.running[pos:pos] = children
