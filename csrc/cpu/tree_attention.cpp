// r1kernels::tree_attention on the CPU.
//
// Work item = (tree, kv head, tile of up to kNodeTile nodes). An item first runs the tree's paged
// prefix for all its rows (every node and every query head of the kv head: the prefix is read once
// per item, not once per branch): as two GEMMs (gemm_prefix) where it is long enough and the rows
// many enough, else block by block through the online softmax; then each node's ancestors-and-self,
// found by walking `parents` (depth <= tree size).
//
// Tiles of 32 nodes: at 16 x 32 nodes on a 512-token prefix (Hq 8, Hkv 2, D 64) the item's score
// matrix (128 rows x 512) then stays in a core's L2 between the GEMM, the softmax and the second
// GEMM; 64-node tiles were ~5% slower, 16-node ones too (more, smaller GEMM calls). The gathered
// prefix is reused by a thread's consecutive items of one (tree, head), so the smaller tiles do not
// gather it more often.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../tree_attention_args.h"
#include "attention_common.h"

namespace {

constexpr int64_t kNodeTile = 32;

struct TreeArgs {
  const void *q, *k, *v, *k_cache, *v_cache;
  void* out;
  float* lse;
  const int32_t *parents, *cu, *table, *prefix_lens;
  int64_t max_blocks, block_size, hq, hkv, d;
  float scale;
  uint64_t call;  // this call's id: a thread's gathered prefix is reused by its next item of the same (tree, head)
};

std::atomic<uint64_t> g_calls{0};

struct Item {
  int64_t tree, head, n0, n1;
};

// The prefix phase as two GEMMs: every row of the item (its nodes x the kv head's query heads)
// against the whole paged prefix at once, S = Q K^T, an exact softmax per row (all the prefix's
// scores are at hand), then O = P V, leaving the rows' online-softmax state (m, l, O) for the
// ancestors. The prefix is shared by every row, which is what turns per-row dot products into a
// matrix product; with >= 16 rows and >= 64 keys BLAS beats the per-row loops (measured 16 x 32
// nodes on a 512-token prefix: see bench/RESULTS.md).
constexpr int64_t kGemmMinPrefix = 64;
constexpr int64_t kGemmMinRows = 16;

template <typename T>
R1_INLINE void gemm_prefix(const TreeArgs& p, const Item& it, r1::RowTile& tile, int64_t rows, int64_t P) {
  thread_local std::vector<float> kp, vp, sc;
  thread_local uint64_t gathered_call = 0;
  thread_local int64_t gathered_tree = -1, gathered_head = -1;
  const int64_t D = p.d, bs = p.block_size, H = it.head, tok_stride = p.hkv * D;
  sc.resize(rows * P);
  if (gathered_call != p.call || gathered_tree != it.tree || gathered_head != H) {
    // gather the kv head's prefix rows out of their blocks, once per thread for the items of one
    // (tree, head) it runs in a row (items are ordered so that the node tiles of one are adjacent)
    kp.resize(P * D);
    vp.resize(P * D);
    const T* kc = static_cast<const T*>(p.k_cache);
    const T* vc = static_cast<const T*>(p.v_cache);
    for (int64_t t = 0; t < P; ++t) {
      const int64_t id = p.table[it.tree * p.max_blocks + t / bs];
      const int64_t off = (id * bs + t % bs) * tok_stride + H * D;
      r1::load_row(kp.data() + t * D, kc + off, D);
      r1::load_row(vp.data() + t * D, vc + off, D);
    }
    gathered_call = p.call;
    gathered_tree = it.tree;
    gathered_head = H;
  }
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor Q = at::from_blob(tile.Q.data(), {rows, D}, f32);
  const at::Tensor K = at::from_blob(kp.data(), {P, D}, f32);
  const at::Tensor V = at::from_blob(vp.data(), {P, D}, f32);
  at::Tensor S = at::from_blob(sc.data(), {rows, P}, f32);
  at::mm_out(S, Q, K.t());
  const int64_t P8 = P & ~int64_t(7);
  for (int64_t r = 0; r < rows; ++r) {
    float* s = sc.data() + r * P;
    r1::vf8 vmax = r1::vf8{} + r1::kNegInf;
    for (int64_t t = 0; t < P8; t += 8) {
      const r1::vf8 x = r1::loadu8(s + t);
      vmax = x > vmax ? x : vmax;
    }
    float mx = r1::kNegInf;
    for (int c = 0; c < 8; ++c) mx = std::max(mx, vmax[c]);
    for (int64_t t = P8; t < P; ++t) mx = std::max(mx, s[t]);
    // exp(s - mx) as 2^(s log2 e - mx log2 e): one FMA in, the cheaper exp2 (the exp pass over the
    // rows x P scores was the largest cost after the GEMMs)
    constexpr float kLog2e = 1.44269504088896341f;
    const r1::vf8 neg_m2 = r1::vf8{} - mx * kLog2e;
    r1::vf8 acc = r1::vf8{};
    for (int64_t t = 0; t < P8; t += 8) {
      const r1::vf8 e = r1::fast_exp2_8_finite(r1::loadu8(s + t) * kLog2e + neg_m2);
      r1::storeu8(s + t, e);
      acc += e;
    }
    float sum = r1::hsum8(acc);
    for (int64_t t = P8; t < P; ++t) {
      s[t] = r1::fast_exp(s[t] - mx);
      sum += s[t];
    }
    tile.m[r] = mx;
    tile.l[r] = sum;
  }
  at::Tensor O = at::from_blob(tile.O.data(), {rows, D}, f32);
  at::mm_out(O, S, V);
}

template <typename T>
R1_INLINE void tree_item(const TreeArgs& p, const Item& it) {
  thread_local r1::RowTile tile;
  thread_local std::vector<float> kbuf, vbuf;
  thread_local std::vector<const float*> kp, vp;
  thread_local std::vector<int64_t> slot;
  const int64_t G = p.hq / p.hkv, D = p.d, bs = p.block_size, H = it.head;
  const int64_t a = p.cu[it.tree];
  const int64_t rows = (it.n1 - it.n0) * G;
  tile.reset(rows, D, std::max(bs, it.n1));
  const T* q = static_cast<const T*>(p.q);
  for (int64_t i = it.n0; i < it.n1; ++i)
    for (int64_t g = 0; g < G; ++g)
      r1::load_row(tile.Q.data() + ((i - it.n0) * G + g) * D, q + ((a + i) * p.hq + H * G + g) * D, D, p.scale);
  constexpr bool is_f32 = std::is_same<T, float>::value;
  const int64_t tok_stride = p.hkv * D;
  kp.resize(std::max(bs, it.n1));
  vp.resize(kp.size());
  // prefix: identical for every row of the item
  const int64_t P_len = p.k_cache != nullptr ? p.prefix_lens[it.tree] : 0;
  if (P_len >= kGemmMinPrefix && rows >= kGemmMinRows) {
    gemm_prefix<T>(p, it, tile, rows, P_len);
  } else if (p.k_cache != nullptr) {
    const int64_t P = p.prefix_lens[it.tree];
    const T* kc = static_cast<const T*>(p.k_cache);
    const T* vc = static_cast<const T*>(p.v_cache);
    if (!is_f32) {
      kbuf.resize(bs * D);
      vbuf.resize(bs * D);
    }
    for (int64_t b = 0; b * bs < P; ++b) {
      const int64_t id = p.table[it.tree * p.max_blocks + b];
      const int64_t n = std::min(bs, P - b * bs);
      const int64_t base = (id * bs * p.hkv + H) * D;
      for (int64_t t = 0; t < n; ++t) {
        const T* ks = kc + base + t * tok_stride;
        const T* vs = vc + base + t * tok_stride;
        if constexpr (is_f32) {
          kp[t] = ks;
          vp[t] = vs;
        } else {
          r1::load_row(kbuf.data() + t * D, ks, D);
          r1::load_row(vbuf.data() + t * D, vs, D);
          kp[t] = kbuf.data() + t * D;
          vp[t] = vbuf.data() + t * D;
        }
      }
      for (int64_t r = 0; r < rows; ++r) tile.attend_row(r, n, kp.data(), vp.data());
    }
  }
  // ancestors and self: nodes [0, n1) of the tree hold every ancestor of the item's nodes
  const T* k = static_cast<const T*>(p.k) + (a * p.hkv + H) * D;
  const T* v = static_cast<const T*>(p.v) + (a * p.hkv + H) * D;
  const int32_t* par = p.parents + a;
  // the union of the item's nodes' ancestors as contiguous float32 rows, each node once (a tile of
  // a branch: its own chain, not every node before it): slot[j] is j's row in kbuf / vbuf. Float32
  // too: read in place, rows hkv * D apart, the walk was slower than the copy
  slot.assign(it.n1, -1);
  int64_t used = 0;
  for (int64_t i = it.n0; i < it.n1; ++i)
    for (int64_t j = i; j >= 0 && slot[j] < 0; j = par[j]) slot[j] = used++;
  kbuf.resize(used * D);
  vbuf.resize(used * D);
  for (int64_t j = 0; j < it.n1; ++j)
    if (slot[j] >= 0) {
      r1::load_row(kbuf.data() + slot[j] * D, k + j * tok_stride, D);
      r1::load_row(vbuf.data() + slot[j] * D, v + j * tok_stride, D);
    }
  for (int64_t i = it.n0; i < it.n1; ++i) {
    int64_t depth = 0;
    for (int64_t j = i; j >= 0; j = par[j], ++depth) {
      kp[depth] = kbuf.data() + slot[j] * D;
      vp[depth] = vbuf.data() + slot[j] * D;
    }
    for (int64_t g = 0; g < G; ++g) tile.attend_row((i - it.n0) * G + g, depth, kp.data(), vp.data());
  }
  T* out = static_cast<T*>(p.out);
  for (int64_t i = it.n0; i < it.n1; ++i)
    for (int64_t g = 0; g < G; ++g) {
      const int64_t row = (a + i) * p.hq + H * G + g;
      tile.finish_row((i - it.n0) * G + g, out + row * D, p.lse + row);
    }
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void run_tree_item(const TreeArgs& p, const Item& it, int dtype) {
  switch (dtype) {
    case 0: tree_item<float>(p, it); break;
    case 1: tree_item<c10::BFloat16>(p, it); break;
    default: tree_item<c10::Half>(p, it); break;
  }
}

std::tuple<at::Tensor, at::Tensor> tree_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& parents,
                                                      const at::Tensor& cu_nodes, const std::optional<at::Tensor>& k_cache,
                                                      const std::optional<at::Tensor>& v_cache, const std::optional<at::Tensor>& block_tables,
                                                      const std::optional<at::Tensor>& prefix_lens, double scale) {
  const r1::TreeArgShapes shapes = r1::check_tree_attention_args(q, k, v, parents, cu_nodes, k_cache, v_cache, block_tables, prefix_lens);
  const int64_t N = shapes.N, hq = shapes.hq, d = shapes.d, hkv = shapes.hkv, T = shapes.num_trees;
  const bool has_cache = shapes.has_cache;
  int dt = 0;
  switch (q.scalar_type()) {
    case at::kFloat: dt = 0; break;
    case at::kBFloat16: dt = 1; break;
    case at::kHalf: dt = 2; break;
    default: TORCH_CHECK_VALUE(false, "q must be float32, bfloat16 or float16, got ", q.scalar_type());
  }
  auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous(), pc = parents.contiguous(), cc = cu_nodes.contiguous();
  const int32_t* cu = cc.data_ptr<int32_t>();
  const int32_t* par = pc.data_ptr<int32_t>();
  bool cu_ok = cu[0] == 0 && cu[T] == N;
  for (int64_t t = 0; t < T; ++t) cu_ok = cu_ok && cu[t + 1] >= cu[t];
  TORCH_CHECK_VALUE(cu_ok, "cu_nodes must start at 0, never decrease and end at ", N);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < cu[t + 1] - cu[t]; ++i) {
      const int64_t pi = par[cu[t] + i];
      TORCH_CHECK_VALUE(pi >= -1 && pi < i, "parents must index a node of the same tree before the child (-1 for a root), so the nodes form trees in "
                        "topological order; node ", cu[t] + i, " (index ", i, " in its tree) has parent ", pi);
    }
  at::Tensor tb, pl;
  int64_t max_blocks = 0, bs = 1;
  if (has_cache) {
    const auto& kcache = *k_cache;
    tb = block_tables->contiguous();
    pl = prefix_lens->contiguous();
    max_blocks = tb.size(1);
    bs = kcache.size(1);
    const int64_t nb = kcache.size(0);
    const int32_t* table = tb.data_ptr<int32_t>();
    const int32_t* lens = pl.data_ptr<int32_t>();
    for (int64_t t = 0; t < T; ++t) {
      TORCH_CHECK_VALUE(lens[t] >= 0 && lens[t] <= max_blocks * bs, "prefix_lens must be in [0, ", max_blocks * bs, "] (max_blocks * block_size of block_tables), got ", lens[t], " for tree ", t);
      for (int64_t b = 0; b * bs < lens[t]; ++b) {
        const int64_t id = table[t * max_blocks + b];
        TORCH_CHECK_VALUE(id >= 0 && id < nb, "block_tables holds block ids outside [0, ", nb, ") in the blocks the sequences use: ", id, " at (", t, ", ", b, ")");
      }
    }
  }
  std::vector<Item> items;
  int64_t macs = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t nt = cu[t + 1] - cu[t];
    macs += nt * hq * ((has_cache ? pl.data_ptr<int32_t>()[t] : 0) + nt) * d * 2;
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < hkv; ++h)
      for (int64_t n0 = 0; n0 < cu[t + 1] - cu[t]; n0 += kNodeTile) items.push_back({t, h, n0, std::min<int64_t>(cu[t + 1] - cu[t], n0 + kNodeTile)});
  auto out = at::empty_like(qc);
  auto lse = at::empty({N, hq}, q.options().dtype(at::kFloat));
  TreeArgs p{qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), has_cache ? k_cache->data_ptr() : nullptr, has_cache ? v_cache->data_ptr() : nullptr,
             out.data_ptr(), lse.data_ptr<float>(), par, cu, has_cache ? tb.data_ptr<int32_t>() : nullptr,
             has_cache ? pl.data_ptr<int32_t>() : nullptr, max_blocks, bs, hq, hkv, d, static_cast<float>(scale), ++g_calls};
  r1::parallel_items(static_cast<int64_t>(items.size()), macs, [&](int64_t i) { run_tree_item(p, items[i], dt); });
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(r1kernels, CPU, m) { m.impl("tree_attention", &tree_attention_cpu); }
