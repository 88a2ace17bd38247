// Shared by the CPU kernels of the GRPO loss ops (grpo_loss.cpp, grpo_loss_from_logits.cpp,
// grpo_token_loss.cpp): argument checks, the per-token inputs, the row chunking and the row pass
// around grpo_row_math's per-row math.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <vector>

#include "grpo_row_math.h"

namespace r1 {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Rows per chunk of fused_grpo_loss and logits_grpo_loss: the fp32 logits buffer is rows x V, so
// the byte budget bounds the extra memory (256 MiB: 441 rows of the Qwen2.5-0.5B head). Larger
// chunks give the grad_weight GEMM a longer inner dimension and fewer passes over the [V, H]
// accumulator. R1_GRPO_CHUNK_BYTES overrides the budget (read per call: tests force small chunks).
inline int64_t chunk_rows(int64_t V, int64_t n_rows) {
  const char* env = std::getenv("R1_GRPO_CHUNK_BYTES");
  const int64_t budget = env ? std::max<int64_t>(std::atoll(env), 1) : int64_t(256) << 20;
  const int64_t rows = std::max<int64_t>(budget / (std::max<int64_t>(V, 1) * int64_t(sizeof(float))), 1);
  return std::max<int64_t>(std::min(rows, n_rows), 1);
}

inline Tensor f32(const Tensor& t) { return t.to(at::kFloat).contiguous(); }

inline void check_token_vector(const Tensor& t, const char* name, int64_t N) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == N, name, " must have shape [N] = [", N, "], got ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
}

struct TokenInputs {
  const float* scale;
  const float* adv;
  const float* old;  // nullptr: on-policy
  const float* ref;  // nullptr: no KL
  const float* rollout;  // nullptr: no truncated importance sampling
  float old_or(int64_t i, float lp) const { return old ? old[i] : lp; }
  float ref_or(int64_t i) const { return ref ? ref[i] : 0.f; }
  float rollout_or(int64_t i) const { return rollout ? rollout[i] : 0.f; }
};

// Checks shared by the three ops; returns contiguous fp32 views whose pointers TokenInputs holds.
struct TokenTensors {
  Tensor scale, adv, old, ref, rollout;
  TokenInputs ptrs() const {
    const auto ptr = [](const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; };
    return {scale.data_ptr<float>(), adv.data_ptr<float>(), ptr(old), ptr(ref), ptr(rollout)};
  }
};

inline TokenTensors check_token_inputs(int64_t N, const Tensor& token_scale, const Tensor& token_adv, const OptTensor& old_logp,
                                const OptTensor& ref_logp, const OptTensor& rollout_logp, const LossParams& p) {
  check_token_vector(token_scale, "token_scale", N);
  check_token_vector(token_adv, "token_adv", N);
  TokenTensors t;
  t.scale = token_scale.contiguous();
  t.adv = token_adv.contiguous();
  if (old_logp.has_value()) {
    check_token_vector(*old_logp, "old_logp", N);
    t.old = old_logp->contiguous();
  }
  if (ref_logp.has_value()) {
    check_token_vector(*ref_logp, "ref_logp", N);
    t.ref = ref_logp->contiguous();
  }
  TORCH_CHECK_VALUE(p.beta == 0.0 || t.ref.defined(), "ref_logp is required when beta != 0 (the KL term)");
  TORCH_CHECK_VALUE(rollout_logp.has_value() == p.tis_cap.has_value(),
                    "rollout_logp and tis_cap go together (truncated importance sampling needs both), got rollout_logp ",
                    rollout_logp.has_value() ? "set" : "None", " and tis_cap ", p.tis_cap.has_value() ? "set" : "None");
  if (rollout_logp.has_value()) {
    TORCH_CHECK_VALUE(*p.tis_cap > 0, "tis_cap must be > 0 (the cap of the importance weight), got ", *p.tis_cap);
    check_token_vector(*rollout_logp, "rollout_logp", N);
    t.rollout = rollout_logp->contiguous();
  }
  TORCH_CHECK_VALUE(p.loss_kind >= 0 && p.loss_kind <= 2, "loss_kind must be 0 (clipped), 1 (cispo) or 2 (sapo), got ",
                    p.loss_kind);
  return t;
}

inline void check_targets(const Tensor& targets, int64_t N, int64_t V) {
  TORCH_CHECK_VALUE(targets.dim() == 1 && targets.size(0) == N, "targets must have shape [N] = [", N, "], got ",
                    targets.sizes());
  TORCH_CHECK_VALUE(targets.scalar_type() == at::kLong, "targets must be int64, got ", targets.scalar_type());
  if (N == 0) return;
  const auto [lo, hi] = at::aminmax(targets);
  const int64_t mn = lo.item<int64_t>(), mx = hi.item<int64_t>();
  TORCH_CHECK_VALUE(mn >= 0 && mx < V, "targets must lie in [0, ", V, ") (the vocabulary), got values in [", mn, ", ",
                    mx, "]");
}

inline LossParams make_params(double beta, double eps_low, double eps_high, std::optional<double> delta, int64_t loss_kind,
                       double sapo_tpos, double sapo_tneg, std::optional<double> tis_cap) {
  return {beta, eps_low, eps_high, delta, loss_kind, sapo_tpos, sapo_tneg, tis_cap};
}

inline double sum_rows(const std::vector<float>& v) {
  double s = 0.0;  // in row order: the loss does not depend on the thread count
  for (float x : v) s += x;
  return s;
}

// Row pass shared by logits_grpo_loss and fused_grpo_loss: z [rows, V] fp32 logits (rows listed
// in `index`, their token positions); with compute_grad, z becomes d loss / d logits in place.
inline void loss_rows(float* z, int64_t rows, int64_t V, const int64_t* index, const int64_t* targets, const TokenInputs& in,
               const LossParams& p, float inv_temp, bool compute_grad, float* logp, float* entropy,
               std::vector<float>& row_loss) {
  at::parallel_for(0, rows, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t i = index ? index[r] : r;
      float* zr = z + r * V;
      const RowStats st = softmax_row(zr, V, targets[i], inv_temp, compute_grad);
      logp[i] = st.logp;
      entropy[i] = st.entropy;
      float loss, grad;
      scaled_token_loss(st.logp, in.adv[i], in.old_or(i, st.logp), in.ref_or(i), in.rollout_or(i), in.scale[i], p, &loss,
                        &grad);
      row_loss[i] = loss;
      if (compute_grad) grad_from_exp(zr, V, targets[i], st.sum_exp, grad * inv_temp);
    }
  });
}

inline std::vector<int64_t> active_rows(const float* scale, int64_t N) {
  std::vector<int64_t> rows;
  rows.reserve(N);
  for (int64_t i = 0; i < N; ++i)
    if (scale[i] != 0.f) rows.push_back(i);
  return rows;
}

}  // namespace r1
