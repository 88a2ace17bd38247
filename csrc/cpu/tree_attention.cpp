// r1kernels::tree_attention on the CPU.
//
// Work item = (tree, kv head, tile of up to kNodeTile nodes). Its rows (every node of the tile and
// every query head of the kv head) attend to the tree's paged prefix, read once per item rather
// than once per branch, and to each node's ancestors-and-self, found by walking `parents` (depth <=
// tree size). Where the prefix is long enough and the rows many enough both go through the fused
// path below at once (register-blocked matrix products, an exact softmax); otherwise the prefix goes
// block by block through the online softmax and then the ancestors, one row at a time.
//
// Tiles of 32 nodes: at 16 x 32 nodes on a 512-token prefix (Hq 8, Hkv 2, D 64) 64-node tiles were
// ~5% slower (with the GEMMs of an earlier version); 16-node ones measured the same on the fused
// path. The packed prefix is reused by a thread's consecutive items of one (tree, head), so smaller
// tiles do not pack it more often.
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
  uint64_t call;  // this call's id: a thread's packed prefix is reused by its next item of the same (tree, head)
};

std::atomic<uint64_t> g_calls{0};

struct Item {
  int64_t tree, head, n0, n1;
};

// Fused path: every row of the item (its nodes x the kv head's query heads) against the tree's
// paged prefix and the item's ancestors at once, in strips of kStrip rows: the strip's scores
// against all P prefix keys and the U ancestor keys (S = Q K^T, register-blocked kStrip x 16; an
// ancestor column a row's node does not descend from is -inf), an exact softmax per row (all its
// scores are at hand), then O = P V (kStrip x 16 blocks of head_dim). The prefix is shared by every
// row, which is what makes this a matrix product and lets it run near the FMA units' peak; the
// strip's scores (kStrip x (P + U) floats) stay in L1 between the three passes, and K and V are
// packed in the order the two micro-kernels read them: the prefix once per (tree, head), the
// ancestors once per item. Measured at 16 x 32 nodes on a 512-token prefix (bench/RESULTS.md):
// two at::mm calls per item spent ~12% of the call in MKL's packing, zeroing and scaling, and the
// ancestors one row at a time cost 10% of the call for 3% of its multiply-adds.
constexpr int64_t kGemmMinPrefix = 64;
constexpr int64_t kGemmMinRows = 16;
constexpr int kStrip = 6;  // rows per micro-kernel: 2 x kStrip accumulators + 2 loads + 1 broadcast = 15 of AVX2's 16 registers

// Keys and values packed for the micro-kernels: K as panels of 16 keys [n16 / 16][D][16], V as
// column blocks [D / 16][n16][16] (then one [n16][8] when D % 16 == 8), zero past n.
struct Panels {
  std::vector<float> k, v, zero;
  int64_t n = 0, n16 = 0;

  void reset(int64_t keys, int64_t D) {
    n = keys;
    n16 = (keys + 15) & ~int64_t(15);
    k.resize(n16 * D);
    v.resize(n16 * D);
    zero.assign(D, 0.f);
  }
  // keys [t0, t0 + 16) from rows krow[j], vrow[j] (D floats each) for j < valid, zero rows past
  // them. K is written in whole 16-float lines (the transpose reads 16 rows at once, all in L1)
  R1_INLINE void put_panel(int64_t t0, int64_t valid, const float** krow, const float** vrow, int64_t D) {
    for (int64_t j = valid; j < 16; ++j) krow[j] = vrow[j] = zero.data();
    float* kpanel = k.data() + t0 * D;
    for (int64_t d = 0; d < D; ++d)
      for (int j = 0; j < 16; ++j) kpanel[d * 16 + j] = krow[j][d];
    for (int j = 0; j < 16; ++j) {
      const int64_t t = t0 + j;
      int64_t d0 = 0;
      for (; d0 + 16 <= D; d0 += 16) {
        float* dst = v.data() + d0 * n16 + t * 16;
        r1::storeu8(dst, r1::loadu8(vrow[j] + d0));
        r1::storeu8(dst + 8, r1::loadu8(vrow[j] + d0 + 8));
      }
      if (d0 < D) r1::storeu8(v.data() + d0 * n16 + t * 8, r1::loadu8(vrow[j] + d0));
    }
  }
};

// S[r][0:16] = Q[r] . Kpanel[:, 0:16] for MR rows, stored and folded into each row's lane-wise
// running max. Keys past `valid` (the padding) get -inf; with MASKED, so do the keys whose lane in
// the row's mask (mrow[r][0:16], 0 or -1) is 0.
template <int MR, bool MASKED>
R1_INLINE void score_tile(const float* __restrict q, int64_t D, const float* __restrict kpanel, float* __restrict s, int64_t lds,
                          r1::vf8* rmax, int64_t valid, const int32_t* const* mrow) {
  r1::vf8 c0[MR], c1[MR];
  for (int r = 0; r < MR; ++r) c0[r] = c1[r] = r1::vf8{};
  for (int64_t d = 0; d < D; ++d) {
    const r1::vf8 b0 = r1::loadu8(kpanel + d * 16), b1 = r1::loadu8(kpanel + d * 16 + 8);
    for (int r = 0; r < MR; ++r) {
      const float a = q[r * D + d];  // scalar * vector: a broadcast load (vf8{} + a would add 0 first)
      c0[r] += a * b0;
      c1[r] += a * b1;
    }
  }
  const r1::vf8 ninf = r1::vf8{} + r1::kNegInf;
  if constexpr (MASKED) {
    for (int r = 0; r < MR; ++r) {
      c0[r] = r1::loadu8i(mrow[r]) ? c0[r] : ninf;
      c1[r] = r1::loadu8i(mrow[r] + 8) ? c1[r] : ninf;
    }
  } else if (valid < 16) {
    const r1::vi8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
    const r1::vi8 ok0 = lane < static_cast<int32_t>(valid), ok1 = lane + 8 < static_cast<int32_t>(valid);
    for (int r = 0; r < MR; ++r) {
      c0[r] = ok0 ? c0[r] : ninf;
      c1[r] = ok1 ? c1[r] : ninf;
    }
  }
  for (int r = 0; r < MR; ++r) {
    r1::storeu8(s + r * lds, c0[r]);
    r1::storeu8(s + r * lds + 8, c1[r]);
    const r1::vf8 mx = c0[r] > c1[r] ? c0[r] : c1[r];
    rmax[r] = mx > rmax[r] ? mx : rmax[r];
  }
}

// O[r][0:8 NV] (+)= P[r][0:n] . Vpanel[0:n][0:8 NV] for MR rows (Vpanel rows 8 NV floats apart).
template <int MR, int NV, bool ACC>
R1_INLINE void pv_tile(const float* __restrict pr, int64_t ldp, int64_t n, const float* __restrict vpanel, float* __restrict o, int64_t ldo) {
  r1::vf8 c[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NV; ++j) c[r][j] = ACC ? r1::loadu8(o + r * ldo + 8 * j) : r1::vf8{};
  for (int64_t t = 0; t < n; ++t) {
    r1::vf8 b[NV];
    for (int j = 0; j < NV; ++j) b[j] = r1::loadu8(vpanel + t * 8 * NV + 8 * j);
    for (int r = 0; r < MR; ++r) {
      const float a = pr[r * ldp + t];
      for (int j = 0; j < NV; ++j) c[r][j] += a * b[j];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NV; ++j) r1::storeu8(o + r * ldo + 8 * j, c[r][j]);
}

// O[r][0:D] (+)= P[r][0:n] . V[0:n] for MR rows, V's column blocks in turn.
template <int MR, bool ACC>
R1_INLINE void pv_blocks(const float* s, int64_t lds, const Panels& pk, int64_t n, float* o, int64_t D) {
  int64_t d0 = 0;
  for (; d0 + 16 <= D; d0 += 16) pv_tile<MR, 2, ACC>(s, lds, n, pk.v.data() + d0 * pk.n16, o + d0, D);
  if (d0 < D) pv_tile<MR, 1, ACC>(s, lds, n, pk.v.data() + d0 * pk.n16, o + d0, D);
}

// exp(s - mx) over n scores as 2^(s log2 e - mx log2 e) (one FMA in, the cheaper exp2), in place;
// returns their sum. -inf scores go to 0, which exp2_finite does not do by itself: with MASKED any of
// them (masked ancestors), else only past `valid` (the padding).
template <bool MASKED>
R1_INLINE float exp_scores(float* s, int64_t n, int64_t valid, float mx) {
  constexpr float kLog2e = 1.44269504088896341f;
  const r1::vf8 neg_m2 = r1::vf8{} - mx * kLog2e, ninf = r1::vf8{} + r1::kNegInf;
  const r1::vi8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
  r1::vf8 acc = r1::vf8{};
  for (int64_t t = 0; t < n; t += 8) {
    const r1::vf8 x = r1::loadu8(s + t);
    r1::vf8 e = r1::fast_exp2_8_finite(x * kLog2e + neg_m2);
    if constexpr (MASKED) {
      e = x > ninf ? e : r1::vf8{};
    } else if (t + 8 > valid) {
      e = lane < static_cast<int32_t>(valid - t) ? e : r1::vf8{};
    }
    r1::storeu8(s + t, e);
    acc += e;
  }
  return r1::hsum8(acc);
}

// One strip of MR rows starting at the item's row r0: scores against the prefix and the ancestors,
// softmax, P V; sets the rows' (m, l, O). anc_cols[node]: the ancestor columns (whole panels) that
// hold any of the node's ancestors; the strip skips the panels none of its rows' nodes need (in a
// chain's tile, the first node needs one of its two).
template <int MR>
R1_INLINE void fused_strip(r1::RowTile& tile, int64_t r0, const Panels& pre, const Panels& anc, const int32_t* mask, const int64_t* anc_cols,
                           int64_t G, float* s) {
  const int64_t D = tile.D, W = pre.n16 + anc.n16;
  const float* q = tile.Q.data() + r0 * D;
  r1::vf8 rmax[MR];
  for (int r = 0; r < MR; ++r) rmax[r] = r1::vf8{} + r1::kNegInf;
  for (int64_t t0 = 0; t0 < pre.n16; t0 += 16) score_tile<MR, false>(q, D, pre.k.data() + t0 * D, s + t0, W, rmax, pre.n - t0, nullptr);
  const int32_t* mrow[MR];
  int64_t A = 0;
  for (int r = 0; r < MR; ++r) {
    mrow[r] = mask + ((r0 + r) / G) * anc.n16;
    A = std::max(A, anc_cols[(r0 + r) / G]);
  }
  for (int64_t t0 = 0; t0 < A; t0 += 16) {
    score_tile<MR, true>(q, D, anc.k.data() + t0 * D, s + pre.n16 + t0, W, rmax, 16, mrow);
    for (int r = 0; r < MR; ++r) mrow[r] += 16;
  }
  for (int r = 0; r < MR; ++r) {
    float mx = r1::kNegInf;
    for (int c = 0; c < 8; ++c) mx = std::max(mx, rmax[r][c]);
    tile.m[r0 + r] = mx;
    tile.l[r0 + r] = exp_scores<false>(s + r * W, pre.n16, pre.n, mx) + exp_scores<true>(s + r * W + pre.n16, A, A, mx);
  }
  float* o = tile.O.data() + r0 * D;
  pv_blocks<MR, false>(s, W, pre, pre.n16, o, D);
  pv_blocks<MR, true>(s + pre.n16, W, anc, A, o, D);
}

// The fused path for an item: packs the prefix (once per thread for the items of one (tree, head)
// it runs in a row: items are ordered so that the node tiles of one are adjacent) and the item's
// ancestors, then runs the strips.
template <typename T>
R1_INLINE void fused_item(const TreeArgs& p, const Item& it, r1::RowTile& tile, int64_t rows, int64_t P, const float* anc_k,
                          const float* anc_v, const int64_t* slot, int64_t used) {
  thread_local Panels pre, anc;
  thread_local std::vector<float> sc, row;
  thread_local std::vector<int32_t> mask;
  thread_local std::vector<int64_t> anc_cols;
  thread_local uint64_t packed_call = 0;
  thread_local int64_t packed_tree = -1, packed_head = -1;
  const int64_t D = p.d, bs = p.block_size, H = it.head, tok_stride = p.hkv * D, G = p.hq / p.hkv;
  if (packed_call != p.call || packed_tree != it.tree || packed_head != H) {
    pre.reset(P, D);
    const T* kc = static_cast<const T*>(p.k_cache);
    const T* vc = static_cast<const T*>(p.v_cache);
    const float* kr[16];
    const float* vr[16];
    constexpr bool is_f32 = std::is_same<T, float>::value;
    if (!is_f32) row.resize(32 * D);
    for (int64_t t0 = 0; t0 < P; t0 += 16) {
      const int64_t valid = std::min<int64_t>(16, P - t0);
      for (int64_t j = 0; j < valid; ++j) {
        const int64_t t = t0 + j;
        const int64_t off = (static_cast<int64_t>(p.table[it.tree * p.max_blocks + t / bs]) * bs + t % bs) * tok_stride + H * D;
        if constexpr (is_f32) {  // float32 rows are read in place
          kr[j] = reinterpret_cast<const float*>(kc + off);
          vr[j] = reinterpret_cast<const float*>(vc + off);
        } else {
          r1::load_row(row.data() + j * D, kc + off, D);
          r1::load_row(row.data() + (16 + j) * D, vc + off, D);
          kr[j] = row.data() + j * D;
          vr[j] = row.data() + (16 + j) * D;
        }
      }
      pre.put_panel(t0, valid, kr, vr, D);
    }
    packed_call = p.call;
    packed_tree = it.tree;
    packed_head = H;
  }
  anc.reset(used, D);
  for (int64_t t0 = 0; t0 < used; t0 += 16) {
    const float* kr[16];
    const float* vr[16];
    const int64_t valid = std::min<int64_t>(16, used - t0);
    for (int64_t j = 0; j < valid; ++j) {
      kr[j] = anc_k + (t0 + j) * D;
      vr[j] = anc_v + (t0 + j) * D;
    }
    anc.put_panel(t0, valid, kr, vr, D);
  }
  // mask[node][slot] = -1 where the slot's node is the node or one of its ancestors
  const int32_t* par = p.parents + p.cu[it.tree];
  mask.assign((it.n1 - it.n0) * anc.n16, 0);
  anc_cols.resize(it.n1 - it.n0);
  for (int64_t i = it.n0; i < it.n1; ++i) {
    int64_t last = 0;
    for (int64_t j = i; j >= 0; j = par[j]) {
      mask[(i - it.n0) * anc.n16 + slot[j]] = -1;
      last = std::max(last, slot[j]);
    }
    anc_cols[i - it.n0] = (last + 16) & ~int64_t(15);
  }
  const int64_t W = pre.n16 + anc.n16;
  sc.resize(kStrip * W);
  int64_t r0 = 0;
  for (; r0 + kStrip <= rows; r0 += kStrip) fused_strip<kStrip>(tile, r0, pre, anc, mask.data(), anc_cols.data(), G, sc.data());
  switch (rows - r0) {
    case 1: fused_strip<1>(tile, r0, pre, anc, mask.data(), anc_cols.data(), G, sc.data()); break;
    case 2: fused_strip<2>(tile, r0, pre, anc, mask.data(), anc_cols.data(), G, sc.data()); break;
    case 3: fused_strip<3>(tile, r0, pre, anc, mask.data(), anc_cols.data(), G, sc.data()); break;
    case 4: fused_strip<4>(tile, r0, pre, anc, mask.data(), anc_cols.data(), G, sc.data()); break;
    case 5: fused_strip<5>(tile, r0, pre, anc, mask.data(), anc_cols.data(), G, sc.data()); break;
    default: break;
  }
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
  // ancestors and self: nodes [0, n1) of the tree hold every ancestor of the item's nodes; their
  // union as contiguous float32 rows, each node once (a tile of a branch: its own chain, not every
  // node before it): slot[j] is j's row in kbuf / vbuf. Float32 too: read in place, rows hkv * D
  // apart, the walk was slower than the copy
  const T* k = static_cast<const T*>(p.k) + (a * p.hkv + H) * D;
  const T* v = static_cast<const T*>(p.v) + (a * p.hkv + H) * D;
  const int32_t* par = p.parents + a;
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
  const int64_t P = p.k_cache != nullptr ? p.prefix_lens[it.tree] : 0;
  if (P >= kGemmMinPrefix && rows >= kGemmMinRows && D % 8 == 0) {
    fused_item<T>(p, it, tile, rows, P, kbuf.data(), vbuf.data(), slot.data(), used);
  } else {
    // few rows or a short prefix: block by block through the online softmax, then the ancestors
    kp.resize(std::max(bs, it.n1));
    vp.resize(kp.size());
    thread_local std::vector<float> kblk, vblk;
    if (!is_f32) {
      kblk.resize(bs * D);
      vblk.resize(bs * D);
    }
    const T* kc = static_cast<const T*>(p.k_cache);
    const T* vc = static_cast<const T*>(p.v_cache);
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
          r1::load_row(kblk.data() + t * D, ks, D);
          r1::load_row(vblk.data() + t * D, vs, D);
          kp[t] = kblk.data() + t * D;
          vp[t] = vblk.data() + t * D;
        }
      }
      for (int64_t r = 0; r < rows; ++r) tile.attend_row(r, n, kp.data(), vp.data());
    }
    for (int64_t i = it.n0; i < it.n1; ++i) {
      int64_t depth = 0;
      for (int64_t j = i; j >= 0; j = par[j], ++depth) {
        kp[depth] = kbuf.data() + slot[j] * D;
        vp[depth] = vbuf.data() + slot[j] * D;
      }
      for (int64_t g = 0; g < G; ++g) tile.attend_row((i - it.n0) * G + g, depth, kp.data(), vp.data());
    }
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
