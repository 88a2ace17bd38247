"""Temporary plain-PyTorch stand-ins for the r1kernels paged-attention ops, with their exact API,
used only until `r1kernels.paged_attention` and friends land. Delete once they exist."""

from __future__ import annotations

import torch


def reshape_and_cache(key, value, k_cache, v_cache, slot_mapping):
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.view(-1, *k_cache.shape[2:])[slots] = key[keep].to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = value[keep].to(v_cache.dtype)


def copy_blocks(k_cache, v_cache, block_mapping):
    if block_mapping.numel():
        src, dst = block_mapping[:, 0], block_mapping[:, 1]
        k_cache[dst] = k_cache[src]
        v_cache[dst] = v_cache[src]


def paged_attention(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, *, scale=None, causal=True, return_lse=False):
    nq, hq, d = q.shape
    bs, hkv = k_cache.shape[1], k_cache.shape[2]
    scale = d**-0.5 if scale is None else scale
    out = torch.zeros(nq, hq, d, dtype=torch.float32)
    lse = torch.full((nq, hq), float("-inf"))
    for s in range(block_tables.shape[0]):
        a, b = int(cu_seqlens_q[s]), int(cu_seqlens_q[s + 1])
        L = int(seq_lens[s])
        if b == a or L == 0:
            continue
        nb = (L + bs - 1) // bs
        blocks = block_tables[s, :nb].long()
        k = k_cache[blocks].reshape(-1, hkv, d)[:L].float().repeat_interleave(hq // hkv, 1)  # [L, Hq, D]
        v = v_cache[blocks].reshape(-1, hkv, d)[:L].float().repeat_interleave(hq // hkv, 1)
        s_ = torch.einsum("qhd,khd->hqk", q[a:b].float(), k) * scale  # [Hq, ql, L]
        if causal:
            pos = torch.arange(L - (b - a), L)
            s_ = s_.masked_fill(torch.arange(L)[None, None, :] > pos[None, :, None], float("-inf"))
        m = s_.logsumexp(-1)  # [Hq, ql]
        p = torch.exp(s_ - m[..., None])
        out[a:b] = torch.einsum("hqk,khd->qhd", p, v)
        lse[a:b] = m.T
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out


def merge_attention_states(out_a, lse_a, out_b, lse_b):
    m = torch.maximum(lse_a, lse_b)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    wa, wb = torch.exp(lse_a - m), torch.exp(lse_b - m)
    den = wa + wb
    out = (out_a.float() * wa[..., None] + out_b.float() * wb[..., None]) / den.clamp_min(1e-30)[..., None]
    return out.to(out_a.dtype), m + torch.log(den)
