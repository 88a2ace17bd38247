"""`ModelRunner`: the tensors. Owns the paged KV cache (one [num_blocks, block_size, Hkv, D] pair per
layer), turns a scheduled batch into packed model inputs and attention metadata, runs the model's
own modules through the registered attention function, and returns the logits of the last token of
each sequence whose tokens are all computed (lm_head on those rows only)."""

from __future__ import annotations

import torch
from torch import nn

from r1core.engine.attention import AttentionMetadata, CascadeMetadata, TreeMetadata
from r1core.engine.fast_forward import LeanForward, unsupported_reason
from r1core.engine.scheduler import ScheduledBatch
from r1kernels import copy_blocks as _copy_blocks


def _available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def kv_geometry(config) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) of a transformers decoder config."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return cfg.num_hidden_layers, kv_heads, head_dim


def _pad_tables(tables: list[list[int]], device) -> torch.Tensor:
    width = max(1, max(map(len, tables)))
    return torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=device)  # [S, width]


class ModelRunner:
    DEFAULT_MEMORY_FRACTION = 0.2

    def __init__(self, model, block_size: int, num_blocks: int | None = None, memory_budget_bytes: int | None = None,
                 cache_dtype: torch.dtype | None = None, cascade: bool | str = "auto", cascade_min_saved_tokens: int = 4096,
                 max_useful_blocks: int | None = None, fast_forward: bool | str = "auto",
                 tree_attention: bool | str = "auto"):
        if cascade not in (True, False, "auto"):
            raise ValueError(f"cascade must be True, False or 'auto', got {cascade!r}")
        if tree_attention not in (True, False, "auto"):
            raise ValueError(f"tree_attention must be True, False or 'auto', got {tree_attention!r}")
        if fast_forward not in (True, False, "auto"):
            raise ValueError(f"fast_forward must be True, False or 'auto', got {fast_forward!r}")
        self.fast_forward = fast_forward
        self.lean = None
        # decode-step projections through r1kernels.skinny_linear (float32 CPU; equal to BLAS to
        # rounding, not bitwise): False keeps every matmul on F.linear
        self.skinny_linear = True
        # with it, each decoder layer of a decode step in two C++ calls around attention
        # (r1kernels.rmsnorm_qkv_rope, r1kernels.oproj_mlp; SwiGLU Llama-family models)
        self.fused_layers = True
        self.cascade = cascade
        self.cascade_min_saved_tokens = cascade_min_saved_tokens
        self.num_cascade_steps = 0
        self.tree_attention = tree_attention
        # the "auto" rule's thresholds (choose_trees)
        self.tree_min_tokens = 2
        self.tree_min_rows = 8
        self.tree_min_saved_tokens = 768
        self.num_tree_steps = 0
        self.model = model
        self.base = getattr(model, model.base_model_prefix)
        self.lm_head = model.get_output_embeddings()
        self.block_size = block_size
        param = next(model.parameters())
        self.device = param.device
        self.dtype = cache_dtype or param.dtype
        layers, kv_heads, head_dim = kv_geometry(model.config)
        self.num_layers = layers
        self.block_bytes = 2 * layers * block_size * kv_heads * head_dim * torch.empty(0, dtype=self.dtype).element_size()
        if num_blocks is None:
            if memory_budget_bytes is None:
                if self.device.type == "cuda":
                    memory_budget_bytes = int(torch.cuda.mem_get_info(self.device)[0] * self.DEFAULT_MEMORY_FRACTION)
                else:
                    memory_budget_bytes = int(_available_memory_bytes() * self.DEFAULT_MEMORY_FRACTION)
            num_blocks = memory_budget_bytes // self.block_bytes
            if max_useful_blocks is not None:  # more than every seat at full length can never be used
                num_blocks = min(num_blocks, max_useful_blocks)
        if num_blocks < 1:
            raise ValueError(f"the KV-cache memory budget holds no block of {self.block_bytes} bytes")
        self.num_blocks = int(num_blocks)
        # torch.empty: pages are touched only as blocks get used; the block manager reuses low blocks first
        self.kv_cache = torch.empty(layers, 2, self.num_blocks, block_size, kv_heads, head_dim, dtype=self.dtype, device=self.device)
        self.kv_caches = [(self.kv_cache[i, 0], self.kv_cache[i, 1]) for i in range(layers)]

    def select_forward(self) -> None:
        """Use the lean forward (r1core.engine.fast_forward) where it is exact for the model as it is
        now (hooks or wrapped layers may have been added since the last call), else the modules'."""
        self.lean = None
        if self.fast_forward is False:
            return
        reason = unsupported_reason(self.base)
        if reason is None:
            self.lean = LeanForward(self.base, skinny=self.skinny_linear, fused=self.fused_layers)
            self._lean_linear = self.lean.linear
        elif self.fast_forward is True:
            raise ValueError(f"fast_forward=True, but the lean forward does not cover this model: {reason}")

    @property
    def kv_cache_bytes(self) -> int:
        return self.kv_cache.numel() * self.kv_cache.element_size()

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        mapping = torch.tensor(copies, dtype=torch.int64, device=self.device)  # [M, 2]
        for k_cache, v_cache in self.kv_caches:
            _copy_blocks(k_cache, v_cache, mapping)

    def prepare(self, batch: ScheduledBatch, cascade_groups: list[tuple[int, int, int]] | None = None,
                trees: list[tuple[int, int, int, bool]] | None = None):
        bs = self.block_size
        input_ids, positions, slots, last_rows = [], [], [], []
        seq_lens, cu = [], [0]
        for seq, k in zip(batch.seqs, batch.num_new_tokens):
            start = seq.num_computed_tokens
            end = start + k
            table = seq.block_table
            if k == 1:
                input_ids.append(seq.token_ids[start])
                positions.append(start)
                slots.append(table[start // bs] * bs + start % bs)
            else:
                input_ids += seq.token_ids[start:end]
                positions += range(start, end)
                slots += [table[p // bs] * bs + p % bs for p in range(start, end)]
            seq_lens.append(end)
            cu.append(cu[-1] + k)
            if end == seq.num_tokens:
                last_rows.append(cu[-1] - 1)
        tables = [seq.block_table for seq in batch.seqs]
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            block_tables=_pad_tables(tables, dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=dev),
            kv_caches=self.kv_caches,
            cascade=self._cascade(batch, seq_lens, cascade_groups) if cascade_groups is not None else None,
            tree=self._tree(batch, trees) if trees is not None else None,
        )
        ids = torch.tensor(input_ids, dtype=torch.long, device=dev)[None]  # [1, T]
        pos = torch.tensor(positions, dtype=torch.long, device=dev)[None]  # [1, T]
        return ids, pos, meta, last_rows

    def shared_prefix_tokens(self, batch: ScheduledBatch) -> list[tuple[int, int, int]]:
        """(first row, rows, shared full blocks) for each run of consecutive rows of one request in a
        decode-only batch; the shared blocks are the leading blocks all its rows have in common."""
        return [(first, rows, self._shared_blocks(batch.seqs[first : first + rows])) for first, rows in self.request_runs(batch)]

    def _shared_blocks(self, seqs) -> int:
        """The leading blocks every one of `seqs` holds, wholly below each one's new tokens (full,
        never written in this step)."""
        if len(seqs) < 2:
            return 0
        lead = seqs[0].block_table
        limit = min(s.num_computed_tokens for s in seqs) // self.block_size
        shared = 0
        while shared < limit and all(s.block_table[shared] == lead[shared] for s in seqs[1:]):
            shared += 1
        return shared

    def _cascade(self, batch: ScheduledBatch, seq_lens: list[int], groups) -> CascadeMetadata:
        bs = self.block_size
        dev = self.device
        prefix_tables, prefix_lens, prefix_cu = [], [], [0]
        suffix_tables, suffix_lens = [], []
        for first, rows, shared in groups:
            prefix_tables.append(batch.seqs[first].block_table[:shared])
            prefix_lens.append(shared * bs)
            prefix_cu.append(prefix_cu[-1] + rows)
            for r in range(first, first + rows):
                suffix_tables.append(batch.seqs[r].block_table[shared:])
                suffix_lens.append(seq_lens[r] - shared * bs)
        return CascadeMetadata(
            prefix_block_tables=_pad_tables(prefix_tables, dev),
            prefix_lens=torch.tensor(prefix_lens, dtype=torch.int32, device=dev),
            prefix_cu_seqlens_q=torch.tensor(prefix_cu, dtype=torch.int32, device=dev),
            suffix_block_tables=_pad_tables(suffix_tables, dev),
            suffix_lens=torch.tensor(suffix_lens, dtype=torch.int32, device=dev),
        )

    def cascade_groups(self, batch: ScheduledBatch) -> list[tuple[int, int, int]] | None:
        """The (first row, rows, shared blocks) groups for shared-prefix attention, or None for plain
        attention. Used for decode-only batches, when the prefix reads it saves pay for its
        second attention call and the merge (`cascade`: True / False / "auto"). Measured per layer
        on the C++ kernels (Hq 8, Hkv 4, D 64, 64 own tokens per sample, 10th-percentile times):
        prefix 512 x G 16 (7680 tokens saved) 1.2-1.3x faster, 2048 x 16 1.2x, 2048 x 4 (6144)
        1.2x, 512 x 4 (1536) even, 64 x 16 (960) 0.75-0.85x; with Hq 4, Hkv 2 even at 512 x 16.
        Hence "auto" needs `cascade_min_saved_tokens` (4096) saved tokens in the step."""
        if self.cascade is False or len(batch.seqs) < 2 or batch.num_tokens != len(batch.seqs):
            return None
        groups = self.shared_prefix_tokens(batch)
        saved = sum((rows - 1) * shared for _, rows, shared in groups) * self.block_size
        return groups if self.cascade is True or saved >= self.cascade_min_saved_tokens else None

    @staticmethod
    def request_runs(batch: ScheduledBatch) -> list[tuple[int, int]]:
        """(first row, rows) of each run of consecutive rows of one request in the batch."""
        runs = []
        seqs = batch.seqs
        i = 0
        while i < len(seqs):
            j = i + 1
            while j < len(seqs) and seqs[j].group is seqs[i].group:
                j += 1
            runs.append((i, j - i))
            i = j
        return runs

    def tree_prefix(self, batch: ScheduledBatch, first: int, rows: int) -> tuple[int, bool]:
        """(prefix tokens, whole) of one run's tree: the cached tokens all its rows share, read once
        as the tree's prefix. whole: every row's cached tokens are that prefix (forks whose new
        tokens are all they differ in: the same full blocks, the same tokens in the partly filled
        last one, so the same KV whichever row's blocks it is read from); otherwise the prefix is
        their common full blocks and each row has own cached tokens past it."""
        bs = self.block_size
        seqs = batch.seqs[first : first + rows]
        lead = seqs[0]
        c = lead.num_computed_tokens
        full = c // bs
        if all(s.num_computed_tokens == c and s.block_table[:full] == lead.block_table[:full]
               and s.token_ids[full * bs : c] == lead.token_ids[full * bs : c] for s in seqs[1:]):
            return c, True
        return self._shared_blocks(seqs) * bs, False

    def _tree(self, batch: ScheduledBatch, trees: list[tuple[int, int, int, bool]]) -> TreeMetadata:
        bs = self.block_size
        dev = self.device
        parents, cu, prefix_tables, prefix_lens, own_tables, own_lens = [], [0], [], [], [], []
        for first, rows, prefix, _ in trees:
            nodes = 0
            for r in range(first, first + rows):
                seq, k = batch.seqs[r], batch.num_new_tokens[r]
                parents += [-1] + list(range(nodes, nodes + k - 1))  # a chain off the prefix
                nodes += k
                own_tables.append(seq.block_table[prefix // bs :])
                own_lens.append(seq.num_computed_tokens - prefix)
            cu.append(cu[-1] + nodes)
            prefix_tables.append(batch.seqs[first].block_table[: -(-prefix // bs)])
            prefix_lens.append(prefix)
        i32 = dict(dtype=torch.int32, device=dev)
        own = any(own_lens)
        return TreeMetadata(
            parents=torch.tensor(parents, **i32), cu_nodes=torch.tensor(cu, **i32),
            prefix_block_tables=_pad_tables(prefix_tables, dev), prefix_lens=torch.tensor(prefix_lens, **i32),
            own_block_tables=_pad_tables(own_tables, dev) if own else None,
            own_lens=torch.tensor(own_lens, **i32) if own else None,
        )

    def choose_trees(self, batch: ScheduledBatch) -> list[tuple[int, int, int, bool]] | None:
        """(first row, rows, prefix tokens, whole) of each request's run of rows (`request_runs`,
        `tree_prefix`) for tree attention, or None for paged (or cascade) attention
        (`tree_attention`: True / False / "auto"). "auto" takes them where they measured faster:
        every tree of several rows is forks whose new tokens are all they differ in (no own pass,
        no merge), each with at least `tree_min_tokens` new tokens per row (or `tree_min_rows`
        rows), and the step reads at least `tree_min_saved_tokens` prefix tokens once instead of
        once per row. Measured per layer on the C++ kernels (Hq 8, Hkv 4, D 64, 10th-percentile
        times, tree against paged): prefix 512 x 4 rows x 2 tokens 1.26x, x 8 tokens 2.1x; 512 x 8
        x 1 token 1.4x; 128 x 8 x 2 tokens 1.36x; but 512 x 2 x 2 (512 saved) 0.88x, 512 x 4 x 1
        token 0.92x, 128 x 4 x 2 (384 saved) even. Decode steps of diverged rows stay with paged or
        cascade attention, which already read a shared prefix once."""
        if self.tree_attention is False:
            return None
        runs = self.request_runs(batch)
        if self.tree_attention == "auto":  # the cheap conditions first: this runs before every step
            many = [(first, rows) for first, rows in runs if rows > 1]
            if not many or any(rows < self.tree_min_rows and min(batch.num_new_tokens[first : first + rows]) < self.tree_min_tokens
                               for first, rows in many):
                return None
        trees = [(first, rows, *self.tree_prefix(batch, first, rows)) for first, rows in runs]
        if self.tree_attention is True:
            return trees
        many = [t for t in trees if t[1] > 1]
        if not all(whole for *_, whole in many):
            return None
        saved = sum((rows - 1) * prefix for _, rows, prefix, _ in many)
        return trees if saved >= self.tree_min_saved_tokens else None

    def run(self, batch: ScheduledBatch) -> torch.Tensor:
        """Logits [R, V] (float32) of the last token of each sequence whose tokens are now all computed."""
        if batch.copies:
            self.copy_blocks(batch.copies)
        trees = self.choose_trees(batch) if len(batch.seqs) > 1 else None
        groups = self.cascade_groups(batch) if trees is None else None
        self.num_cascade_steps += groups is not None
        self.num_tree_steps += trees is not None
        ids, pos, meta, last_rows = self.prepare(batch, groups, trees)
        if self.lean is not None:
            hidden = self.lean(ids, pos, meta)[0]  # [T, H]
        else:
            hidden = self.base(input_ids=ids, position_ids=pos, use_cache=False, r1_attn=meta).last_hidden_state[0]
        if not last_rows:
            return hidden.new_empty(0, self.lm_head.out_features, dtype=torch.float32)
        # a decode step samples every row: no gather (last_rows is increasing, so all rows means in order)
        rows = hidden if len(last_rows) == hidden.shape[0] else hidden[torch.tensor(last_rows, device=self.device)]  # [R, H]
        head = self.lm_head
        if self.lean is not None and type(head) is nn.Linear and not (head._forward_hooks or head._forward_pre_hooks):
            return self._lean_linear(rows, head.weight, head.bias).float()
        return head(rows).float()  # [R, V]
