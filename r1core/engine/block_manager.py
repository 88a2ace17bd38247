"""`BlockManager`: which KV-cache blocks each sequence owns. Ref-counted blocks, a free list, fork
(children share every block of the parent, the partly filled last one included), copy-on-write
when a sequence writes into a shared block, and a prefix cache across requests keyed by a hash
chain over full blocks that includes a weight version. Holds no tensors: the copies it asks for
are carried out by the model runner (`copy_blocks`).

Pinned sequences (resident branches and beams) keep their blocks between the engine's calls: the
block manager knows them, so a request can be checked against the blocks they leave
(`num_pinned_blocks`)."""

from __future__ import annotations

from collections import OrderedDict

from r1core.engine.sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] | None = None


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Free blocks in reuse order. Blocks without a cached hash go to the front, cached ones to the
        # back, so cached prefixes live longest and the pages of a big, lazily allocated cache are
        # touched only as far as the workload needs.
        self._free_ids: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.hash_to_block: dict[int, int] = {}
        self.weight_version = 0
        self.prefix_hits = 0  # blocks served from the prefix cache, for tests and stats
        self.peak_used_blocks = 0
        self.pinned: dict[int, Sequence] = {}  # seq id -> pinned sequence

    # --- counts -------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free_ids)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free_ids)

    def ref_count(self, block_id: int) -> int:
        return self.blocks[block_id].ref_count

    @property
    def num_pinned(self) -> int:
        return len(self.pinned)

    @property
    def num_pinned_blocks(self) -> int:
        """The blocks pinned sequences hold (shared ones once): no request can have them."""
        return len({b for seq in self.pinned.values() for b in seq.block_table})

    # --- block life ---------------------------------------------------------------------------
    def _take(self) -> int:
        block_id, _ = self._free_ids.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:
            if self.hash_to_block.get(block.hash) == block_id:
                del self.hash_to_block[block.hash]
            block.hash = block.token_ids = None
        block.ref_count = 1
        used = self.num_blocks - len(self._free_ids)
        if used > self.peak_used_blocks:
            self.peak_used_blocks = used
        return block_id

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self._free_ids[block_id] = None
            if block.hash is None:
                self._free_ids.move_to_end(block_id, last=False)

    def _block_hash(self, prev: int | None, tokens: tuple[int, ...]) -> int:
        return hash((self.weight_version, prev, tokens))

    # --- sequences ----------------------------------------------------------------------------
    def match_prefix(self, seq: Sequence) -> int:
        """Give a sequence with no blocks the cached blocks of its longest cached prefix of full
        blocks, leaving at least its last token to compute (its logits are needed). Returns the
        number of blocks reused."""
        assert not seq.block_table and seq.num_computed_tokens == 0
        if not self.enable_prefix_caching:
            return 0
        bs = self.block_size
        prev = None
        for j in range((seq.num_tokens - 1) // bs):
            tokens = tuple(seq.token_ids[j * bs : (j + 1) * bs])
            h = self._block_hash(prev, tokens)
            block_id = self.hash_to_block.get(h)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._free_ids[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
            seq.block_hashes.append(h)
            prev = h
        used = self.num_used_blocks
        if used > self.peak_used_blocks:
            self.peak_used_blocks = used
        seq.num_computed_tokens = len(seq.block_table) * bs
        self.prefix_hits += len(seq.block_table)
        return len(seq.block_table)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Free blocks `reserve(seq, num_new_tokens)` would take: new blocks plus a copy-on-write one."""
        bs = self.block_size
        end = seq.num_computed_tokens + num_new_tokens
        table = seq.block_table
        need = max(0, (end + bs - 1) // bs - len(table))
        i = seq.num_computed_tokens // bs
        if i < len(table) and self.blocks[table[i]].ref_count > 1:
            need += 1
        return need

    def reserve(self, seq: Sequence, num_new_tokens: int) -> list[tuple[int, int]]:
        """Make room for the next `num_new_tokens` tokens of seq; returns the (src, dst) block copies
        that copy-on-write needs before they are written. The caller checked `blocks_needed`."""
        bs = self.block_size
        table = seq.block_table
        copies = []
        i = seq.num_computed_tokens // bs
        if i < len(table) and self.blocks[table[i]].ref_count > 1:
            # Only the block holding the first new token can be shared: later ones are new, and the
            # shared ones before it are full and never written again.
            src = table[i]
            dst = self._take()
            self.blocks[src].ref_count -= 1
            table[i] = dst
            copies.append((src, dst))
        end = seq.num_computed_tokens + num_new_tokens
        while len(table) * bs < end:
            table.append(self._take())
        return copies

    def commit(self, seq: Sequence, num_new_tokens: int) -> None:
        """Record that the KV of `num_new_tokens` more tokens is written; cache the full blocks."""
        seq.num_computed_tokens += num_new_tokens
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        hashes = seq.block_hashes
        while len(hashes) < seq.num_computed_tokens // bs:
            j = len(hashes)
            tokens = tuple(seq.token_ids[j * bs : (j + 1) * bs])
            h = self._block_hash(hashes[-1] if hashes else None, tokens)
            hashes.append(h)
            block = self.blocks[seq.block_table[j]]
            if block.hash is None:
                block.hash, block.token_ids = h, tokens
                self.hash_to_block.setdefault(h, block.block_id)

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """child shares every block of parent (ref counts up), the partly filled last one included."""
        assert not child.block_table
        for block_id in parent.block_table:
            self.blocks[block_id].ref_count += 1
        child.block_table = list(parent.block_table)
        child.block_hashes = list(parent.block_hashes)
        child.num_computed_tokens = parent.num_computed_tokens

    def free(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            self._release(block_id)
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0

    def truncate(self, seq: Sequence, num_computed_tokens: int) -> None:
        """Keep the KV of seq's first `num_computed_tokens` tokens (at most those it has): the blocks
        past them lose this sequence's reference, and hashes of blocks no longer full are dropped."""
        if num_computed_tokens < 0:
            raise ValueError(f"num_computed_tokens must be >= 0, got {num_computed_tokens}")
        seq.num_computed_tokens = min(seq.num_computed_tokens, num_computed_tokens)
        bs = self.block_size
        keep = -(-seq.num_computed_tokens // bs)
        for block_id in reversed(seq.block_table[keep:]):
            self._release(block_id)
        del seq.block_table[keep:]
        del seq.block_hashes[seq.num_computed_tokens // bs :]

    # --- pinned sequences -----------------------------------------------------------------------
    def pin(self, seq: Sequence) -> None:
        """seq keeps its blocks between calls and is never preempted."""
        seq.pinned = True
        self.pinned[seq.seq_id] = seq

    def release_pinned(self, seq: Sequence) -> None:
        """Free a pinned sequence's blocks (the shared ones lose one reference) and unpin it."""
        self.free(seq)
        seq.pinned = False
        self.pinned.pop(seq.seq_id, None)

    def bump_weight_version(self) -> None:
        """The model's weights changed: no cached block may be reused any more. The free blocks that
        held cached prefixes move to the front of the free list (their pages are touched already)."""
        self.weight_version += 1
        self.hash_to_block.clear()
        for block in self.blocks:
            if block.hash is not None:
                block.hash = block.token_ids = None
                if block.ref_count == 0:
                    self._free_ids.move_to_end(block.block_id, last=False)
