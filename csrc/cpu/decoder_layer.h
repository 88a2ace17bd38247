// Pieces both halves of the decoder layer use (rmsnorm_qkv_rope.cpp, oproj_mlp.cpp): the projection
// (skinny kernel or BLAS), argument checks and the row-wise RMSNorm, float32 on the CPU.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <string>

#include "skinny_linear.h"

namespace r1::decoder_layer {

// the skinny kernel for the few rows it is made for, BLAS beyond (a decode step of many sequences)
constexpr int64_t kSkinnyMaxRows = 16;

inline at::Tensor proj(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) {
  return x.size(0) <= kSkinnyMaxRows ? r1::skinny_linear_cpu(x, w, b) : at::linear(x, w, b).contiguous();
}

inline void check_f32_2d(const at::Tensor& t, const char* name, int64_t cols) {
  TORCH_CHECK_VALUE(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 2 && (cols < 0 || t.size(1) == cols),
                    name, " must be a float32 CPU matrix", cols >= 0 ? " with " + std::to_string(cols) + " columns" : std::string(),
                    ", got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
}

inline void check_vec(const std::optional<at::Tensor>& t, const char* name, int64_t n) {
  if (!t.has_value()) return;
  TORCH_CHECK_VALUE(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 1 && t->size(0) == n, name,
                    " must be float32 [", n, "] on the CPU, got ", t->scalar_type(), " ", t->sizes());
}

// out[r] = w * (x[r] * rsqrt(mean(x[r]^2) + eps)), rows of n floats (the family's RMSNorm in fp32)
inline void rms_norm_rows(const float* x, const float* w, float eps, float* out, int64_t rows, int64_t n, int64_t ld_in, int64_t ld_out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ld_in;
    float* o = out + r * ld_out;
    float ss = 0.f;
    for (int64_t i = 0; i < n; ++i) ss += xr[i] * xr[i];
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(n) + eps);
    for (int64_t i = 0; i < n; ++i) o[i] = w[i] * (xr[i] * inv);
  }
}

}  // namespace r1::decoder_layer
