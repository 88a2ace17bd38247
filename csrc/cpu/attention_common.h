// Pieces shared by the CPU attention kernels (paged attention, tree attention, merge): an fp32
// online-softmax state for a tile of query rows, applied to keys given by row pointers, with inner
// loops over head_dim written so the compiler vectorises them (omp simd), and a vectorisable exp.
//
// Everything here is always_inline: the kernels that include it are compiled once per ISA
// (target_clones in each .cpp), and inlining is what makes these loops use that ISA's registers.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#define R1_INLINE inline __attribute__((always_inline))

// the 8-float vectors never cross a non-inlined call, so the ABI note GCC prints does not apply
#pragma GCC diagnostic ignored "-Wpsabi"

namespace r1 {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(x) for x <= 0 (scores minus their running max), max relative error ~2e-7: 2^n * p(r) with
// a Cody-Waite reduction; branch-free so `omp simd` loops over it vectorise (libm's expf does not
// without -ffast-math). Inputs below -87 flush to 0, as exp does in fp32 after underflow.
R1_INLINE float fast_exp(float x) {
  x = std::max(x, -87.0f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187045e-06f;
  // Taylor-like minimax polynomial for exp(r), |r| <= ln2 / 2
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += static_cast<int32_t>(n) << 23;
  float out;
  std::memcpy(&out, &bits, 4);
  return x <= -87.0f ? 0.0f : out;
}

// GCC vector extensions: plain 8-float vectors, compiled to AVX2 / AVX-512 registers in the ISA
// clones and to SSE pairs in the default one (no target-specific intrinsics needed).
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf8u __attribute__((vector_size(32), aligned(4)));
typedef int32_t vi8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));

R1_INLINE vf8 loadu8(const float* p) { return *reinterpret_cast<const vf8u*>(p); }
R1_INLINE void storeu8(float* p, vf8 x) { *reinterpret_cast<vf8u*>(p) = x; }
typedef int32_t vi8u __attribute__((vector_size(32), aligned(4)));
R1_INLINE vi8 loadu8i(const int32_t* p) { return *reinterpret_cast<const vi8u*>(p); }

R1_INLINE float hsum8(vf8 a) {
  vf4 x = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  x = x + __builtin_shufflevector(x, x, 2, 3, 0, 1);
  x = x + __builtin_shufflevector(x, x, 1, 0, 3, 2);
  return x[0];
}

// fast_exp on 8 lanes; -inf lanes (padding) give 0.
R1_INLINE vf8 fast_exp8(vf8 x) {
  const vf8 lo = vf8{} - 87.0f;
  const vi8 under = x <= lo;
  x = x < lo ? lo : x;
  const vf8 magic = vf8{} + 12582912.0f;  // 1.5 * 2^23: adding and subtracting rounds to nearest
  const vf8 n = (x * 1.44269504088896341f + magic) - magic;
  vf8 r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187045e-06f;
  vf8 p = vf8{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  vi8 bits = reinterpret_cast<vi8&>(p) + (__builtin_convertvector(n, vi8) << 23);
  vf8 out = reinterpret_cast<vf8&>(bits);
  return under ? vf8{} : out;
}

// 2^x on 8 lanes for finite x <= 0, relative error ~2e-7, in fewer operations than fast_exp8 (no
// Cody-Waite split, no float-to-int conversion): n = round(x) by the 1.5 * 2^23 trick, which leaves
// n in the low mantissa bits of the sum, so (bits << 23) is n's exponent field; r = x - n in
// [-0.5, 0.5]; a degree-5 fit of 2^r (relative-error least squares on Chebyshev nodes). Below -125
// clamps to 2^-125 (~2e-38, not 0): for scores minus their row's exact max, where such a term is
// lost against the max's own 1 anyway.
R1_INLINE vf8 fast_exp2_8_finite(vf8 x) {
  const vf8 lo = vf8{} - 125.0f;
  x = x < lo ? lo : x;
  const vf8 magic = vf8{} + 12582912.0f;  // 1.5 * 2^23
  const vf8 t = x + magic;
  const vf8 r = x - (t - magic);
  vf8 p = vf8{} + 1.3218672247603536e-3f;
  p = p * r + 9.671698324382305e-3f;
  p = p * r + 5.550893023610115e-2f;
  p = p * r + 2.4022237956523895e-1f;
  p = p * r + 6.931468844413757e-1f;
  p = p * r + 1.0f;
  const vi8 bits = reinterpret_cast<vi8&>(p) + (reinterpret_cast<const vi8&>(t) << 23);
  return reinterpret_cast<const vf8&>(bits);
}

R1_INLINE float dot(const float* __restrict a, const float* __restrict b, int64_t d) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < d; ++i) acc += a[i] * b[i];
  return acc;
}

R1_INLINE void axpy(float* __restrict y, float a, const float* __restrict x, int64_t d) {
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) y[i] += a * x[i];
}

template <typename T>
R1_INLINE float to_float(T x) {
  return static_cast<float>(x);
}

template <typename T>
R1_INLINE void load_row(float* __restrict dst, const T* __restrict src, int64_t d, float scale = 1.f) {
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) dst[i] = to_float(src[i]) * scale;
}

template <typename T>
R1_INLINE void store_row(T* __restrict dst, const float* __restrict src, int64_t d, float scale) {
  for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<T>(src[i] * scale);
}

// Online-softmax state of R query rows (pre-scaled queries Q, unnormalised output O, running max m
// and sum l), all fp32.
struct RowTile {
  int64_t R = 0, D = 0;
  std::vector<float> Q, O, m, l, s;

  void reset(int64_t rows, int64_t d, int64_t max_keys) {
    R = rows;
    D = d;
    Q.resize(R * D);
    O.assign(R * D, 0.f);
    m.assign(R, kNegInf);
    l.assign(R, 0.f);
    if ((int64_t)s.size() < max_keys) s.resize(max_keys);
  }

  // Row r attends to keys [0, nvalid) (k[t], v[t] point to D floats each).
  R1_INLINE void attend_row(int64_t r, int64_t nvalid, const float* const* k, const float* const* v) {
    if (nvalid <= 0) return;
    if ((int64_t)s.size() < nvalid + 8) s.resize(nvalid + 8);
    switch (D) {  // head sizes with register-resident rows; anything else takes the plain loops
      case 16: return attend_row_v<2>(r, nvalid, k, v);
      case 32: return attend_row_v<4>(r, nvalid, k, v);
      case 64: return attend_row_v<8>(r, nvalid, k, v);
      case 128: return attend_row_v<16>(r, nvalid, k, v);
      default: return attend_row_any(r, nvalid, k, v);
    }
  }

  // D = 8 * ND: the query row and output row live in ND 8-float registers; one horizontal sum
  // per key for the score, none for P @ V.
  template <int ND>
  R1_INLINE void attend_row_v(int64_t r, int64_t nvalid, const float* const* k, const float* const* v) {
    const float* q = Q.data() + r * D;
    float* o = O.data() + r * D;
    float* sc = s.data();
    vf8 qv[ND];
    for (int c = 0; c < ND; ++c) qv[c] = loadu8(q + 8 * c);
    float mx = kNegInf;
    for (int64_t t = 0; t < nvalid; ++t) {
      const float* kt = k[t];
      vf8 acc0 = qv[0] * loadu8(kt), acc1 = vf8{} ;
      for (int c = 1; c < ND; c += 2) {
        acc1 += qv[c] * loadu8(kt + 8 * c);
        if (c + 1 < ND) acc0 += qv[c + 1] * loadu8(kt + 8 * (c + 1));
      }
      sc[t] = hsum8(acc0 + acc1);
      mx = std::max(mx, sc[t]);
    }
    const float m_new = std::max(m[r], mx);
    if (m[r] != m_new) {
      const float alpha = m[r] == kNegInf ? 0.f : fast_exp(m[r] - m_new);
      l[r] *= alpha;
      for (int c = 0; c < ND; ++c) storeu8(o + 8 * c, loadu8(o + 8 * c) * alpha);
      m[r] = m_new;
    }
    const int64_t padded = (nvalid + 7) & ~int64_t(7);
    for (int64_t t = nvalid; t < padded; ++t) sc[t] = kNegInf;
    vf8 sum = vf8{};
    for (int64_t t = 0; t < padded; t += 8) {
      vf8 p = fast_exp8(loadu8(sc + t) - m_new);
      storeu8(sc + t, p);
      sum += p;
    }
    l[r] += hsum8(sum);
    vf8 ov[ND];
    for (int c = 0; c < ND; ++c) ov[c] = loadu8(o + 8 * c);
    for (int64_t t = 0; t < nvalid; ++t) {
      const float* vt = v[t];
      const float p = sc[t];
      for (int c = 0; c < ND; ++c) ov[c] += p * loadu8(vt + 8 * c);
    }
    for (int c = 0; c < ND; ++c) storeu8(o + 8 * c, ov[c]);
  }

  R1_INLINE void attend_row_any(int64_t r, int64_t nvalid, const float* const* k, const float* const* v) {
    const float* q = Q.data() + r * D;
    float* o = O.data() + r * D;
    float* sc = s.data();
    float mx = kNegInf;
    for (int64_t t = 0; t < nvalid; ++t) {
      sc[t] = dot(q, k[t], D);
      mx = std::max(mx, sc[t]);
    }
    const float m_new = std::max(m[r], mx);
    if (m[r] != m_new) {
      const float alpha = m[r] == kNegInf ? 0.f : fast_exp(m[r] - m_new);
      l[r] *= alpha;
      for (int64_t i = 0; i < D; ++i) o[i] *= alpha;
      m[r] = m_new;
    }
    float sum = 0.f;
    for (int64_t t = 0; t < nvalid; ++t) {
      sc[t] = fast_exp(sc[t] - m_new);
      sum += sc[t];
    }
    l[r] += sum;
    for (int64_t t = 0; t < nvalid; ++t) axpy(o, sc[t], v[t], D);
  }

  // out row = O / l, lse = m + log(l); a row that saw no key: out 0, lse -inf.
  template <typename T>
  R1_INLINE void finish_row(int64_t r, T* out, float* lse) const {
    if (l[r] > 0.f) {
      store_row(out, O.data() + r * D, D, 1.f / l[r]);
      *lse = m[r] + std::log(l[r]);
    } else {
      for (int64_t i = 0; i < D; ++i) out[i] = static_cast<T>(0.f);
      *lse = kNegInf;
    }
  }
};

// Below this many multiply-adds a call runs on the calling thread: waking the pool costs more
// than it saves on decode-sized calls (a 1-sequence call took 29 us with the pool, on a loaded
// 2-core machine, against a few us of work).
constexpr int64_t kSerialMacs = int64_t(1) << 19;

// Work items of uneven cost spread over torch's intra-op threads by an atomic counter (dynamic
// scheduling): at::parallel_for alone splits the range into equal contiguous chunks.
template <typename F>
void parallel_items(int64_t n, int64_t macs, const F& f) {
  if (n <= 0) return;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  if (threads <= 1 || macs < kSerialMacs || at::in_parallel_region()) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t i = next++; i < n; i = next++) f(i);
  });
}

}  // namespace r1
