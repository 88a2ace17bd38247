// The two halves of a Llama-family decoder layer around its attention, for a decode step of a few
// tokens on the CPU, float32:
//   rmsnorm_qkv_rope: x = RMSNorm(h); q, k, v = x Wq^T + bq, ...; (Qwen3) per-head RMSNorm of q, k;
//                     rotary embedding of q, k with the given cos / sin (rotate-half convention)
//   oproj_mlp:        h1 = h + a Wo^T + bo; x = RMSNorm(h1); h1 + (silu(x Wg^T + bg) * (x Wu^T + bu)) Wd^T + bd
// At a few rows the projections are cheap (r1::skinny_linear_cpu reads each weight once; BLAS past
// 16 rows) and a
// step of the 5M model spent as long again in ~40 small ATen ops per layer, each a dispatch and an
// allocation through Python: here each half is one call, and the element-wise work is plain loops.
// Every row is computed alone (no reduction across rows), so a sequence's numbers do not depend on
// what else is in the batch.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

#include "attention_common.h"
#include "skinny_linear.h"

namespace {

// the skinny kernel for the few rows it is made for, BLAS beyond (a decode step of many sequences)
constexpr int64_t kSkinnyMaxRows = 16;

at::Tensor proj(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) {
  return x.size(0) <= kSkinnyMaxRows ? r1::skinny_linear_cpu(x, w, b) : at::linear(x, w, b).contiguous();
}

void check_f32_2d(const at::Tensor& t, const char* name, int64_t cols) {
  TORCH_CHECK_VALUE(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 2 && (cols < 0 || t.size(1) == cols),
                    name, " must be a float32 CPU matrix", cols >= 0 ? " with " + std::to_string(cols) + " columns" : std::string(),
                    ", got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
}

void check_vec(const std::optional<at::Tensor>& t, const char* name, int64_t n) {
  if (!t.has_value()) return;
  TORCH_CHECK_VALUE(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 1 && t->size(0) == n, name,
                    " must be float32 [", n, "] on the CPU, got ", t->scalar_type(), " ", t->sizes());
}

// out[r] = w * (x[r] * rsqrt(mean(x[r]^2) + eps)), rows of n floats (the family's RMSNorm in fp32)
void rms_norm_rows(const float* x, const float* w, float eps, float* out, int64_t rows, int64_t n, int64_t ld_in, int64_t ld_out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ld_in;
    float* o = out + r * ld_out;
    float ss = 0.f;
    for (int64_t i = 0; i < n; ++i) ss += xr[i] * xr[i];
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(n) + eps);
    for (int64_t i = 0; i < n; ++i) o[i] = w[i] * (xr[i] * inv);
  }
}

// x[t, h, :] (D floats) rotated in place: x * cos + rotate_half(x) * sin, rotate_half = (-x2, x1)
void rope_rows(float* x, const float* cos, const float* sin, int64_t T, int64_t heads, int64_t D) {
  const int64_t half = D / 2;
  for (int64_t t = 0; t < T; ++t) {
    const float* c = cos + t * D;
    const float* s = sin + t * D;
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * D;
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i + half] + a * s[i + half];
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rmsnorm_qkv_rope_cpu(
    const at::Tensor& h, const at::Tensor& norm_weight, double eps, const at::Tensor& wq, const std::optional<at::Tensor>& bq,
    const at::Tensor& wk, const std::optional<at::Tensor>& bk, const at::Tensor& wv, const std::optional<at::Tensor>& bv,
    const std::optional<at::Tensor>& q_norm_weight, const std::optional<at::Tensor>& k_norm_weight, double qk_eps,
    const at::Tensor& cos, const at::Tensor& sin, int64_t head_dim) {
  check_f32_2d(h, "h", -1);
  const int64_t T = h.size(0), H = h.size(1), D = head_dim;
  TORCH_CHECK_VALUE(D > 0 && D % 2 == 0, "head_dim must be even and positive, got ", D);
  check_vec(norm_weight, "norm_weight", H);
  check_f32_2d(wq, "wq", H);
  check_f32_2d(wk, "wk", H);
  check_f32_2d(wv, "wv", H);
  TORCH_CHECK_VALUE(wq.size(0) % D == 0 && wk.size(0) % D == 0 && wv.size(0) == wk.size(0),
                    "wq must have a multiple of head_dim rows and wv as many as wk, got ", wq.sizes(), ", ", wk.sizes(), ", ", wv.sizes());
  check_vec(bq, "bq", wq.size(0));
  check_vec(bk, "bk", wk.size(0));
  check_vec(bv, "bv", wv.size(0));
  TORCH_CHECK_VALUE(q_norm_weight.has_value() == k_norm_weight.has_value(), "q_norm_weight and k_norm_weight must be given together");
  check_vec(q_norm_weight, "q_norm_weight", D);
  check_vec(k_norm_weight, "k_norm_weight", D);
  check_f32_2d(cos, "cos", D);
  check_f32_2d(sin, "sin", D);
  TORCH_CHECK_VALUE(cos.size(0) == T && sin.size(0) == T, "cos and sin must be [T, head_dim] = [", T, ", ", D, "], got ",
                    cos.sizes(), " and ", sin.sizes());
  const int64_t Hq = wq.size(0) / D, Hkv = wk.size(0) / D;
  const at::Tensor hc = h.contiguous(), nw = norm_weight.contiguous(), cc = cos.contiguous(), sc = sin.contiguous();
  at::Tensor x = at::empty({T, H}, hc.options());
  rms_norm_rows(hc.data_ptr<float>(), nw.data_ptr<float>(), static_cast<float>(eps), x.data_ptr<float>(), T, H, H, H);
  at::Tensor q = proj(x, wq, bq);
  at::Tensor k = proj(x, wk, bk);
  at::Tensor v = proj(x, wv, bv);
  if (q_norm_weight.has_value()) {  // Qwen3: RMSNorm over each head's D features, before the rotation
    const at::Tensor qn = q_norm_weight->contiguous(), kn = k_norm_weight->contiguous();
    rms_norm_rows(q.data_ptr<float>(), qn.data_ptr<float>(), static_cast<float>(qk_eps), q.data_ptr<float>(), T * Hq, D, D, D);
    rms_norm_rows(k.data_ptr<float>(), kn.data_ptr<float>(), static_cast<float>(qk_eps), k.data_ptr<float>(), T * Hkv, D, D, D);
  }
  rope_rows(q.data_ptr<float>(), cc.data_ptr<float>(), sc.data_ptr<float>(), T, Hq, D);
  rope_rows(k.data_ptr<float>(), cc.data_ptr<float>(), sc.data_ptr<float>(), T, Hkv, D);
  return {q.view({T, Hq, D}), k.view({T, Hkv, D}), v.view({T, Hkv, D})};
}

at::Tensor oproj_mlp_cpu(const at::Tensor& h, const at::Tensor& attn, const at::Tensor& wo, const std::optional<at::Tensor>& bo,
                         const at::Tensor& norm_weight, double eps, const at::Tensor& w_gate, const std::optional<at::Tensor>& b_gate,
                         const at::Tensor& w_up, const std::optional<at::Tensor>& b_up, const at::Tensor& w_down,
                         const std::optional<at::Tensor>& b_down) {
  check_f32_2d(h, "h", -1);
  const int64_t T = h.size(0), H = h.size(1);
  check_f32_2d(attn, "attn", -1);
  TORCH_CHECK_VALUE(attn.size(0) == T, "attn must have as many rows as h (", T, "), got ", attn.sizes());
  check_f32_2d(wo, "wo", attn.size(1));
  TORCH_CHECK_VALUE(wo.size(0) == H, "wo must be [", H, ", ", attn.size(1), "], got ", wo.sizes());
  check_vec(bo, "bo", H);
  check_vec(norm_weight, "norm_weight", H);
  check_f32_2d(w_gate, "w_gate", H);
  check_f32_2d(w_up, "w_up", H);
  TORCH_CHECK_VALUE(w_up.size(0) == w_gate.size(0), "w_up must be shaped as w_gate ", w_gate.sizes(), ", got ", w_up.sizes());
  const int64_t I = w_gate.size(0);
  check_vec(b_gate, "b_gate", I);
  check_vec(b_up, "b_up", I);
  check_f32_2d(w_down, "w_down", I);
  TORCH_CHECK_VALUE(w_down.size(0) == H, "w_down must be [", H, ", ", I, "], got ", w_down.sizes());
  check_vec(b_down, "b_down", H);

  at::Tensor h1 = proj(attn.contiguous(), wo, bo);  // [T, H], then + h in place
  const at::Tensor hc = h.contiguous(), nw = norm_weight.contiguous();
  float* h1p = h1.data_ptr<float>();
  const float* hp = hc.data_ptr<float>();
  for (int64_t i = 0; i < T * H; ++i) h1p[i] = hp[i] + h1p[i];
  at::Tensor x = at::empty({T, H}, h1.options());
  rms_norm_rows(h1p, nw.data_ptr<float>(), static_cast<float>(eps), x.data_ptr<float>(), T, H, H, H);
  at::Tensor g = proj(x, w_gate, b_gate);
  const at::Tensor u = proj(x, w_up, b_up);
  float* gp = g.data_ptr<float>();
  const float* up = u.data_ptr<float>();
  // silu(g) * u with r1::fast_exp (relative error ~2e-7; libm's expf would not vectorise) on
  // -|g| <= 0: silu(g) = g / (1 + e^-g) for g >= 0, g e^g / (1 + e^g) below
  const int64_t n = T * I;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float x = gp[i];
    const float e = r1::fast_exp(-std::fabs(x));
    gp[i] = (x >= 0.f ? x : x * e) / (1.f + e) * up[i];
  }
  at::Tensor out = proj(g, w_down, b_down);
  float* op = out.data_ptr<float>();
  for (int64_t i = 0; i < T * H; ++i) op[i] = h1p[i] + op[i];
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(r1kernels, CPU, m) {
  m.impl("rmsnorm_qkv_rope", &rmsnorm_qkv_rope_cpu);
  m.impl("oproj_mlp", &oproj_mlp_cpu);
}
