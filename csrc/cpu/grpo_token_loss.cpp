// r1kernels::grpo_token_loss on the CPU, semantics exactly as r1kernels/_torch: the per-token GRPO
// loss and its gradient from log-probs [N] (the loss after a separate log-prob pass).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "grpo_loss_common.h"

namespace r1 {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

std::tuple<Tensor, Tensor> grpo_token_loss_cpu(const Tensor& logp, const Tensor& token_scale, const Tensor& token_adv,
                                               const OptTensor& old_logp, const OptTensor& ref_logp, double beta,
                                               double eps_low, double eps_high, std::optional<double> delta,
                                               int64_t loss_kind, double sapo_tpos, double sapo_tneg,
                                               const OptTensor& rollout_logp, std::optional<double> tis_cap) {
  TORCH_CHECK_VALUE(logp.dim() == 1, "logp must be 1-D [N], got ", logp.sizes());
  const int64_t N = logp.size(0);
  const LossParams p = make_params(beta, eps_low, eps_high, delta, loss_kind, sapo_tpos, sapo_tneg, tis_cap);
  const TokenTensors tt = check_token_inputs(N, token_scale, token_adv, old_logp, ref_logp, rollout_logp, p);
  const TokenInputs in = tt.ptrs();
  const Tensor lp = f32(logp);
  const float* lpp = lp.data_ptr<float>();
  Tensor grad = at::empty({N}, lp.options());
  float* g = grad.data_ptr<float>();
  std::vector<float> row_loss(N);
  at::parallel_for(0, N, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      scaled_token_loss(lpp[i], in.adv[i], in.old_or(i, lpp[i]), in.ref_or(i), in.rollout_or(i), in.scale[i], p,
                        &row_loss[i], &g[i]);
  });
  return {at::scalar_tensor(sum_rows(row_loss), lp.options()), grad};
}

}  // namespace
}  // namespace r1

TORCH_LIBRARY_IMPL(r1kernels, CPU, m) { m.impl("grpo_token_loss", &r1::grpo_token_loss_cpu); }
