"""Paged attention: decode, prefill and chunked prefill in one op, over a block-paged KV cache.

    cache [num_blocks, block_size, kv_heads, head_dim]; sequence s owns block_tables[s] and its
    first seq_lens[s] kv tokens (the new ones already written by reshape_and_cache).
    q [Nq, Hq, D] packs S sequences: rows cu_seqlens_q[s] .. cu_seqlens_q[s+1].
    Query j of sequence s (q_len rows) sits at position seq_lens[s] - q_len + j; with causal it
    attends to kv positions <= its own, without causal to all seq_lens[s] tokens.
    out = softmax(scale * q k^T) v, computed in fp32 with an online softmax; lse = logsumexp of
    the scaled scores (natural log), [Nq, Hq] fp32. Grouped-query heads: query head h reads kv head
    h // (Hq / Hkv). A sequence with no kv tokens gives out 0 and lse -inf.

The shared-prefix (cascade) path: attention over a group's shared prefix blocks with causal=False
and all the group's query rows packed as one sequence, attention over each sample's own suffix
(a table starting at its first unshared block), then `merge_attention_states`.

Inference only: no autograd is registered (the engine runs under torch.no_grad()).
"""

from __future__ import annotations

import math

import torch

from r1kernels._library import op
from r1kernels._paged_args import check_block_tables, check_cache, check_cu, check_heads, python_checks_data


@torch.library.register_fake("r1kernels::paged_attention")
def _(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, causal):
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=torch.float32)


def check_paged_attention_args(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, causal):
    check_cache(k_cache, v_cache)
    if not isinstance(q, torch.Tensor) or q.dim() != 3:
        raise ValueError(f"q must be a 3-D tensor [Nq, Hq, head_dim], got {getattr(q, 'shape', type(q))}")
    if q.dtype != k_cache.dtype:
        raise ValueError(f"q must have the cache's dtype {k_cache.dtype}, got {q.dtype}")
    if q.device != k_cache.device:
        raise ValueError(f"q is on {q.device}, expected {k_cache.device} (the cache's device)")
    check_heads(q, k_cache, "q", "k_cache")
    data = python_checks_data("paged_attention", q.device)
    num_seqs = block_tables.shape[0] if isinstance(block_tables, torch.Tensor) and block_tables.dim() == 2 else -1
    check_block_tables(block_tables, seq_lens, "seq_lens", k_cache, num_seqs, data)
    check_cu(cu_seqlens_q, "cu_seqlens_q", q.shape[0], num_seqs, data, q.device)
    if data and causal and num_seqs > 0:
        q_lens = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
        if bool((seq_lens < q_lens).any()):
            raise ValueError(
                f"seq_lens must be >= each sequence's query count when causal (the queries' own K/V are in the cache), "
                f"got seq_lens {seq_lens.tolist()} for query counts {q_lens.tolist()}"
            )


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = True,
    return_lse: bool = False,
):
    """out [Nq, Hq, D] in q's dtype (and lse [Nq, Hq] fp32 with return_lse=True).

    block_tables int32 [S, max_blocks]; seq_lens int32 [S]; cu_seqlens_q int32 [S + 1].
    """
    check_paged_attention_args(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, causal)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale)
                              or scale <= 0):
        raise ValueError(f"scale must be None (1 / sqrt(head_dim)) or a finite number > 0, got {scale!r}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    out, lse = op("paged_attention")(q.contiguous(), k_cache, v_cache, block_tables.contiguous(), seq_lens.contiguous(),
                                     cu_seqlens_q.contiguous(), scale, bool(causal))
    return (out, lse) if return_lse else out
