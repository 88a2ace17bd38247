// r1kernels::logits_grpo_loss (behind r1kernels.grpo_loss_from_logits) on the CPU, semantics
// exactly as r1kernels/_torch: the row math of fused_grpo_loss on given logits [N, V], the gradient
// of the logits instead of GEMMs. Rows with token_scale 0 are skipped: logp and entropy 0.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "grpo_loss_common.h"

namespace r1 {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

std::tuple<Tensor, Tensor, Tensor, Tensor> logits_grpo_loss_cpu(
    const Tensor& logits, const Tensor& targets, const Tensor& token_scale, const Tensor& token_adv,
    const OptTensor& old_logp, const OptTensor& ref_logp, double beta, double eps_low, double eps_high,
    std::optional<double> delta, double temperature, int64_t loss_kind, double sapo_tpos, double sapo_tneg,
    bool compute_grad, const OptTensor& rollout_logp, std::optional<double> tis_cap) {
  TORCH_CHECK_VALUE(logits.dim() == 2 && logits.is_floating_point(), "logits must be a floating-point [N, V] tensor, got ",
                    logits.scalar_type(), " ", logits.sizes());
  TORCH_CHECK_VALUE(temperature > 0, "temperature must be > 0, got ", temperature);
  const int64_t N = logits.size(0), V = logits.size(1);
  const LossParams p = make_params(beta, eps_low, eps_high, delta, loss_kind, sapo_tpos, sapo_tneg, tis_cap);
  const TokenTensors tt = check_token_inputs(N, token_scale, token_adv, old_logp, ref_logp, rollout_logp, p);
  check_targets(targets, N, V);
  const TokenInputs in = tt.ptrs();
  const Tensor tg = targets.contiguous();
  const auto fopt = logits.options().dtype(at::kFloat);
  Tensor logp = at::zeros({N}, fopt), entropy = at::zeros({N}, fopt);
  Tensor grad = compute_grad ? at::zeros_like(logits, at::MemoryFormat::Contiguous) : at::empty({0}, logits.options());
  std::vector<float> row_loss(N, 0.f);
  const std::vector<int64_t> rows = active_rows(in.scale, N);
  const int64_t R = chunk_rows(V, int64_t(rows.size()));
  const Tensor idx_all = at::from_blob(const_cast<int64_t*>(rows.data()), {int64_t(rows.size())}, at::kLong);
  for (int64_t start = 0; start < int64_t(rows.size()); start += R) {
    const int64_t r = std::min<int64_t>(R, rows.size() - start);
    const Tensor idx = idx_all.narrow(0, start, r);
    Tensor z = logits.index_select(0, idx).to(at::kFloat).contiguous();  // [r, V]
    loss_rows(z.data_ptr<float>(), r, V, rows.data() + start, tg.data_ptr<int64_t>(), in, p, float(1.0 / temperature),
              compute_grad, logp.data_ptr<float>(), entropy.data_ptr<float>(), row_loss);
    if (compute_grad) grad.index_copy_(0, idx, z.to(logits.scalar_type()));
  }
  return {at::scalar_tensor(sum_rows(row_loss), fopt), logp, entropy, grad};
}

}  // namespace
}  // namespace r1

TORCH_LIBRARY_IMPL(r1kernels, CPU, m) { m.impl("logits_grpo_loss", &r1::logits_grpo_loss_cpu); }
