// r1kernels::rmsnorm_qkv_rope on the CPU, float32: the input half of a Llama-family decoder layer
// for a decode step of a few tokens: x = RMSNorm(h); q, k, v = x Wq^T + bq, ...; (Qwen3) per-head
// RMSNorm of q, k; rotary embedding of q, k with the given cos / sin (rotate-half convention).
// At a few rows the projections are cheap (r1::skinny_linear_cpu reads each weight once; BLAS past
// 16 rows) and a step of the 5M model spent as long again in ~40 small ATen ops per layer, each a
// dispatch and an allocation through Python: here the half is one call, and the element-wise work
// is plain loops. (oproj_mlp.cpp is the other half.)
// Every row is computed alone (no reduction across rows), so a sequence's numbers do not depend on
// what else is in the batch.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

#include "decoder_layer.h"

namespace {

using namespace r1::decoder_layer;

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

}  // namespace

TORCH_LIBRARY_IMPL(r1kernels, CPU, m) { m.impl("rmsnorm_qkv_rope", &rmsnorm_qkv_rope_cpu); }
