"""`ModelRunner`: the tensors. Owns the paged KV cache (one [num_blocks, block_size, Hkv, D] pair per
layer), turns a scheduled batch into packed model inputs and attention metadata, runs the model's
own modules through the registered attention function, and returns the logits of the last token of
each sequence whose tokens are all computed (lm_head on those rows only)."""

from __future__ import annotations

import torch

from r1core.engine.attention import AttentionMetadata, CascadeMetadata
from r1core.engine.attention import copy_blocks as _copy_blocks
from r1core.engine.scheduler import ScheduledBatch


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


class ModelRunner:
    DEFAULT_MEMORY_FRACTION = 0.2

    def __init__(self, model, block_size: int, num_blocks: int | None = None, memory_budget_bytes: int | None = None,
                 cache_dtype: torch.dtype | None = None):
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
        if num_blocks < 1:
            raise ValueError(f"the KV-cache memory budget holds no block of {self.block_bytes} bytes")
        self.num_blocks = int(num_blocks)
        # torch.empty: pages are touched only as blocks get used; the block manager reuses low blocks first
        self.kv_cache = torch.empty(layers, 2, self.num_blocks, block_size, kv_heads, head_dim, dtype=self.dtype, device=self.device)
        self.kv_caches = [(self.kv_cache[i, 0], self.kv_cache[i, 1]) for i in range(layers)]

    @property
    def kv_cache_bytes(self) -> int:
        return self.kv_cache.numel() * self.kv_cache.element_size()

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        mapping = torch.tensor(copies, dtype=torch.int64, device=self.device)  # [M, 2]
        for k_cache, v_cache in self.kv_caches:
            _copy_blocks(k_cache, v_cache, mapping)

    def prepare(self, batch: ScheduledBatch, cascade: CascadeMetadata | None = None):
        bs = self.block_size
        input_ids, positions, slots, last_rows = [], [], [], []
        seq_lens, cu = [], [0]
        max_blocks = 0
        for seq, k in zip(batch.seqs, batch.num_new_tokens):
            start = seq.num_computed_tokens
            end = start + k
            table = seq.block_table
            input_ids += seq.token_ids[start:end]
            positions += range(start, end)
            slots += [table[p // bs] * bs + p % bs for p in range(start, end)]
            seq_lens.append(end)
            cu.append(cu[-1] + k)
            if end == seq.num_tokens:
                last_rows.append(cu[-1] - 1)
            max_blocks = max(max_blocks, len(table))
        block_tables = torch.zeros(len(batch.seqs), max_blocks, dtype=torch.int32)
        for i, seq in enumerate(batch.seqs):
            block_tables[i, : len(seq.block_table)] = torch.tensor(seq.block_table, dtype=torch.int32)
        dev = self.device
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            block_tables=block_tables.to(dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=dev),
            kv_caches=self.kv_caches,
            cascade=cascade,
        )
        ids = torch.tensor(input_ids, dtype=torch.long, device=dev)[None]  # [1, T]
        pos = torch.tensor(positions, dtype=torch.long, device=dev)[None]  # [1, T]
        return ids, pos, meta, last_rows

    def run(self, batch: ScheduledBatch) -> torch.Tensor:
        """Logits [R, V] (float32) of the last token of each sequence whose tokens are now all computed."""
        if batch.copies:
            self.copy_blocks(batch.copies)
        ids, pos, meta, last_rows = self.prepare(batch)
        hidden = self.base(input_ids=ids, position_ids=pos, use_cache=False, r1_attn=meta).last_hidden_state[0]  # [T, H]
        if not last_rows:
            return hidden.new_empty(0, self.lm_head.out_features, dtype=torch.float32)
        rows = hidden[torch.tensor(last_rows, device=self.device)]  # [R, H]
        return self.lm_head(rows).float()  # [R, V]
