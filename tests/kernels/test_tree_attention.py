"""r1kernels.tree_attention (every node of one or more token trees attending to its tree's paged prefix,
its ancestors and itself) against reference.tree_attention; the C++ fused path's own cases; bad
input, opcheck, torch.compile; the Triton launcher and the CUDA kernels.

The tests named with a `backend` run the public function on each backend present (tests/kernels/
_backends.py): the C++ kernel, the plain-PyTorch kernel of r1kernels._torch and, where the shapes are
small enough for the interpreter, the Triton kernel under TRITON_INTERPRET=1. The test_triton_*
tests drive the Triton launchers directly on interpreter-sized shapes (chunk and block loops that
run more than once); the *_cuda tests run on a GPU and skip without one.
The long-prefix cases are too large for the interpreter: Triton runs the launcher test.
"""

from __future__ import annotations

import pytest
import torch
from _backends import backend_fixture
from _paged_inputs import DTYPES, cu, make_cache
from conftest import requires_cuda

import r1kernels
from r1kernels import reference
from r1kernels._library import has_cpp_kernel

backend = backend_fixture("tree_attention", backends=("cpp", "torch"))
small_backend = backend_fixture("tree_attention")  # the small cases run on Triton too
chain_backend = backend_fixture("tree_attention", "paged_attention", backends=("cpp", "torch"))


def random_parents(n, kind="random"):
    if kind == "chain":
        return list(range(-1, n - 1))
    if kind == "star":
        return [-1] + [0] * (n - 1)
    if kind == "branches":  # chains of 16 from separate roots (a search's branches off one prefix)
        return [-1 if i % 16 == 0 else i - 1 for i in range(n)]
    # random forest: each node picks an earlier node, sometimes none (another root)
    return [-1] + [int(torch.randint(-1, i, ())) if torch.rand(()) > 0.1 else -1 for i in range(1, n)]


def make_trees(sizes, kinds=None):
    kinds = kinds or ["random"] * len(sizes)
    parents = sum((random_parents(n, k) for n, k in zip(sizes, kinds)), [])
    return torch.tensor(parents, dtype=torch.int32), cu(sizes)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("hq,hkv,d", [(4, 2, 32), (2, 2, 24)])
def test_tree_attention_with_prefix(backend, dtype, atol, rtol, hq, hkv, d):
    sizes = [1, 17, 9, 33]
    parents, cu_nodes = make_trees(sizes, ["random", "chain", "star", "random"])
    prefix_lens = [0, 1, 16, 45]
    kc, vc, table, pl = make_cache(prefix_lens, 16, hkv, d, dtype, max_blocks=4)
    n = sum(sizes)
    q, k, v = torch.randn(n, hq, d).to(dtype), torch.randn(n, hkv, d).to(dtype), torch.randn(n, hkv, d).to(dtype)
    out, lse = r1kernels.tree_attention(q, k, v, parents, cu_nodes=cu_nodes, k_cache=kc, v_cache=vc, block_tables=table, prefix_lens=pl,
                                        return_lse=True)
    ref, ref_lse = reference.tree_attention(q, k, v, parents, cu_nodes, kc, vc, table, pl)
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("hq,hkv,d", [(4, 2, 32), (6, 2, 40), (3, 1, 64), (2, 2, 20)])
def test_long_prefix_many_nodes(backend, dtype, atol, rtol, hq, hkv, d):
    # prefixes of 64+ tokens under 16+ rows per work item take the C++ kernel's fused path (prefix
    # and ancestors as register-blocked matrix products in strips of 6 rows, an exact softmax);
    # short prefixes and small trees take the per-row loops throughout. Odd prefix lengths, trees
    # across node tiles (> 32 nodes), chains and a search's branches off the prefix; 3 query heads
    # per kv head (strips that split a node's rows), head_dim 40 (a last 8-wide column block) and 20
    # (not a multiple of 8: the per-row loops)
    sizes = [70, 5, 130, 20, 100, 43]
    parents, cu_nodes = make_trees(sizes, ["random", "chain", "random", "star", "chain", "branches"])
    prefix_lens = [67, 200, 64, 129, 77, 96]
    kc, vc, table, pl = make_cache(prefix_lens, 16, hkv, d, dtype, max_blocks=13)
    n = sum(sizes)
    q, k, v = torch.randn(n, hq, d).to(dtype), torch.randn(n, hkv, d).to(dtype), torch.randn(n, hkv, d).to(dtype)
    out, lse = r1kernels.tree_attention(q, k, v, parents, cu_nodes=cu_nodes, k_cache=kc, v_cache=vc, block_tables=table,
                                        prefix_lens=pl, return_lse=True)
    ref, ref_lse = reference.tree_attention(q, k, v, parents, cu_nodes, kc, vc, table, pl)
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)


def test_fused_path_ignores_keys_of_other_branches(backend):
    # every key of branch b leans along its own direction u_b, and each node's query points along the
    # next branch's: a non-ancestor then holds the row's largest score by far. Attending to it (a
    # wrong mask), or letting it set the softmax's max (every real term then underflows to the same
    # tiny value), gives far-off outputs
    torch.manual_seed(0)
    branches, length, P, hq, hkv, d = 4, 16, 80, 4, 1, 32
    n = branches * length
    parents = torch.tensor(random_parents(n, "branches"), dtype=torch.int32)
    kc, vc, table, pl = make_cache([P], 16, hkv, d, torch.float32)
    kc.mul_(0.05)
    u = torch.linalg.qr(torch.randn(d, branches))[0].T  # orthonormal directions, one per branch
    branch = torch.arange(n) // length
    k = (torch.randn(n, d) * 0.05 + 4 * u[branch]).unsqueeze(1)
    v = torch.randn(n, hkv, d)
    q = (200 * u[(branch + 1) % branches]).unsqueeze(1).expand(n, hq, d).contiguous()
    lens = torch.tensor([P], dtype=torch.int32)
    out = r1kernels.tree_attention(q, k, v, parents, k_cache=kc, v_cache=vc, block_tables=table, prefix_lens=lens)
    ref, ref_lse = reference.tree_attention(q, k, v, parents, None, kc, vc, table, lens)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    # the case is one where both mistakes show: the other branch's scores exceed the row's
    # log-partition by more than fp32's exp range (87)
    other = (q[:, 0] * k[(torch.arange(n) + length) % n, 0]).sum(-1) * d ** -0.5
    assert (other - ref_lse[:, 0]).min() > 90


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sizes,prefix_lens,hkv", [([150, 90], [96, 130], 2), ([150], [96], 1)])
def test_gathered_prefix_is_not_reused_across_calls(backend, threads, sizes, prefix_lens, hkv):
    # the C++ GEMM prefix gathers a (tree, kv head)'s prefix once per thread and reuses it for that
    # thread's next node tile of the same (tree, head) within the call: a second call on the same
    # shapes, after the cache was rewritten in place and the block table permuted, must see the new K/V
    # (one tree, one kv head: a call's first item has the (tree, head) of the call before's last)
    parents, cu_nodes = make_trees(sizes, ["branches", "random"][: len(sizes)])  # several node tiles per (tree, head)
    hq, d = 4, 32
    kc, vc, table, pl = make_cache(prefix_lens, 16, hkv, d, torch.float32, max_blocks=9)
    n = sum(sizes)
    q, k, v = torch.randn(n, hq, d), torch.randn(n, hkv, d), torch.randn(n, hkv, d)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for step in range(3):
            out = r1kernels.tree_attention(q, k, v, parents, cu_nodes=cu_nodes, k_cache=kc, v_cache=vc, block_tables=table, prefix_lens=pl)
            ref, _ = reference.tree_attention(q, k, v, parents, cu_nodes, kc, vc, table, pl)
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
            kc.copy_(torch.randn_like(kc))
            vc.mul_(-0.5)
            table, pl = table.flip(0).contiguous(), pl.flip(0).contiguous()
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_tree_attention_no_cache_one_tree(small_backend, dtype, atol, rtol):
    n, hq, hkv, d = 40, 4, 1, 16
    parents, _ = make_trees([n])
    q, k, v = torch.randn(n, hq, d).to(dtype), torch.randn(n, hkv, d).to(dtype), torch.randn(n, hkv, d).to(dtype)
    out = r1kernels.tree_attention(q, k, v, parents, scale=0.2)
    ref, _ = reference.tree_attention(q, k, v, parents, scale=0.2)
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


def test_reference_ancestor_mask_against_dense():
    # the oracle's mask, built independently: walk each node's parent chain
    parents, _ = make_trees([25])
    mask = reference.tree_ancestor_mask(parents)
    for i in range(25):
        anc, j = {i}, int(parents[i])
        while j >= 0:
            anc.add(j)
            j = int(parents[j])
        assert set(mask[i].nonzero().flatten().tolist()) == anc


def test_chain_equals_causal_paged_attention(chain_backend):
    """A chain after a prefix is an ordinary sequence: tree attention = causal paged attention with
    the chain's K/V written after the prefix."""
    P, n, hq, hkv, d, bs = 21, 12, 4, 2, 16, 8
    kc, vc, table, pl = make_cache([P + n], bs, hkv, d, torch.float32)
    q, k, v = torch.randn(n, hq, d), torch.randn(n, hkv, d), torch.randn(n, hkv, d)
    slots = torch.tensor([int(table[0, p // bs]) * bs + p % bs for p in range(P, P + n)])
    r1kernels.reshape_and_cache(k, v, kc, vc, slots)
    paged = r1kernels.paged_attention(q, kc, vc, table, pl, cu([n]))
    chain = torch.arange(-1, n - 1, dtype=torch.int32)
    tree = r1kernels.tree_attention(q, k, v, chain, k_cache=kc, v_cache=vc, block_tables=table,
                                    prefix_lens=torch.tensor([P], dtype=torch.int32))
    torch.testing.assert_close(tree, paged, atol=2e-5, rtol=2e-5)


def _tree_args():
    parents, cu_nodes = make_trees([3, 4])
    kc, vc, table, pl = make_cache([5, 0], 4, 2, 8, torch.float32)
    q, k, v = torch.randn(7, 4, 8), torch.randn(7, 2, 8), torch.randn(7, 2, 8)
    return dict(q=q, k=k, v=v, parents=parents, cu_nodes=cu_nodes, k_cache=kc, v_cache=vc, block_tables=table, prefix_lens=pl)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: a["parents"].__setitem__(4, 2), "parents must index a node of the same tree"),  # points into the tree before
        (lambda a: a["parents"].__setitem__(1, 1), "parents must index"),  # itself
        (lambda a: a["parents"].__setitem__(2, 5), "parents must index"),  # a later node
        (lambda a: a["parents"].__setitem__(0, -2), "parents must index"),
        (lambda a: a.update(parents=a["parents"].long()), "parents must be"),
        (lambda a: a.update(parents=a["parents"][:-1]), "parents must have 7"),
        (lambda a: a.update(k_cache=None), "must be given together"),
        (lambda a: a.update(k=a["k"][:, :1].expand(7, 3, 8).contiguous(), v=a["v"][:, :1].expand(7, 3, 8).contiguous()),
         "multiple of k's kv heads"),
        (lambda a: a.update(cu_nodes=torch.tensor([0, 3, 6], dtype=torch.int32)), "cu_nodes must start at 0"),
        (lambda a: a.update(prefix_lens=torch.tensor([5, 99], dtype=torch.int32)), "prefix_lens must be in"),
        (lambda a: a.update(v=a["v"].double()), "v must have q's dtype"),
    ],
)
def test_tree_attention_bad_input(mutate, match):
    a = _tree_args()
    mutate(a)
    with pytest.raises(ValueError, match=match):
        r1kernels.tree_attention(**a)


def test_opcheck():
    a = _tree_args()
    torch.library.opcheck(
        torch.ops.r1kernels.tree_attention.default,
        (a["q"], a["k"], a["v"], a["parents"], a["cu_nodes"], a["k_cache"], a["v_cache"], a["block_tables"], a["prefix_lens"], 0.35),
    )
    torch.library.opcheck(torch.ops.r1kernels.tree_attention.default,
                          (a["q"], a["k"], a["v"], a["parents"], a["cu_nodes"], None, None, None, None, 0.35))


def test_public_ops_trace_under_torch_compile():
    # fullgraph: the wrappers' checks trace (data checks skip while compiling) and the fakes give shapes
    a = _tree_args()
    kc, vc, table, pl = make_cache([7, 12], 4, 2, 8, torch.float32)
    q, cq = torch.randn(3, 4, 8), cu([1, 2])

    def f(q, kc, vc, table, pl, cq, tq, tk, tv, parents, cu_nodes):
        o1, l1 = r1kernels.paged_attention(q, kc, vc, table, pl, cq, return_lse=True)
        o2 = r1kernels.tree_attention(tq, tk, tv, parents, cu_nodes=cu_nodes)
        return r1kernels.merge_attention_states(o1, l1, o1, l1)[0], o2

    args = (q, kc, vc, table, pl, cq, a["q"], a["k"], a["v"], a["parents"], a["cu_nodes"])
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(*args)
    want = f(*args)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


# ---------------------------------------------------------------------------------------------
# Triton launcher


@pytest.mark.parametrize("with_prefix", [True, False])
def test_triton_tree_attention(with_prefix):
    from r1kernels.triton.tree_attention import tree_attention as triton_tree_attention

    parents, cu_nodes = make_trees([1, 6, 5], ["random", "random", "chain"])
    kc, vc, table, pl = make_cache([3, 0, 9], 4, 1, 12, torch.float32, max_blocks=3)
    q, k, v = torch.randn(12, 2, 12), torch.randn(12, 1, 12), torch.randn(12, 1, 12)
    cache = (kc, vc, table, pl) if with_prefix else (None, None, None, None)
    args = (q, k, v, parents, cu_nodes, *cache)
    if torch.cuda.is_available():
        args = tuple(x.cuda() if x is not None else None for x in args)
    out, lse = triton_tree_attention(*args, 0.3)
    ref, ref_lse = reference.tree_attention(*args, 0.3)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# CUDA


@requires_cuda
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_cuda_tree_attention(dtype, atol, rtol):
    parents, cu_nodes = make_trees([5, 20])
    kc, vc, table, pl = make_cache([18, 3], 16, 2, 64, dtype, max_blocks=2)
    q, k, v = torch.randn(25, 4, 64).to(dtype), torch.randn(25, 2, 64).to(dtype), torch.randn(25, 2, 64).to(dtype)
    args = [x.cuda() for x in (q, k, v, parents, cu_nodes, kc, vc, table, pl)]
    out = r1kernels.tree_attention(*args[:4], cu_nodes=args[4], k_cache=args[5], v_cache=args[6], block_tables=args[7], prefix_lens=args[8])
    ref, _ = reference.tree_attention(*args)
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


def _cuda_cpp_kernel():
    # the CUDA C++ kernel (csrc/cuda/tree_attention.cu) where r1kernels._C was built with CUDA; where it
    # is, Triton registers nothing for the op, so the CUDA key runs it
    if not has_cpp_kernel("tree_attention", "cuda"):
        pytest.skip("r1kernels._C was built without the CUDA ops (no nvcc or a CPU torch at install time)")
    from r1kernels import _library

    assert "tree_attention" not in _library.TRITON_REGISTERED
    return torch.ops.r1kernels.tree_attention.default


@requires_cuda
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize(
    "sizes,kinds,prefix_lens,block_size,hq,hkv,d",
    [
        # an empty tree, a single node, chains and random trees deeper than the kernel's 64-key chunk,
        # prefixes across several chunks and partial blocks, odd block size and head_dim, GQA 3:1
        ([1, 0, 37, 70, 130], ["random", "chain", "star", "random", "chain"], [5, 0, 64, 129, 200], 5, 6, 2, 36),
        ([9, 66], ["chain", "random"], [1, 77], 16, 8, 1, 128),  # 8 query heads per kv head, head_dim 128
        ([3, 21, 2], None, [0, 0, 0], 16, 2, 2, 24),  # a cache, but no prefix
        ([12, 40], None, None, 1, 4, 2, 20),  # no cache
    ],
)
def test_cuda_cpp_tree_attention_against_reference(dtype, atol, rtol, sizes, kinds, prefix_lens, block_size, hq, hkv, d):
    kernel = _cuda_cpp_kernel()
    parents, cu_nodes = make_trees(sizes, kinds)
    n = sum(sizes)
    q, k, v = (torch.randn(n, h, d).to(dtype).cuda() for h in (hq, hkv, hkv))
    parents, cu_nodes = parents.cuda(), cu_nodes.cuda()
    if prefix_lens is None:
        cache = (None, None, None, None)
    else:
        kc, vc, table, pl = make_cache(prefix_lens, block_size, hkv, d, dtype)
        cache = (kc.cuda(), vc.cuda(), table.cuda(), pl.cuda())
    out, lse = kernel(q, k, v, parents, cu_nodes, *cache, 0.17)
    ref, ref_lse = reference.tree_attention(q, k, v, parents, cu_nodes, *cache, 0.17)
    assert out.dtype == dtype and out.device == q.device
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)
    # through the public wrapper (its Python data checks run for CUDA tensors)
    kw = dict(zip(("k_cache", "v_cache", "block_tables", "prefix_lens"), cache))
    torch.testing.assert_close(r1kernels.tree_attention(q, k, v, parents, cu_nodes=cu_nodes, scale=0.17, **kw), out, atol=0, rtol=0)


@requires_cuda
def test_cuda_cpp_tree_attention_refuses_too_many_heads_per_kv_head():
    # the kernel keeps (Hq / Hkv) x head_dim accumulators in shared memory, as the CUDA paged attention does
    kernel = _cuda_cpp_kernel()
    q, k = torch.randn(2, 64, 128, device="cuda"), torch.randn(2, 1, 128, device="cuda")
    parents, cu_nodes = torch.tensor([-1, 0], dtype=torch.int32, device="cuda"), torch.tensor([0, 2], dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="shared memory"):
        kernel(q, k, k, parents, cu_nodes, None, None, None, None, 0.1)
