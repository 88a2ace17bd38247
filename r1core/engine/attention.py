"""The attention function the engine registers with transformers' `AttentionInterface`, and the
batch metadata it reads. The model runs on packed tokens ([1, total_tokens]); each attention layer
writes its new K/V into its paged cache (`reshape_and_cache`) and attends over the cache
(`paged_attention`: decode, prefill and chunked prefill alike). The metadata travels through the
kwargs transformers forwards from the model's forward to every attention call, never a global.

Shared-prefix (cascade) decode: when the G samples of a prompt decode together, the full blocks of
the prompt they share are attended once per group (causal=False, the group's G query rows as one
row set), each sample's own blocks separately, and the two merged by their logsumexp
(`merge_attention_states`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r1kernels import copy_blocks, merge_attention_states, paged_attention, reshape_and_cache

ATTENTION_NAME = "r1core_paged"


@dataclass
class CascadeMetadata:
    """Decode-only batches: rows of the batch grouped by shared prefix."""

    prefix_block_tables: torch.Tensor  # int32 [P, max_prefix_blocks]  one row per group
    prefix_lens: torch.Tensor  # int32 [P]  shared kv tokens of each group
    prefix_cu_seqlens_q: torch.Tensor  # int32 [P + 1]  the group's query rows (contiguous in the batch)
    suffix_block_tables: torch.Tensor  # int32 [S, max_suffix_blocks]  each row's table past its prefix
    suffix_lens: torch.Tensor  # int32 [S]


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # int64 [T]  cache slot of each new token
    block_tables: torch.Tensor  # int32 [S, max_blocks]
    seq_lens: torch.Tensor  # int32 [S]  kv tokens after this step
    cu_seqlens_q: torch.Tensor  # int32 [S + 1]  new tokens of each sequence in the packed batch
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: [num_blocks, block_size, Hkv, D] each
    cascade: CascadeMetadata | None = None


def paged_attention_forward(module, query, key, value, attention_mask=None, scaling=None, r1_attn=None, **kwargs):
    """query [1, Hq, T, D], key/value [1, Hkv, T, D] -> ([1, T, Hq, D], None)."""
    if r1_attn is None:
        raise RuntimeError(f"the {ATTENTION_NAME!r} attention function only runs inside r1core.engine.Engine")
    meta: AttentionMetadata = r1_attn
    q = query[0].transpose(0, 1)  # [T, Hq, D]
    k_cache, v_cache = meta.kv_caches[module.layer_idx]
    reshape_and_cache(key[0].transpose(0, 1), value[0].transpose(0, 1), k_cache, v_cache, meta.slot_mapping)
    c = meta.cascade
    if c is None:
        out = paged_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.cu_seqlens_q, scale=scaling, causal=True)
    else:
        out_p, lse_p = paged_attention(q, k_cache, v_cache, c.prefix_block_tables, c.prefix_lens, c.prefix_cu_seqlens_q,
                                       scale=scaling, causal=False, return_lse=True)
        out_s, lse_s = paged_attention(q, k_cache, v_cache, c.suffix_block_tables, c.suffix_lens, meta.cu_seqlens_q,
                                       scale=scaling, causal=True, return_lse=True)
        out, _ = merge_attention_states(out_p, lse_p, out_s, lse_s)
    return out.unsqueeze(0), None  # [1, T, Hq, D]


def register() -> str:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, paged_attention_forward)
    return ATTENTION_NAME
