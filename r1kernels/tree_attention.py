"""Tree attention: every token of one or more token trees (beam candidates, MCTS children, several
reasoning steps at once) in one call, each token attending to its tree's paged prefix, to its
ancestors and to itself.

    q [N, Hq, D], k, v [N, Hkv, D]: the trees' nodes packed, tree t at rows cu_nodes[t] ..
    cu_nodes[t+1] (cu_nodes=None: one tree), in topological order.
    parents int32 [N]: each node's parent as an index within its own tree, parent < child, -1 for
    a root (a tree may have several roots: a forest over the same prefix).
    Optional paged prefix: k_cache/v_cache [num_blocks, block_size, Hkv, D], block_tables int32
    [num_trees, max_blocks], prefix_lens int32 [num_trees].
    out = softmax(scale * q [prefix_k; ancestor_k]^T) [prefix_v; ancestor_v], fp32 online softmax,
    grouped-query heads, lse [N, Hq] fp32 (natural log).

The prefix is shared by every node of a tree, so the kernels read each prefix block once per tree
and kv head and apply it to all nodes and query heads, where per-branch paged attention reads it
once per branch. Inference only: no autograd is registered.
"""

from __future__ import annotations

import torch

from r1kernels._library import op
from r1kernels._paged_args import check_block_tables, check_cache, check_cu, check_heads, check_int_vector, python_checks_data


@torch.library.register_fake("r1kernels::tree_attention")
def _(q, k, v, parents, cu_nodes, k_cache, v_cache, block_tables, prefix_lens, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:2], dtype=torch.float32)


def check_parents(parents, cu_nodes):
    """parent < child within each tree, -1 for a root (so the nodes form a forest in topological order)."""
    n = parents.shape[0]
    if n == 0:
        return
    counts = (cu_nodes[1:] - cu_nodes[:-1]).long()
    start = torch.repeat_interleave(cu_nodes[:-1].long(), counts)  # [N] first row of each node's tree
    local = torch.arange(n, device=parents.device) - start
    p = parents.long()
    bad = (p < -1) | (p >= local)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"parents must index a node of the same tree before the child (-1 for a root), so the nodes form trees in "
            f"topological order; node {i} (index {int(local[i])} in its tree) has parent {int(p[i])}"
        )


def tree_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    parents: torch.Tensor,
    *,
    cu_nodes: torch.Tensor | None = None,
    k_cache: torch.Tensor | None = None,
    v_cache: torch.Tensor | None = None,
    block_tables: torch.Tensor | None = None,
    prefix_lens: torch.Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
):
    """out [N, Hq, D] in q's dtype (and lse [N, Hq] fp32 with return_lse=True)."""
    if not isinstance(q, torch.Tensor) or q.dim() != 3:
        raise ValueError(f"q must be a 3-D tensor [N, Hq, head_dim], got {getattr(q, 'shape', type(q))}")
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"q must be float32, bfloat16 or float16, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[0] != q.shape[0]:
            raise ValueError(f"{name} must be a 3-D tensor [N={q.shape[0]}, Hkv, head_dim], got {getattr(t, 'shape', type(t))}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{name} must have q's dtype and device ({q.dtype}, {q.device}), got {t.dtype}, {t.device}")
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape {list(k.shape)}, got {list(v.shape)}")
    check_heads(q, k, "q", "k")
    check_int_vector(parents, "parents", q.shape[0], device=q.device)
    data = python_checks_data("tree_attention", q.device)
    if cu_nodes is None:
        cu_nodes = torch.tensor([0, q.shape[0]], dtype=torch.int32, device=q.device)
    num_trees = cu_nodes.shape[0] - 1 if isinstance(cu_nodes, torch.Tensor) and cu_nodes.dim() == 1 else -1
    check_cu(cu_nodes, "cu_nodes", q.shape[0], num_trees, data, q.device)
    if data:
        check_parents(parents, cu_nodes)
    given = [x is not None for x in (k_cache, v_cache, block_tables, prefix_lens)]
    if any(given) and not all(given):
        raise ValueError("k_cache, v_cache, block_tables and prefix_lens must be given together (the paged prefix) or not at all")
    if all(given):
        check_cache(k_cache, v_cache)
        if k_cache.dtype != q.dtype or k_cache.device != q.device:
            raise ValueError(f"k_cache must have q's dtype and device ({q.dtype}, {q.device}), got {k_cache.dtype}, {k_cache.device}")
        if tuple(k_cache.shape[2:]) != tuple(k.shape[1:]):
            raise ValueError(f"k_cache's kv_heads and head_dim {list(k_cache.shape[2:])} must match k's {list(k.shape[1:])}")
        check_block_tables(block_tables, prefix_lens, "prefix_lens", k_cache, num_trees, data)
        block_tables, prefix_lens = block_tables.contiguous(), prefix_lens.contiguous()
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    out, lse = op("tree_attention")(
        q.contiguous(), k.contiguous(), v.contiguous(), parents.contiguous(), cu_nodes.contiguous(),
        k_cache, v_cache, block_tables, prefix_lens, scale,
    )
    return (out, lse) if return_lse else out
