// r1kernels::skinny_linear on the CPU: y = x W^T + b for a handful of rows of x (a decode step, a
// few beams), float32. BLAS tunes for large M; at M <= 16 on this machine's AMD EPYC, MKL's sgemm
// ran at 20-55 GFLOP/s with the weights in cache and read them from memory more than once. Here a
// tile of 4 weight rows stays in L1 while every row block of x passes over it (W is read once per
// call), the next tile is prefetched while this one computes, and the per-ISA code is chosen at run
// time (AVX-512, AVX2+FMA, else at::linear), so the library stays portable without -march flags.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include "skinny_linear.h"

#include <algorithm>
#include <cstdlib>
#include <string>

namespace {

constexpr int kRowBlock = 4;  // rows of x per tile
constexpr int kColBlock = 4;  // weight rows (outputs) per tile

// --- AVX-512 -----------------------------------------------------------------------------------
template <int MB, int NB>
__attribute__((target("avx512f"))) inline void tile_avx512(const float* x, int64_t K, const float* w, const float* bias,
                                                            float* y, int64_t ldy) {
  __m512 acc[MB][NB];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = _mm512_loadu_ps(w + j * K + k);
    // the next tile's weights, while this one computes: the loop is otherwise bound by memory latency
    for (int j = 0; j < NB; ++j) _mm_prefetch(reinterpret_cast<const char*>(w + (j + NB) * K + k), _MM_HINT_T0);
    for (int i = 0; i < MB; ++i) {
      const __m512 xv = _mm512_loadu_ps(x + i * K + k);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  if (k < K) {
    const __mmask16 m = static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = _mm512_maskz_loadu_ps(m, w + j * K + k);
    for (int i = 0; i < MB; ++i) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x + i * K + k);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) y[i * ldy + j] = _mm512_reduce_add_ps(acc[i][j]) + (bias ? bias[j] : 0.f);
}

template <int NB>
__attribute__((target("avx512f"))) void cols_avx512(const float* x, int64_t M, int64_t K, const float* w, const float* bias,
                                                     float* y, int64_t N) {
  int64_t m = 0;
  for (; m + kRowBlock <= M; m += kRowBlock) tile_avx512<kRowBlock, NB>(x + m * K, K, w, bias, y + m * N, N);
  switch (M - m) {
    case 3: tile_avx512<3, NB>(x + m * K, K, w, bias, y + m * N, N); break;
    case 2: tile_avx512<2, NB>(x + m * K, K, w, bias, y + m * N, N); break;
    case 1: tile_avx512<1, NB>(x + m * K, K, w, bias, y + m * N, N); break;
    default: break;
  }
}

__attribute__((target("avx512f"))) void range_avx512(const float* x, int64_t M, int64_t K, const float* w, const float* bias,
                                                      float* y, int64_t N, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + kColBlock <= n1; n += kColBlock) cols_avx512<kColBlock>(x, M, K, w + n * K, bias ? bias + n : nullptr, y + n, N);
  for (; n < n1; ++n) cols_avx512<1>(x, M, K, w + n * K, bias ? bias + n : nullptr, y + n, N);
}

// --- AVX2 + FMA --------------------------------------------------------------------------------
__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int MB, int NB>
__attribute__((target("avx2,fma"))) inline void tile_avx2(const float* x, int64_t K, const float* w, const float* bias,
                                                           float* y, int64_t ldy) {
  __m256 acc[MB][NB];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = _mm256_loadu_ps(w + j * K + k);
    for (int j = 0; j < NB; ++j) _mm_prefetch(reinterpret_cast<const char*>(w + (j + NB) * K + k), _MM_HINT_T0);
    for (int i = 0; i < MB; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + i * K + k);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  float tail[MB][NB] = {};
  for (; k < K; ++k)
    for (int i = 0; i < MB; ++i)
      for (int j = 0; j < NB; ++j) tail[i][j] += x[i * K + k] * w[j * K + k];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) y[i * ldy + j] = hsum256(acc[i][j]) + tail[i][j] + (bias ? bias[j] : 0.f);
}

template <int NB>
__attribute__((target("avx2,fma"))) void cols_avx2(const float* x, int64_t M, int64_t K, const float* w, const float* bias,
                                                    float* y, int64_t N) {
  int64_t m = 0;
  for (; m + kRowBlock <= M; m += kRowBlock) tile_avx2<kRowBlock, NB>(x + m * K, K, w, bias, y + m * N, N);
  switch (M - m) {
    case 3: tile_avx2<3, NB>(x + m * K, K, w, bias, y + m * N, N); break;
    case 2: tile_avx2<2, NB>(x + m * K, K, w, bias, y + m * N, N); break;
    case 1: tile_avx2<1, NB>(x + m * K, K, w, bias, y + m * N, N); break;
    default: break;
  }
}

__attribute__((target("avx2,fma"))) void range_avx2(const float* x, int64_t M, int64_t K, const float* w, const float* bias,
                                                     float* y, int64_t N, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + kColBlock <= n1; n += kColBlock) cols_avx2<kColBlock>(x, M, K, w + n * K, bias ? bias + n : nullptr, y + n, N);
  for (; n < n1; ++n) cols_avx2<1>(x, M, K, w + n * K, bias ? bias + n : nullptr, y + n, N);
}

using RangeFn = void (*)(const float*, int64_t, int64_t, const float*, const float*, float*, int64_t, int64_t, int64_t);

// R1KERNELS_ISA=avx2|none caps the choice (read once, at the first call), so tests on an AVX-512
// machine cover the other paths too
RangeFn pick_isa() {
  __builtin_cpu_init();
  const char* cap = std::getenv("R1KERNELS_ISA");
  const std::string c = cap ? cap : "";
  if (c == "none") return nullptr;
  if (c != "avx2" && __builtin_cpu_supports("avx512f")) return range_avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return range_avx2;
  return nullptr;
}

}  // namespace

namespace r1 {

at::Tensor skinny_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1),
                    "x must be [M, K] and weight [N, K] with the same K, got ", x.sizes(), " and ", weight.sizes());
  TORCH_CHECK_VALUE(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == weight.size(0)),
                    "bias must be [N] = [", weight.size(0), "]");
  static const RangeFn range = pick_isa();
  const bool f32 = x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat &&
                   (!bias.has_value() || bias->scalar_type() == at::kFloat);
  if (range == nullptr || !f32) return at::linear(x, weight, bias);  // no vector ISA, or not float32: BLAS
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  const int64_t M = xc.size(0), K = xc.size(1), N = wc.size(0);
  at::Tensor y = at::empty({M, N}, xc.options());
  if (M == 0 || N == 0) return y;
  const float* xp = xc.data_ptr<float>();
  const float* wp = wc.data_ptr<float>();
  const float* bp = bc.defined() ? bc.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  // waking the second thread costs ~50-100 us under OMP_WAIT_POLICY=PASSIVE (measured): only work
  // of a few MFLOP per thread is worth splitting, and a chunk holds whole column tiles
  const double flops = 2.0 * M * K * N;
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(flops / 4e6)));
  const int64_t grain = ((N + threads - 1) / threads + kColBlock - 1) / kColBlock * kColBlock;
  at::parallel_for(0, N, std::max<int64_t>(grain, kColBlock), [&](int64_t n0, int64_t n1) { range(xp, M, K, wp, bp, yp, N, n0, n1); });
  return y;
}

}  // namespace r1

TORCH_LIBRARY_IMPL(r1kernels, CPU, m) { m.impl("skinny_linear", &r1::skinny_linear_cpu); }
