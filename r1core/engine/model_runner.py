"""`ModelRunner`: the tensors. Owns the paged KV cache (one [num_blocks, block_size, Hkv, D] pair per
layer), turns a scheduled batch into packed model inputs and attention metadata, runs the model's
own modules through the registered attention function, and returns the logits of the last token of
each sequence whose tokens are all computed (lm_head on those rows only)."""

from __future__ import annotations

import torch
from torch import nn

from r1core.engine.attention import AttentionMetadata, CascadeMetadata
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
                 max_useful_blocks: int | None = None, fast_forward: bool | str = "auto"):
        if cascade not in (True, False, "auto"):
            raise ValueError(f"cascade must be True, False or 'auto', got {cascade!r}")
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

    def prepare(self, batch: ScheduledBatch, cascade_groups: list[tuple[int, int, int]] | None = None):
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
        )
        ids = torch.tensor(input_ids, dtype=torch.long, device=dev)[None]  # [1, T]
        pos = torch.tensor(positions, dtype=torch.long, device=dev)[None]  # [1, T]
        return ids, pos, meta, last_rows

    def shared_prefix_tokens(self, batch: ScheduledBatch) -> list[tuple[int, int, int]]:
        """(first row, rows, shared full blocks) for each run of consecutive rows of one request in a
        decode-only batch; the shared blocks are the leading blocks all its rows have in common."""
        groups = []
        seqs = batch.seqs
        i = 0
        while i < len(seqs):
            j = i + 1
            while j < len(seqs) and seqs[j].group is seqs[i].group:
                j += 1
            shared = 0
            if j - i > 1:
                first = seqs[i].block_table
                # blocks wholly below every row's new token: full, never written in this step
                limit = min(s.num_computed_tokens for s in seqs[i:j]) // self.block_size
                while shared < limit and all(s.block_table[shared] == first[shared] for s in seqs[i + 1 : j]):
                    shared += 1
            groups.append((i, j - i, shared))
            i = j
        return groups

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

    def run(self, batch: ScheduledBatch) -> torch.Tensor:
        """Logits [R, V] (float32) of the last token of each sequence whose tokens are now all computed."""
        if batch.copies:
            self.copy_blocks(batch.copies)
        groups = self.cascade_groups(batch)
        self.num_cascade_steps += groups is not None
        ids, pos, meta, last_rows = self.prepare(batch, groups)
        if self.lean is not None:
            hidden = self.lean(ids, pos, meta)[0]  # [T, H]
        else:
            hidden = self.base(input_ids=ids, position_ids=pos, use_cache=False, r1_attn=meta).last_hidden_state[0]
        if not last_rows:
            return hidden.new_empty(0, self.lm_head.out_features, dtype=torch.float32)
        rows = hidden[torch.tensor(last_rows, device=self.device)]  # [R, H]
        head = self.lm_head
        if self.lean is not None and type(head) is nn.Linear and not (head._forward_hooks or head._forward_pre_hooks):
            return self._lean_linear(rows, head.weight, head.bias).float()
        return head(rows).float()  # [R, V]
