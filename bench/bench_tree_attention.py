"""Tree attention against per-branch paged attention on the CPU (the C++ kernels), same inputs, one
process: B branches of T tokens each hanging off one P-token prompt that lives in the paged cache.

  tree:       r1kernels.tree_attention: one call, all B*T nodes as one tree (each branch a chain
              from a root whose parent is the prefix); prefix blocks read once per kv head.
  per-branch: r1kernels.paged_attention: each branch its own sequence (table = the shared prefix
              blocks, then its own blocks; its K/V written to the cache beforehand, untimed), causal.
  cascade:    paged_attention over the prefix once (causal=False, all B*T rows as one sequence),
              paged_attention over each branch's own blocks, merge_attention_states.

Times: median of alternating runs, and the ratio of the fastest runs as well (wall clock and torch's
intra-op threads; --cpu-time --threads 1 for the single-core CPU time, steadier where other processes
share the machine). Also the per-call cost of a decode-sized paged_attention (16 sequences x 1 query)
and of the cache writes.

    python bench/bench_tree_attention.py            # 16 x 32 tokens on a 512-token prefix
    python bench/bench_tree_attention.py --quick    # small shapes (seconds)
    python bench/bench_tree_attention.py --threads 1 --cpu-time --tokens 1   # one new token per branch
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import r1kernels
from r1kernels import reference

CLOCK = time.perf_counter


def timeit(fns: dict, reps: int, warmup: int = 2, best: dict | None = None) -> dict:
    """Median seconds per call of each fn, runs alternating between fns (and the fastest run of
    each into `best`: on a machine shared with other work the least disturbed run)."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = CLOCK()
            f()
            times[k].append(CLOCK() - t)
    if best is not None:
        best.update({k: min(v) for k, v in times.items()})
    return {k: statistics.median(v) for k, v in times.items()}


def make_case(branches, tokens, prefix, hq, hkv, d, block_size, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    pb = (prefix + block_size - 1) // block_size
    bb = (prefix % block_size + tokens + block_size - 1) // block_size if prefix % block_size else (tokens + block_size - 1) // block_size
    nb = pb + branches * (bb + 1) + 4
    k_cache = torch.randn(nb, block_size, hkv, d, generator=g).to(dtype)
    v_cache = torch.randn(nb, block_size, hkv, d, generator=g).to(dtype)
    perm = torch.randperm(nb, generator=g).to(torch.int32)
    prefix_blocks = perm[:pb]
    n = branches * tokens
    q = torch.randn(n, hq, d, generator=g).to(dtype)
    k = torch.randn(n, hkv, d, generator=g).to(dtype)
    v = torch.randn(n, hkv, d, generator=g).to(dtype)
    # one tree: B chains of T nodes, each chain's first node a root (its parent is the prefix)
    parents = torch.tensor([-1 if t == 0 else b * tokens + t - 1 for b in range(branches) for t in range(tokens)], dtype=torch.int32)
    tree = dict(q=q, k=k, v=v, parents=parents, cu_nodes=torch.tensor([0, n], dtype=torch.int32), k_cache=k_cache, v_cache=v_cache,
                block_tables=prefix_blocks.unsqueeze(0).contiguous(), prefix_lens=torch.tensor([prefix], dtype=torch.int32))
    # per branch: a copy of the prefix's partial last block (copy-on-write), then its own blocks
    per_branch_blocks = (prefix + tokens + block_size - 1) // block_size
    table = torch.zeros(branches, per_branch_blocks, dtype=torch.int32)
    nxt = pb
    slots = []
    for b in range(branches):
        own = perm[nxt : nxt + per_branch_blocks - prefix // block_size]
        nxt += own.numel()
        table[b, : prefix // block_size] = prefix_blocks[: prefix // block_size]
        table[b, prefix // block_size :] = own
        if prefix % block_size:  # the shared partial block, copied into the branch's first own block
            r1kernels.copy_blocks(k_cache, v_cache, torch.tensor([[int(prefix_blocks[-1]), int(own[0])]]))
        for t in range(tokens):
            p = prefix + t
            slots.append(int(table[b, p // block_size]) * block_size + p % block_size)
    r1kernels.reshape_and_cache(k, v, k_cache, v_cache, torch.tensor(slots))
    seq_lens = torch.full((branches,), prefix + tokens, dtype=torch.int32)
    cu_q = torch.arange(0, n + 1, tokens, dtype=torch.int32)
    paged = dict(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=table, seq_lens=seq_lens, cu_seqlens_q=cu_q)
    # cascade: prefix blocks once (whole blocks only; a partial last prefix block goes with the suffix)
    full = prefix // block_size
    cascade = dict(
        prefix=dict(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=prefix_blocks[:full].unsqueeze(0).contiguous(),
                    seq_lens=torch.tensor([full * block_size], dtype=torch.int32),
                    cu_seqlens_q=torch.tensor([0, n], dtype=torch.int32), causal=False),
        suffix=dict(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=table[:, full:].contiguous(),
                    seq_lens=seq_lens - full * block_size, cu_seqlens_q=cu_q),
    )
    return tree, paged, cascade


def run_cascade(c):
    o1, l1 = r1kernels.paged_attention(**c["prefix"], return_lse=True)
    o2, l2 = r1kernels.paged_attention(**c["suffix"], return_lse=True)
    return r1kernels.merge_attention_states(o1, l1, o2, l2)[0]


def bench_tree(args, dtype):
    tree, paged, cascade = make_case(args.branches, args.tokens, args.prefix, args.hq, args.hkv, args.d, args.block_size, dtype)
    with torch.no_grad():
        out_tree = r1kernels.tree_attention(**tree)
        out_paged = r1kernels.paged_attention(**paged)
        out_cascade = run_cascade(cascade)
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(out_tree, out_paged, atol=tol, rtol=tol)
        torch.testing.assert_close(out_cascade, out_paged, atol=tol, rtol=tol)
        if args.check_reference:
            names = ("q", "k", "v", "parents", "cu_nodes", "k_cache", "v_cache", "block_tables", "prefix_lens")
            ref, _ = reference.tree_attention(*(tree[k] for k in names))
            torch.testing.assert_close(out_tree, ref, atol=tol, rtol=tol)
        best = {}
        t = timeit({"tree": lambda: r1kernels.tree_attention(**tree), "per-branch": lambda: r1kernels.paged_attention(**paged),
                    "cascade": lambda: run_cascade(cascade)}, args.reps, best=best)
    return t, best


def bench_decode(args, dtype, seqs=16, kv=600, hq=8, hkv=2, d=64, bs=16):
    g = torch.Generator().manual_seed(1)
    nbps = (kv + bs - 1) // bs
    k_cache = torch.randn(seqs * nbps + 1, bs, hkv, d, generator=g).to(dtype)
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(seqs * nbps, generator=g).to(torch.int32).view(seqs, nbps)
    seq_lens = torch.full((seqs,), kv, dtype=torch.int32)
    q = torch.randn(seqs, hq, d, generator=g).to(dtype)
    cu_q = torch.arange(seqs + 1, dtype=torch.int32)
    key = torch.randn(seqs, hkv, d, generator=g).to(dtype)
    slots = (table[:, -1].long() * bs + (kv - 1) % bs).contiguous()
    tiny = dict(q=q[:1], k_cache=k_cache, v_cache=v_cache, block_tables=table[:1], seq_lens=torch.tensor([1], dtype=torch.int32),
                cu_seqlens_q=cu_q[:2])
    op = torch.ops.r1kernels

    def index_write():  # the same write with torch indexing
        k_cache.view(-1, hkv, d)[slots] = key
        v_cache.view(-1, hkv, d)[slots] = key

    with torch.no_grad():
        t = timeit({
            "decode paged_attention": lambda: r1kernels.paged_attention(q, k_cache, v_cache, table, seq_lens, cu_q),
            "decode, raw op (no Python checks)": lambda: op.paged_attention(q, k_cache, v_cache, table, seq_lens, cu_q, 0.125, True),
            "1 seq x 1 kv token (per-call overhead)": lambda: r1kernels.paged_attention(**tiny),
            "reshape_and_cache (16 tokens)": lambda: r1kernels.reshape_and_cache(key, key, k_cache, v_cache, slots),
            "torch index_put (16 tokens)": index_write,
        }, args.reps * 5)
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--branches", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prefix", type=int, default=512)
    ap.add_argument("--hq", type=int, default=8)
    ap.add_argument("--hkv", type=int, default=2)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--check-reference", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--cpu-time", action="store_true", help="time the process's CPU time, not the wall clock: steadier on a "
                    "loaded machine; with --threads 1 it is the single-core cost")
    args = ap.parse_args()
    global CLOCK
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        CLOCK = time.process_time
    if args.quick:
        args.branches, args.tokens, args.prefix, args.reps = 4, 8, 64, 5
    clock = "process CPU time" if args.cpu_time else "wall clock"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {clock}; "
          f"B={args.branches} branches x T={args.tokens} tokens on a "
          f"P={args.prefix}-token paged prefix, Hq={args.hq} Hkv={args.hkv} D={args.d} block_size={args.block_size}")
    print("| dtype | tree (ms) | per-branch paged (ms) | cascade (ms) | per-branch / tree | cascade / tree "
          "| per-branch / tree, fastest runs |")
    print("|---|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        t, best = bench_tree(args, dtype)
        print(f"| {str(dtype)[6:]} | {t['tree'] * 1e3:.3f} | {t['per-branch'] * 1e3:.3f} | {t['cascade'] * 1e3:.3f} | "
              f"{t['per-branch'] / t['tree']:.2f}x | {t['cascade'] / t['tree']:.2f}x | {best['per-branch'] / best['tree']:.2f}x |")
    print()
    print("| decode-sized call (16 seqs x 1 query, 600 kv tokens, Hq 8, Hkv 2, D 64) | fp32 (us) | bf16 (us) |")
    print("|---|---|---|")
    t32, t16 = bench_decode(args, torch.float32), bench_decode(args, torch.bfloat16)
    for k in t32:
        print(f"| {k} | {t32[k] * 1e6:.1f} | {t16[k] * 1e6:.1f} |")


if __name__ == "__main__":
    main()
