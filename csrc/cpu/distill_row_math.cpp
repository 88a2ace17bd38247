// Per-row math of the distillation loss CPU ops; see distill_row_math.h and, for the formulas,
// r1kernels/_torch/distill_rows.py. With s = log_softmax(a / T), t = log_softmax(b / T), p = e^s,
// q = e^t, the gradient of the soft loss with respect to a is (A - K p) / T, with A and K:
//   beta 0   A = p - q,          K = 0
//   beta 1   A = p (s - t),      K = KL(p || q)
//   else     A = (1 - beta) p (s - m),  K = (1 - beta) KL(p || m),  m = log((1 - beta) p + beta q)
// K is a sum over the whole row, so the row takes four passes over its V entries: the maxima, the
// exponential sums (logsumexps), the loss with A (stored over a) and p (over b), then a -= K p.
//
// The loops are written to auto-vectorise (omp simd, branch-free exp and log) and compiled once per
// x86 level (target_clones), as grpo_row_math.cpp, since the extension is built for the baseline ISA.
#include "distill_row_math.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "row_simd.h"

namespace r1 {
namespace {

using row::fast_exp;
using row::kNegInf;

// log(x) for normal x > 0: x = 2^e f, f in [sqrt(1/2), sqrt(2)), Cephes' polynomial for log(f)
// (relative error about 1e-7). The mixtures it takes are >= the smallest normal (fast_exp's floor).
inline float fast_log(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  bits = (bits & 0x807fffff) | 0x3f000000;  // mantissa in [0.5, 1)
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  const bool small = f < 0.707106781186547524f;
  e = small ? e - 1.f : e;
  f = small ? f + f - 1.f : f - 1.f;
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y += e * -2.12194440e-4f;
  y += -0.5f * z;
  return f + y + e * 0.693359375f;
}

R1_VEC_CLONES void row_maxima(const float* a, const float* b, int64_t V, float* ma, float* mb) {
  float x = kNegInf, y = kNegInf;
#pragma omp simd reduction(max : x, y)
  for (int64_t v = 0; v < V; ++v) {
    x = a[v] > x ? a[v] : x;
    y = b[v] > y ? b[v] : y;
  }
  *ma = x;
  *mb = y;
}

// sum exp((a - ma) k) and sum exp((b - mb) k), and sum exp(a - ma) when `plain` (the hard loss's
// temperature-1 logsumexp where k != 1)
R1_VEC_CLONES void exp_sums(const float* a, const float* b, int64_t V, float ma, float mb, float k, bool plain, float* sa,
                            float* sb, float* s1) {
  float x = 0.f, y = 0.f, w = 0.f;
  if (plain) {
#pragma omp simd reduction(+ : x, y, w)
    for (int64_t v = 0; v < V; ++v) {
      const float d = a[v] - ma;
      x += fast_exp(d * k);
      y += fast_exp((b[v] - mb) * k);
      w += fast_exp(d);
    }
  } else {
#pragma omp simd reduction(+ : x, y)
    for (int64_t v = 0; v < V; ++v) {
      x += fast_exp((a[v] - ma) * k);
      y += fast_exp((b[v] - mb) * k);
    }
  }
  *sa = x;
  *sb = y;
  *s1 = w;
}

// The loss pass over one row: the soft loss's sums (st = sum q (t - .), ss = sum p (s - .)); with
// GRAD, a <- c_soft A + c_hard softmax(a) and b <- p. MODE 0: beta 0, 1: beta 1, 2: in between.
// HARD1: the hard loss's softmax at temperature 1 differs from p (k != 1), from lse1.
template <int MODE, bool GRAD, bool HARD1>
__attribute__((always_inline)) inline void loss_loop(float* a, float* b, int64_t V, float beta, float k, float lse_a,
                                                     float lse_b, float lse1, float c_soft, float c_hard, float* kl_t,
                                                     float* kl_s) {
  float st = 0.f, ss = 0.f;
  const float wa = 1.f - beta, wb = beta;
#pragma omp simd reduction(+ : st, ss)
  for (int64_t v = 0; v < V; ++v) {
    const float s = a[v] * k - lse_a, t = b[v] * k - lse_b;
    const float p = fast_exp(s), q = fast_exp(t);
    float A;
    if constexpr (MODE == 0) {
      st += q * (t - s);
      A = p - q;
    } else if constexpr (MODE == 1) {
      ss += p * (s - t);
      A = p * (s - t);
    } else {
      const float m = fast_log(wa * p + wb * q);
      st += q * (t - m);
      ss += p * (s - m);
      A = wa * p * (s - m);
    }
    if constexpr (GRAD) {
      const float h = HARD1 ? fast_exp(a[v] - lse1) : p;
      a[v] = c_soft * A + c_hard * h;
      b[v] = p;
    }
  }
  *kl_t = st;
  *kl_s = ss;
}

template <int MODE>
__attribute__((always_inline)) inline void loss_pass_mode(float* a, float* b, int64_t V, float beta, float k, float lse_a,
                                                          float lse_b, float lse1, float c_soft, float c_hard, bool grad,
                                                          bool hard1, float* kl_t, float* kl_s) {
  if (!grad)
    loss_loop<MODE, false, false>(a, b, V, beta, k, lse_a, lse_b, lse1, c_soft, c_hard, kl_t, kl_s);
  else if (hard1)
    loss_loop<MODE, true, true>(a, b, V, beta, k, lse_a, lse_b, lse1, c_soft, c_hard, kl_t, kl_s);
  else
    loss_loop<MODE, true, false>(a, b, V, beta, k, lse_a, lse_b, lse1, c_soft, c_hard, kl_t, kl_s);
}

// one clone set per mode, so each loop is compiled for the ISA of the clone it is inlined into
R1_VEC_CLONES void loss_pass_forward_kl(float* a, float* b, int64_t V, float beta, float k, float lse_a, float lse_b,
                                        float lse1, float c_soft, float c_hard, bool grad, bool hard1, float* kl_t,
                                        float* kl_s) {
  loss_pass_mode<0>(a, b, V, beta, k, lse_a, lse_b, lse1, c_soft, c_hard, grad, hard1, kl_t, kl_s);
}
R1_VEC_CLONES void loss_pass_reverse_kl(float* a, float* b, int64_t V, float beta, float k, float lse_a, float lse_b,
                                        float lse1, float c_soft, float c_hard, bool grad, bool hard1, float* kl_t,
                                        float* kl_s) {
  loss_pass_mode<1>(a, b, V, beta, k, lse_a, lse_b, lse1, c_soft, c_hard, grad, hard1, kl_t, kl_s);
}
R1_VEC_CLONES void loss_pass_jsd(float* a, float* b, int64_t V, float beta, float k, float lse_a, float lse_b, float lse1,
                                 float c_soft, float c_hard, bool grad, bool hard1, float* kl_t, float* kl_s) {
  loss_pass_mode<2>(a, b, V, beta, k, lse_a, lse_b, lse1, c_soft, c_hard, grad, hard1, kl_t, kl_s);
}

R1_VEC_CLONES void subtract_scaled(float* a, const float* b, int64_t V, float c) {
#pragma omp simd
  for (int64_t v = 0; v < V; ++v) a[v] -= c * b[v];
}

}  // namespace

float distill_row(float* a, float* b, int64_t V, int64_t label, float row_scale, const DistillParams& p) {
  const float k = p.inv_temp;
  const int mode = p.beta == 0.f ? 0 : (p.beta == 1.f ? 1 : 2);
  const bool hard = label >= 0 && p.weight_hard != 0.f;
  float ma, mb;
  row_maxima(a, b, V, &ma, &mb);
  const bool plain = hard && k != 1.f;
  float sa, sb, s1;
  exp_sums(a, b, V, ma, mb, k, plain, &sa, &sb, &s1);
  const float lse_a = ma * k + std::log(sa), lse_b = mb * k + std::log(sb);  // of a * k and b * k
  const float lse1 = plain ? ma + std::log(s1) : lse_a;                       // of a
  const float hard_loss = hard ? lse1 - a[label] : 0.f;
  // gradient scales: soft (1/T of the soft weight) and hard, both times the row's weight
  const float c_soft = p.compute_grad ? row_scale * p.weight_soft * k : 0.f;
  const float c_hard = p.compute_grad && hard ? row_scale * p.weight_hard : 0.f;
  float kl_t, kl_s;
  const auto pass = mode == 0 ? loss_pass_forward_kl : (mode == 1 ? loss_pass_reverse_kl : loss_pass_jsd);
  pass(a, b, V, p.beta, k, lse_a, lse_b, lse1, c_soft, c_hard, p.compute_grad, c_hard != 0.f && plain, &kl_t, &kl_s);
  const float soft = mode == 0 ? kl_t : (mode == 1 ? kl_s : p.beta * kl_t + (1.f - p.beta) * kl_s);
  if (p.compute_grad) {
    const float K = mode == 0 ? 0.f : (mode == 1 ? kl_s : (1.f - p.beta) * kl_s);
    if (K != 0.f) subtract_scaled(a, b, V, c_soft * K);
    if (hard) a[label] -= c_hard;
  }
  return p.weight_soft * soft + (hard ? p.weight_hard * hard_loss : 0.f);
}

void distill_rows(float* zs, float* zt, int64_t rows, int64_t V, const int64_t* index, const int64_t* labels,
                  const float* scale, const DistillParams& p, float* row_loss) {
  at::parallel_for(0, rows, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t i = index ? index[r] : r;
      row_loss[i] = distill_row(zs + r * V, zt + r * V, V, labels ? labels[i] : -1, scale[i], p);
    }
  });
}

int64_t distill_chunk_rows(int64_t V, int64_t n_rows) {
  const char* env = std::getenv("R1_DISTILL_CHUNK_BYTES");
  // 64 MB a buffer keeps the two logit chunks well under the [V, Hs] weight gradient at 32k
  // vocabularies; below 256 rows the head GEMMs lose speed, so large vocabularies take 256 anyway
  const int64_t budget = env ? std::max<int64_t>(std::atoll(env), 1) : int64_t(64) << 20;
  int64_t rows = std::max<int64_t>(budget / (std::max<int64_t>(V, 1) * int64_t(sizeof(float))), 1);
  if (!env) rows = std::max<int64_t>(rows, 256);
  return std::max<int64_t>(std::min(rows, n_rows), 1);
}

std::vector<int64_t> counted_rows(const std::optional<at::Tensor>& labels, int64_t N, int64_t ignore_index) {
  std::vector<int64_t> rows;
  rows.reserve(N);
  const int64_t* l = labels.has_value() ? labels->data_ptr<int64_t>() : nullptr;
  for (int64_t i = 0; i < N; ++i)
    if (!l || l[i] != ignore_index) rows.push_back(i);
  return rows;
}

void check_distill_args(const std::optional<at::Tensor>& labels, const at::Tensor& row_scale, int64_t N, int64_t V,
                        int64_t ignore_index, double beta, double temperature, double weight_hard) {
  TORCH_CHECK_VALUE(beta >= 0.0 && beta <= 1.0, "beta must be in [0, 1], got ", beta);
  TORCH_CHECK_VALUE(temperature > 0.0, "temperature must be > 0, got ", temperature);
  TORCH_CHECK_VALUE(row_scale.dim() == 1 && row_scale.size(0) == N, "row_scale must have shape [N] = [", N, "], got ",
                    row_scale.sizes());
  TORCH_CHECK_VALUE(row_scale.scalar_type() == at::kFloat, "row_scale must be float32, got ", row_scale.scalar_type());
  TORCH_CHECK_VALUE(labels.has_value() || weight_hard == 0.0, "labels=None needs weight_hard == 0, got ", weight_hard);
  if (!labels.has_value()) return;
  TORCH_CHECK_VALUE(labels->dim() == 1 && labels->size(0) == N, "labels must have shape [N] = [", N, "], got ",
                    labels->sizes());
  TORCH_CHECK_VALUE(labels->scalar_type() == at::kLong, "labels must be int64, got ", labels->scalar_type());
  const at::Tensor l = labels->contiguous();
  const int64_t* d = l.data_ptr<int64_t>();
  for (int64_t i = 0; i < N; ++i)
    TORCH_CHECK_VALUE(d[i] == ignore_index || (d[i] >= 0 && d[i] < V), "labels must lie in [0, ", V,
                      ") (the vocabulary) or equal ignore_index=", ignore_index, ", got ", d[i], " at position ", i);
}

}  // namespace r1
