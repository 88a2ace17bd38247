// r1kernels::paged_attention on the CPU.
//
// Work item = (sequence, kv head, tile of up to kQTile query tokens). An item loads each KV block
// of its sequence once and applies it to all its query rows and all Hq / Hkv query heads that read
// that kv head: decode (1 query), prefill, chunked prefill and the cascade's shared-prefix call
// (a group's rows packed as one non-causal sequence) are the same loop. fp32 online softmax; items
// run on torch's intra-op threads with dynamic scheduling. A float32 decode step (one query per
// sequence, head_dim 16-128) takes `decode_seq` instead: one item per sequence, keys read in place
// (0.27 -> 0.15 ms a layer for 128 sequences x 4 heads x 40 keys, head_dim 32, 2 threads; the
// rest is reading the cache, ~2.6 MB a layer).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "attention_common.h"

namespace {

using namespace r1;

constexpr int64_t kQTile = 64;  // query tokens per item: bounds the fp32 tile (64 x Hq/Hkv x D)
constexpr int64_t kKeyChunk = 128;  // keys per softmax update

struct PagedArgs {
  const void* q;
  const void* k_cache;
  const void* v_cache;
  void* out;
  float* lse;
  const int32_t* table;
  const int32_t* seq_lens;
  const int32_t* cu;
  int64_t max_blocks, block_size, hq, hkv, d;
  float scale;
  bool causal;
};

struct Item {
  int64_t seq, head, j0, j1;
};

constexpr int64_t kCopyMinRows = 16;  // query rows of an item from which float32 K/V are copied contiguous

template <typename T>
R1_INLINE void paged_item(const PagedArgs& p, const Item& it) {
  thread_local r1::RowTile tile;
  thread_local std::vector<float> kbuf, vbuf;
  thread_local std::vector<const float*> kp, vp;
  const int64_t G = p.hq / p.hkv, D = p.d, bs = p.block_size;
  const int64_t a = p.cu[it.seq], qlen = p.cu[it.seq + 1] - a, L = p.seq_lens[it.seq];
  const int64_t rows = (it.j1 - it.j0) * G;
  tile.reset(rows, D, kKeyChunk + 8);
  const T* q = static_cast<const T*>(p.q);
  for (int64_t j = it.j0; j < it.j1; ++j)
    for (int64_t g = 0; g < G; ++g)
      r1::load_row(tile.Q.data() + ((j - it.j0) * G + g) * D, q + ((a + j) * p.hq + it.head * G + g) * D, D, p.scale);
  // kv tokens visible to query token j
  auto limit = [&](int64_t j) { return p.causal ? L - qlen + j + 1 : L; };
  const int64_t max_limit = limit(it.j1 - 1);
  // keys go through the softmax in chunks of whole blocks (>= kKeyChunk keys): fewer rescales and
  // calls per row than block by block, which is what decode (a few rows per item) pays for
  const int64_t chunk = std::max<int64_t>(1, kKeyChunk / bs) * bs;
  kp.resize(chunk);
  vp.resize(chunk);
  // half-precision keys are converted into contiguous float32 rows anyway; float32 ones are read in
  // place for a few rows (decode) and copied contiguous for many, where each key serves enough rows
  // to repay the copy
  const bool copy = !std::is_same<T, float>::value || rows >= kCopyMinRows;
  if (copy) {
    kbuf.resize(chunk * D);
    vbuf.resize(chunk * D);
  }
  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  const int32_t* table = p.table + it.seq * p.max_blocks;
  for (int64_t c0 = 0; c0 < max_limit; c0 += chunk) {
    const int64_t c1 = std::min(max_limit, c0 + chunk);
    for (int64_t pos = c0; pos < c1; ++pos) {
      const int64_t t = pos - c0;
      const int64_t off = ((static_cast<int64_t>(table[pos / bs]) * bs + pos % bs) * p.hkv + it.head) * D;
      if (!copy) {
        kp[t] = reinterpret_cast<const float*>(kc + off);
        vp[t] = reinterpret_cast<const float*>(vc + off);
      } else {
        r1::load_row(kbuf.data() + t * D, kc + off, D);
        r1::load_row(vbuf.data() + t * D, vc + off, D);
        kp[t] = kbuf.data() + t * D;
        vp[t] = vbuf.data() + t * D;
      }
    }
    for (int64_t j = it.j0; j < it.j1; ++j) {
      const int64_t nvalid = std::min(c1, limit(j)) - c0;
      for (int64_t g = 0; g < G; ++g) tile.attend_row((j - it.j0) * G + g, nvalid, kp.data(), vp.data());
    }
  }
  T* out = static_cast<T*>(p.out);
  for (int64_t j = it.j0; j < it.j1; ++j)
    for (int64_t g = 0; g < G; ++g) {
      const int64_t row = (a + j) * p.hq + it.head * G + g;
      tile.finish_row((j - it.j0) * G + g, out + row * D, p.lse + row);
    }
}

// A decode step's sequence (one query token, float32 cache, head_dim 8 * ND): all its heads in one
// item, each query row attending to its keys read in place block by block, with one exact max and
// no online rescaling (every score of the row fits in the buffer). The general item above pays
// per (sequence, kv head) for its tile, pointer tables and chunking, which at 128 sequences x 4
// heads of ~40 keys cost 3x the arithmetic.
template <int ND>
R1_INLINE void decode_seq(const PagedArgs& p, int64_t seq) {
  thread_local std::vector<float> scores;
  constexpr int64_t D = 8 * ND;
  const int64_t G = p.hq / p.hkv, bs = p.block_size, L = p.seq_lens[seq];
  const int64_t row0 = static_cast<int64_t>(p.cu[seq]) * p.hq;
  const float* q = static_cast<const float*>(p.q) + row0 * D;
  float* out = static_cast<float*>(p.out) + row0 * D;
  float* lse = p.lse + row0;
  if (L == 0) {
    for (int64_t i = 0; i < p.hq * D; ++i) out[i] = 0.f;
    for (int64_t h = 0; h < p.hq; ++h) lse[h] = kNegInf;
    return;
  }
  const int64_t padded = (L + 7) & ~int64_t(7);
  if (static_cast<int64_t>(scores.size()) < padded) scores.resize(padded);
  float* sc = scores.data();
  const float* kc = static_cast<const float*>(p.k_cache);
  const float* vc = static_cast<const float*>(p.v_cache);
  const int32_t* table = p.table + seq * p.max_blocks;
  const int64_t stride = p.hkv * D;  // floats between consecutive tokens of a block
  for (int64_t hq = 0; hq < p.hq; ++hq) {
    const int64_t off = (hq / G) * D;
    vf8 qv[ND];
    for (int c = 0; c < ND; ++c) qv[c] = loadu8(q + hq * D + 8 * c) * p.scale;
    float mx = kNegInf;
    for (int64_t b0 = 0, t = 0; b0 < L; b0 += bs) {
      const float* kb = kc + static_cast<int64_t>(table[b0 / bs]) * bs * stride + off;
      const int64_t n = std::min(bs, L - b0);
      for (int64_t i = 0; i < n; ++i, ++t) {
        const float* kt = kb + i * stride;
        vf8 acc = qv[0] * loadu8(kt);
        for (int c = 1; c < ND; ++c) acc += qv[c] * loadu8(kt + 8 * c);
        sc[t] = hsum8(acc);
        mx = std::max(mx, sc[t]);
      }
    }
    for (int64_t t = L; t < padded; ++t) sc[t] = kNegInf;
    vf8 sum = vf8{};
    for (int64_t t = 0; t < padded; t += 8) {
      const vf8 e = fast_exp8(loadu8(sc + t) - mx);
      storeu8(sc + t, e);
      sum += e;
    }
    const float l = hsum8(sum);
    vf8 ov[ND];
    for (int c = 0; c < ND; ++c) ov[c] = vf8{};
    for (int64_t b0 = 0, t = 0; b0 < L; b0 += bs) {
      const float* vb = vc + static_cast<int64_t>(table[b0 / bs]) * bs * stride + off;
      const int64_t n = std::min(bs, L - b0);
      for (int64_t i = 0; i < n; ++i, ++t) {
        const float* vt = vb + i * stride;
        const float w = sc[t];
        for (int c = 0; c < ND; ++c) ov[c] += w * loadu8(vt + 8 * c);
      }
    }
    const float inv = 1.f / l;
    for (int c = 0; c < ND; ++c) storeu8(out + hq * D + 8 * c, ov[c] * inv);
    lse[hq] = mx + std::log(l);
  }
}

// One copy per ISA, chosen at load time: the inlined loops above use AVX-512 / AVX2 where present.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void run_decode_seq(const PagedArgs& p, int64_t seq) {
  switch (p.d) {
    case 16: return decode_seq<2>(p, seq);
    case 32: return decode_seq<4>(p, seq);
    case 64: return decode_seq<8>(p, seq);
    default: return decode_seq<16>(p, seq);
  }
}

bool decode_path(int64_t d) { return d == 16 || d == 32 || d == 64 || d == 128; }

// One copy per ISA, chosen at load time: the inlined loops above use AVX-512 / AVX2 where present.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void run_paged_item(const PagedArgs& p, const Item& it, int dtype) {
  switch (dtype) {
    case 0: paged_item<float>(p, it); break;
    case 1: paged_item<c10::BFloat16>(p, it); break;
    default: paged_item<c10::Half>(p, it); break;
  }
}

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return 0;
    case at::kBFloat16: return 1;
    case at::kHalf: return 2;
    default: TORCH_CHECK_VALUE(false, "the cache must be float32, bfloat16 or float16, got ", t);
  }
  return 0;
}

std::tuple<at::Tensor, at::Tensor> paged_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                                       const at::Tensor& block_tables, const at::Tensor& seq_lens,
                                                       const at::Tensor& cu_seqlens_q, double scale, bool causal) {
  TORCH_CHECK_VALUE(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(), "q must be [Nq, Hq, D] and the caches [num_blocks, block_size, Hkv, D]");
  TORCH_CHECK_VALUE(q.scalar_type() == k_cache.scalar_type() && v_cache.scalar_type() == k_cache.scalar_type(), "q must have the cache's dtype");
  // the raw op is called past the Python checks (the engine does): the layout it assumes is checked here
  TORCH_CHECK_VALUE(k_cache.is_contiguous() && v_cache.is_contiguous(), "k_cache and v_cache must be contiguous");
  TORCH_CHECK_VALUE(block_tables.dim() == 2 && seq_lens.dim() == 1 && cu_seqlens_q.dim() == 1,
                    "block_tables must be [num_seqs, max_blocks], seq_lens [num_seqs] and cu_seqlens_q [num_seqs + 1]");
  TORCH_CHECK_VALUE(block_tables.scalar_type() == at::kInt && seq_lens.scalar_type() == at::kInt && cu_seqlens_q.scalar_type() == at::kInt,
                    "block_tables, seq_lens and cu_seqlens_q must be int32");
  const int64_t S = block_tables.size(0), max_blocks = block_tables.size(1);
  const int64_t nb = k_cache.size(0), bs = k_cache.size(1), hkv = k_cache.size(2), d = k_cache.size(3);
  const int64_t nq = q.size(0), hq = q.size(1);
  TORCH_CHECK_VALUE(q.size(2) == d, "q has head_dim ", q.size(2), " but k_cache has head_dim ", d);
  TORCH_CHECK_VALUE(hkv > 0 && hq % hkv == 0, "q's heads (", hq, ") must be a multiple of k_cache's kv heads (", hkv, ")");
  TORCH_CHECK_VALUE(seq_lens.numel() == S && cu_seqlens_q.numel() == S + 1, "seq_lens must have ", S, " entries and cu_seqlens_q ", S + 1);
  const int dt = dtype_code(k_cache.scalar_type());
  auto qc = q.contiguous();
  auto tb = block_tables.contiguous();
  auto sl = seq_lens.contiguous();
  auto cq = cu_seqlens_q.contiguous();
  const int32_t* table = tb.data_ptr<int32_t>();
  const int32_t* lens = sl.data_ptr<int32_t>();
  const int32_t* cu = cq.data_ptr<int32_t>();
  // The data checks the Python wrapper leaves to this kernel (a few integer loops).
  bool cu_ok = cu[0] == 0 && cu[S] == nq;
  for (int64_t s = 0; s < S; ++s) cu_ok = cu_ok && cu[s + 1] >= cu[s];
  TORCH_CHECK_VALUE(cu_ok, "cu_seqlens_q must start at 0, never decrease and end at ", nq);
  std::vector<Item> items;
  int64_t macs = 0;
  bool one_query_each = true;  // a decode step: every sequence has exactly one query token
  for (int64_t s = 0; s < S; ++s) {
    const int64_t L = lens[s], ql = cu[s + 1] - cu[s];
    TORCH_CHECK_VALUE(L >= 0 && L <= max_blocks * bs, "seq_lens must be in [0, ", max_blocks * bs, "] (max_blocks * block_size of block_tables), got ", L, " for sequence ", s);
    TORCH_CHECK_VALUE(!causal || L >= ql, "seq_lens must be >= each sequence's query count when causal (the queries' own K/V are in the cache), got ", L, " kv tokens for ", ql, " queries in sequence ", s);
    for (int64_t b = 0; b * bs < L; ++b) {
      const int64_t id = table[s * max_blocks + b];
      TORCH_CHECK_VALUE(id >= 0 && id < nb, "block_tables holds block ids outside [0, ", nb, ") in the blocks the sequences use: ", id, " at (", s, ", ", b, ")");
    }
    one_query_each = one_query_each && ql == 1;
    for (int64_t j0 = 0; j0 < ql; j0 += kQTile)
      for (int64_t h = 0; h < hkv; ++h) items.push_back({s, h, j0, std::min(ql, j0 + kQTile)});
    macs += ql * hq * (causal ? L - ql / 2 : L) * d * 2;
  }
  auto out = at::empty_like(qc);
  auto lse = at::empty({nq, hq}, q.options().dtype(at::kFloat));
  PagedArgs p{qc.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr(), lse.data_ptr<float>(), table, lens, cu,
              max_blocks, bs, hq, hkv, d, static_cast<float>(scale), causal};
  if (one_query_each && dt == 0 && decode_path(d)) {
    r1::parallel_items(S, macs, [&](int64_t s) { run_decode_seq(p, s); });
  } else {
    r1::parallel_items(static_cast<int64_t>(items.size()), macs, [&](int64_t i) { run_paged_item(p, items[i], dt); });
  }
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(r1kernels, CPU, m) {
  m.impl("paged_attention", &paged_attention_cpu);
}
