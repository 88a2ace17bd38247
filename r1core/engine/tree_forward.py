"""Hidden states of several token sequences that share a prefix, in one forward over their packed
tree: the sibling steps of a search node scored by a process reward or value model at once.

    hidden = tree_hidden_states(base, [prompt + step_a, prompt + step_b, prompt + step_c])
    hidden[i]  # [len(seqs[i]), H], what base(seqs[i]) gives, to float rounding

The sequences' longest common prefix is computed once (one causal pass into a scratch paged KV
cache); everything after it is packed as a trie (a token two sequences have at the same place after
the same tokens is one node) and computed in one more pass, whose attention is one
`r1kernels.tree_attention` call per layer: every node attends to the prefix, read once for all
nodes, and to its ancestors. Scoring each sequence separately computes the prefix once per
sequence. `base` is a Llama-family decoder (the base model under a causal LM or a reward model's
backbone): it runs through the engine's lean forward where that is exact, else through its own
modules with the engine's attention function.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from r1core.engine import attention
from r1core.engine.attention import AttentionMetadata, TreeMetadata
from r1core.engine.fast_forward import LeanForward, unsupported_reason
from r1core.engine.model_runner import kv_geometry

BLOCK_SIZE = 16


@dataclass
class PackedTree:
    """seqs as their common prefix and a trie of the rest. rows[i][j]: the row of seqs[i]'s token j
    in the prefix's rows followed by the nodes' (prefix row j < len(prefix), node n at len(prefix) + n)."""

    prefix: list[int]
    node_ids: list[int]
    parents: list[int]  # each node's parent node, -1 for a child of the prefix; parents come first
    depths: list[int]  # each node's position past the prefix
    rows: list[list[int]]


def pack_tree(seqs: list[list[int]]) -> PackedTree:
    """The common prefix of `seqs` and the trie of what follows it (module docstring)."""
    if not seqs:
        raise ValueError("seqs: expected at least one token sequence")
    first = seqs[0]
    p = min(map(len, seqs))
    for s in seqs[1:]:
        j = 0
        while j < p and s[j] == first[j]:
            j += 1
        p = j
    node_ids, parents, depths, rows = [], [], [], []
    index: dict[tuple[int, int], int] = {}
    for s in seqs:
        r = list(range(p))
        node = -1
        for d, tok in enumerate(s[p:]):
            key = (node, int(tok))
            if key not in index:
                index[key] = len(node_ids)
                node_ids.append(int(tok))
                parents.append(node)
                depths.append(d)
            node = index[key]
            r.append(p + node)
        rows.append(r)
    return PackedTree(list(first[:p]), node_ids, parents, depths, rows)


@contextlib.contextmanager
def _engine_attention(base: nn.Module):
    """The engine's attention function on `base`'s configs, eval and inference mode, restored after."""
    name = attention.register()
    configs = list({id(m.config): m.config for m in base.modules()
                    if hasattr(m, "config") and hasattr(m.config, "_attn_implementation_internal")}.values())
    old = [c._attn_implementation_internal for c in configs]
    training = base.training
    try:
        for c in configs:
            c._attn_implementation_internal = name
        base.eval()
        with torch.inference_mode():
            yield
    finally:
        for c, o in zip(configs, old):
            c._attn_implementation_internal = o
        base.train(training)


def _i32(values, device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32, device=device)


def tree_hidden_states(base: nn.Module, seqs: list[list[int]], block_size: int = BLOCK_SIZE) -> list[torch.Tensor]:
    """The last hidden states [len(seqs[i]), H] of each sequence under `base` (a Llama-family
    decoder: `base(input_ids=...).last_hidden_state`), from one pass over the common prefix and one
    over the packed trie of the rest (module docstring)."""
    tree = pack_tree(seqs)
    param = next(base.parameters())
    dev, dtype = param.device, param.dtype
    layers, kv_heads, head_dim = kv_geometry(base.config)
    P, N = len(tree.prefix), len(tree.node_ids)
    nb = max(1, -(-P // block_size))
    cache = torch.empty(layers, 2, nb, block_size, kv_heads, head_dim, dtype=dtype, device=dev)
    caches = [(cache[i, 0], cache[i, 1]) for i in range(layers)]
    table = _i32([list(range(nb))], dev)
    hidden = []
    with _engine_attention(base):
        forward = LeanForward(base, skinny=False, fused=False) if unsupported_reason(base) is None else None

        def run(ids: list[int], positions: list[int], meta: AttentionMetadata) -> torch.Tensor:
            ids_t = torch.tensor([ids], dtype=torch.long, device=dev)
            pos_t = torch.tensor([positions], dtype=torch.long, device=dev)
            if forward is not None:
                return forward(ids_t, pos_t, meta)[0]
            return base(input_ids=ids_t, position_ids=pos_t, use_cache=False, r1_attn=meta).last_hidden_state[0]

        if P:
            meta = AttentionMetadata(torch.arange(P, device=dev), table, _i32([P], dev), _i32([0, P], dev), caches)
            hidden.append(run(tree.prefix, list(range(P)), meta))
        if N:
            tree_meta = TreeMetadata(parents=_i32(tree.parents, dev), cu_nodes=_i32([0, N], dev),
                                     prefix_block_tables=table, prefix_lens=_i32([P], dev))
            meta = AttentionMetadata(torch.empty(0, dtype=torch.long, device=dev), table, _i32([P + N], dev),
                                     _i32([0, N], dev), caches, tree=tree_meta)
            hidden.append(run(tree.node_ids, [P + d for d in tree.depths], meta))
    flat = torch.cat(hidden) if hidden else cache.new_empty(0, base.config.hidden_size)
    return [flat[torch.tensor(r, dtype=torch.long, device=dev)] for r in tree.rows]
