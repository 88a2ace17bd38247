"""The paged-KV and attention ops against the reference and, for attention, PyTorch's SDPA (what
transformers' "sdpa" attention runs) on the same keys gathered into contiguous tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _shapes import ATTN_SHAPES, MODELS, params

import r1kernels
from r1kernels import reference

BLOCK = 16


def paged(shape, q_len=1, seed=0):
    """Decode-shaped inputs: `seqs` sequences of `ctx` tokens in a shuffled paged cache, q_len new
    queries each."""
    name, seqs, ctx = shape
    m = MODELS[name]
    g = torch.Generator().manual_seed(seed)
    per = -(-ctx // BLOCK)
    nb = seqs * per + 4
    k_cache = torch.randn(nb, BLOCK, m.kv_heads, m.head_dim, generator=g)
    v_cache = torch.randn(nb, BLOCK, m.kv_heads, m.head_dim, generator=g)
    table = torch.randperm(nb, generator=g)[: seqs * per].view(seqs, per).to(torch.int32)
    seq_lens = torch.full((seqs,), ctx, dtype=torch.int32)
    cu = torch.arange(0, (seqs + 1) * q_len, q_len, dtype=torch.int32)
    q = torch.randn(seqs * q_len, m.heads, m.head_dim, generator=g)
    return dict(
        q=q,
        k_cache=k_cache,
        v_cache=v_cache,
        table=table,
        seq_lens=seq_lens,
        cu=cu,
        m=m,
        seqs=seqs,
        ctx=ctx,
        q_len=q_len,
    )


def sdpa_over_gathered(a):
    """Gather each sequence's keys out of the paged cache, then one batched SDPA call (GQA)."""
    m, seqs, ctx = a["m"], a["seqs"], a["ctx"]
    idx = a["table"].long()
    k = a["k_cache"][idx].reshape(seqs, -1, m.kv_heads, m.head_dim)[:, :ctx].transpose(1, 2)
    v = a["v_cache"][idx].reshape(seqs, -1, m.kv_heads, m.head_dim)[:, :ctx].transpose(1, 2)
    q = a["q"].view(seqs, a["q_len"], m.heads, m.head_dim).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


@pytest.mark.parametrize("impl", ["r1kernels", "reference", "sdpa"])
@pytest.mark.parametrize("q_len", [1, 16], ids=["decode", "chunk16"])
@pytest.mark.parametrize("shape", params(ATTN_SHAPES))
def bench_paged_attention(benchmark, shape, q_len, impl):
    a = paged(shape, q_len)
    args = (a["q"], a["k_cache"], a["v_cache"], a["table"], a["seq_lens"], a["cu"])
    benchmark.group = f"paged_attention/q_len={q_len}"
    if impl == "r1kernels":
        benchmark(lambda: r1kernels.paged_attention(*args))
    elif impl == "reference":
        benchmark(lambda: reference.paged_attention(*args))
    else:
        benchmark(lambda: sdpa_over_gathered(a))


@pytest.mark.parametrize("impl", ["r1kernels", "reference"])
@pytest.mark.parametrize("shape", params(ATTN_SHAPES))
def bench_reshape_and_cache(benchmark, shape, impl):
    a = paged(shape)
    m, seqs = a["m"], a["seqs"]
    key = torch.randn(seqs, m.kv_heads, m.head_dim)
    value = torch.randn(seqs, m.kv_heads, m.head_dim)
    slots = a["table"][:, -1].long() * BLOCK + 3  # one new token per sequence, each in its own block
    f = r1kernels.reshape_and_cache if impl == "r1kernels" else reference.reshape_and_cache
    benchmark.group = "reshape_and_cache"
    benchmark(lambda: f(key, value, a["k_cache"], a["v_cache"], slots))


@pytest.mark.parametrize("impl", ["r1kernels", "reference"])
@pytest.mark.parametrize("shape", params(ATTN_SHAPES))
def bench_copy_blocks(benchmark, shape, impl):
    a = paged(shape)
    nb = a["k_cache"].shape[0]
    mapping = torch.tensor(
        [[i, nb - 1 - i] for i in range(min(8, nb // 2))], dtype=torch.int64
    )  # copy-on-write of 8 blocks
    f = r1kernels.copy_blocks if impl == "r1kernels" else reference.copy_blocks
    benchmark.group = "copy_blocks"
    benchmark(lambda: f(a["k_cache"], a["v_cache"], mapping))


@pytest.mark.parametrize("impl", ["r1kernels", "reference"])
@pytest.mark.parametrize("shape", params(ATTN_SHAPES))
def bench_merge_attention_states(benchmark, shape, impl):
    name, seqs, _ = shape
    m = MODELS[name]
    g = torch.Generator().manual_seed(0)
    oa, ob = (torch.randn(seqs, m.heads, m.head_dim, generator=g) for _ in range(2))
    la, lb = (torch.randn(seqs, m.heads, generator=g) for _ in range(2))
    f = r1kernels.merge_attention_states if impl == "r1kernels" else reference.merge_attention_states
    benchmark.group = "merge_attention_states"
    benchmark(lambda: f(oa, la, ob, lb))


@pytest.mark.parametrize("impl", ["r1kernels", "reference", "sdpa"])
@pytest.mark.parametrize("shape", params(ATTN_SHAPES))
def bench_tree_attention(benchmark, shape, impl):
    # one tree per sequence: 16 nodes as 4 branches of 4 steps over the sequence's paged prefix
    a = paged(shape)
    m, seqs, ctx = a["m"], a["seqs"], a["ctx"]
    n = 16
    parents = torch.tensor(
        [-1 if i % 4 == 0 else i - 1 for i in range(n)] * seqs, dtype=torch.int32
    )  # within each tree
    cu_nodes = torch.arange(0, (seqs + 1) * n, n, dtype=torch.int32)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(seqs * n, m.heads, m.head_dim, generator=g)
    k, v = (torch.randn(seqs * n, m.kv_heads, m.head_dim, generator=g) for _ in range(2))
    kw = dict(
        cu_nodes=cu_nodes,
        k_cache=a["k_cache"],
        v_cache=a["v_cache"],
        block_tables=a["table"],
        prefix_lens=a["seq_lens"],
    )
    benchmark.group = "tree_attention"
    if impl == "r1kernels":
        benchmark(lambda: r1kernels.tree_attention(q, k, v, parents, **kw))
    elif impl == "reference":
        benchmark(lambda: reference.tree_attention(q, k, v, parents, **kw))
    else:
        ancestors = reference.tree_ancestor_mask(parents[:n])  # the same shape of tree in every sequence

        def sdpa():
            idx = a["table"].long()
            kp = a["k_cache"][idx].reshape(seqs, -1, m.kv_heads, m.head_dim)[:, :ctx]
            vp = a["v_cache"][idx].reshape(seqs, -1, m.kv_heads, m.head_dim)[:, :ctx]
            kk = torch.cat([kp, k.view(seqs, n, m.kv_heads, m.head_dim)], 1).transpose(1, 2)
            vv = torch.cat([vp, v.view(seqs, n, m.kv_heads, m.head_dim)], 1).transpose(1, 2)
            mask = torch.cat([torch.ones(n, ctx, dtype=torch.bool), ancestors], 1)
            return F.scaled_dot_product_attention(
                q.view(seqs, n, m.heads, m.head_dim).transpose(1, 2), kk, vv, attn_mask=mask, enable_gqa=True
            )

        benchmark(sdpa)
