"""The attention function the engine registers with transformers' `AttentionInterface`, and the
batch metadata it reads. The model runs on packed tokens ([1, total_tokens]); each attention layer
writes its new K/V into its paged cache (`reshape_and_cache`) and attends over the cache
(`paged_attention`: decode, prefill and chunked prefill alike). The metadata travels through the
kwargs transformers forwards from the model's forward to every attention call, never a global.

Shared-prefix (cascade) decode: when the G samples of a prompt decode together, the full blocks of
the prompt they share are attended once per group (causal=False, the group's G query rows as one
row set), each sample's own blocks separately, and the two merged by their logsumexp
(`merge_attention_states`).

Tree attention: the rows of a tree (the beams of a prompt, the children of a search node) attend
to their shared prefix and to their new tokens in one `tree_attention` call: each row's new tokens
are a chain of nodes hanging off the tree's prefix, which the kernel reads once per tree. A row's
own cached tokens past that prefix (beams that diverged) are attended by `paged_attention` over
its own blocks (causal=False: all of them precede its new tokens) and merged by the logsumexp."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import r1kernels  # noqa: F401  registers the r1kernels:: ops

# The per-layer ops are called through torch.ops, past the public wrappers' argument checks: the
# engine builds every tensor they check itself, and the checks cost 0.33 ms per decode-sized
# paged_attention call here (16 sequences x 600 tokens, with the data checks that run without the
# C++ kernel), paid on up to three calls per layer per step.
_reshape_and_cache = torch.ops.r1kernels.reshape_and_cache.default
_paged_attention = torch.ops.r1kernels.paged_attention.default
_merge_attention_states = torch.ops.r1kernels.merge_attention_states.default
_tree_attention = torch.ops.r1kernels.tree_attention.default

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
class TreeMetadata:
    """The batch's rows grouped into trees (consecutive rows); each row's new tokens a chain of nodes."""

    parents: torch.Tensor  # int32 [T]  each new token's parent within its tree, -1 for a row's first
    cu_nodes: torch.Tensor  # int32 [num_trees + 1]  the trees' new tokens in the packed batch
    prefix_block_tables: torch.Tensor  # int32 [num_trees, max_blocks]
    prefix_lens: torch.Tensor  # int32 [num_trees]  cached tokens every row of the tree shares
    own_block_tables: torch.Tensor | None = None  # int32 [S, w]  each row's blocks past its tree's prefix; None: no row has any
    own_lens: torch.Tensor | None = None  # int32 [S]  cached tokens of the row past the prefix (0 allowed)


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # int64 [T]  cache slot of each new token
    block_tables: torch.Tensor  # int32 [S, max_blocks]
    seq_lens: torch.Tensor  # int32 [S]  kv tokens after this step
    cu_seqlens_q: torch.Tensor  # int32 [S + 1]  new tokens of each sequence in the packed batch
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: [num_blocks, block_size, Hkv, D] each
    cascade: CascadeMetadata | None = None
    tree: TreeMetadata | None = None


def paged_attention_forward(module, query, key, value, attention_mask=None, scaling=None, r1_attn=None, **kwargs):
    """query [1, Hq, T, D], key/value [1, Hkv, T, D] -> ([1, T, Hq, D], None)."""
    if r1_attn is None:
        raise RuntimeError(f"the {ATTENTION_NAME!r} attention function only runs inside r1core.engine.Engine")
    q = query[0].transpose(0, 1).contiguous()  # [T, Hq, D]
    key = key[0].transpose(0, 1).contiguous()  # [T, Hkv, D]
    value = value[0].transpose(0, 1).contiguous()
    scale = float(scaling) if scaling is not None else q.shape[-1] ** -0.5
    return paged_attention_packed(module.layer_idx, q, key, value, scale, r1_attn).to(query.dtype)[None], None  # [1, T, Hq, D]


def paged_attention_packed(layer_idx: int, q, key, value, scale: float, meta: AttentionMetadata):
    """q [T, Hq, D], key/value [T, Hkv, D] (contiguous) -> [T, Hq, D] in the cache's dtype: writes
    the new K/V into layer_idx's cache and attends over it (the cascade split or the tree when meta
    says so)."""
    k_cache, v_cache = meta.kv_caches[layer_idx]
    if q.dtype != k_cache.dtype:  # a cache in another precision than the model
        q, key, value = q.to(k_cache.dtype), key.to(k_cache.dtype), value.to(k_cache.dtype)
    if meta.slot_mapping.numel():
        _reshape_and_cache(key, value, k_cache, v_cache, meta.slot_mapping)
    c = meta.cascade
    if meta.tree is not None:
        out = tree_attention_packed(q, key, value, k_cache, v_cache, scale, meta)
    elif c is None:
        out, _ = _paged_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.cu_seqlens_q, scale, True)
    else:
        out_p, lse_p = _paged_attention(q, k_cache, v_cache, c.prefix_block_tables, c.prefix_lens, c.prefix_cu_seqlens_q, scale, False)
        out_s, lse_s = _paged_attention(q, k_cache, v_cache, c.suffix_block_tables, c.suffix_lens, meta.cu_seqlens_q, scale, True)
        out, _ = _merge_attention_states(out_p, lse_p, out_s, lse_s)
    return out


def tree_attention_packed(q, key, value, k_cache, v_cache, scale: float, meta: AttentionMetadata):
    """The batch as trees (`TreeMetadata`): the new tokens' chains over each tree's cached prefix
    in one tree_attention call, merged with each row's own cached tokens where a row has some."""
    t = meta.tree
    out, lse = _tree_attention(q, key, value, t.parents, t.cu_nodes, k_cache, v_cache, t.prefix_block_tables,
                               t.prefix_lens, scale)
    if t.own_block_tables is not None:
        out_o, lse_o = _paged_attention(q, k_cache, v_cache, t.own_block_tables, t.own_lens, meta.cu_seqlens_q, scale, False)
        out, _ = _merge_attention_states(out, lse, out_o, lse_o)
    return out


def register() -> str:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, paged_attention_forward)
    return ATTENTION_NAME
