// r1kernels::fused_grpo_loss on the CPU (semantics exactly as r1kernels/_torch): hidden [N, H], LM
// head [V, H] -> loss, logp, entropy and the gradients of hidden, weight and bias, all in the
// forward: per chunk of rows, three GEMMs (logits, grad_hidden, grad_weight) around one row pass
// that turns the logits buffer into the gradient of the logits in place. Rows with token_scale 0
// (masked tokens) are skipped entirely: no GEMM work, logp and entropy 0.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "grpo_loss_common.h"

namespace r1 {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> fused_grpo_loss_cpu(
    const Tensor& hidden, const Tensor& weight, const OptTensor& bias, const Tensor& targets, const Tensor& token_scale,
    const Tensor& token_adv, const OptTensor& old_logp, const OptTensor& ref_logp, double beta, double eps_low,
    double eps_high, std::optional<double> delta, double temperature, int64_t loss_kind, double sapo_tpos,
    double sapo_tneg, bool compute_grad, const OptTensor& rollout_logp, std::optional<double> tis_cap) {
  TORCH_CHECK_VALUE(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
                    "hidden must be [N, H] and weight [V, H], got hidden ", hidden.sizes(), " and weight ",
                    weight.sizes());
  TORCH_CHECK_VALUE(hidden.is_floating_point() && weight.is_floating_point(),
                    "hidden and weight must be floating point, got ", hidden.scalar_type(), " and ",
                    weight.scalar_type());
  TORCH_CHECK_VALUE(temperature > 0, "temperature must be > 0, got ", temperature);
  const int64_t N = hidden.size(0), H = hidden.size(1), V = weight.size(0);
  TORCH_CHECK_VALUE(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == V), "bias must have shape [V] = [", V,
                    "], got ", bias.has_value() ? bias->sizes() : at::IntArrayRef{});
  const LossParams p = make_params(beta, eps_low, eps_high, delta, loss_kind, sapo_tpos, sapo_tneg, tis_cap);
  const TokenTensors tt = check_token_inputs(N, token_scale, token_adv, old_logp, ref_logp, rollout_logp, p);
  check_targets(targets, N, V);
  const TokenInputs in = tt.ptrs();
  const Tensor tg = targets.contiguous();
  const float inv_temp = float(1.0 / temperature);

  const auto fopt = hidden.options().dtype(at::kFloat);
  Tensor logp = at::zeros({N}, fopt), entropy = at::zeros({N}, fopt);
  // fp32 copies only where the inputs are not fp32 already (bf16/fp16 heads accumulate in fp32)
  const Tensor W = f32(weight);  // [V, H]
  const Tensor Wt = W.t();
  const Tensor b = bias.has_value() ? f32(*bias) : Tensor();
  const Tensor h_all = hidden.contiguous();
  Tensor gh, gW, gb;
  if (compute_grad) {
    gh = at::zeros({N, H}, fopt);
    gW = at::zeros({V, H}, fopt);
    if (b.defined()) gb = at::zeros({V}, fopt);
  }

  std::vector<float> row_loss(N, 0.f);
  const std::vector<int64_t> rows = active_rows(in.scale, N);
  const int64_t n_active = int64_t(rows.size());
  const bool all_active = n_active == N;  // the common case: chunks are plain slices
  const Tensor idx_all = at::from_blob(const_cast<int64_t*>(rows.data()), {n_active}, at::kLong);
  const int64_t R = chunk_rows(V, n_active);
  Tensor buf = n_active ? at::empty({R, V}, fopt) : Tensor();  // the only tokens x vocab memory

  for (int64_t start = 0; start < n_active; start += R) {
    const int64_t r = std::min(R, n_active - start);
    const Tensor idx = idx_all.narrow(0, start, r);
    const Tensor h = (all_active ? h_all.narrow(0, start, r) : h_all.index_select(0, idx)).to(at::kFloat).contiguous();
    Tensor z = buf.narrow(0, 0, r);  // [r, V]
    if (b.defined())
      at::addmm_out(z, b, h, Wt);
    else
      at::mm_out(z, h, Wt);
    loss_rows(z.data_ptr<float>(), r, V, rows.data() + start, tg.data_ptr<int64_t>(), in, p, inv_temp, compute_grad,
              logp.data_ptr<float>(), entropy.data_ptr<float>(), row_loss);
    if (!compute_grad) continue;
    // z now holds d loss / d logits for these rows
    if (all_active) {
      Tensor gh_rows = gh.narrow(0, start, r);
      at::mm_out(gh_rows, z, W);
    } else {
      gh.index_copy_(0, idx, at::mm(z, W));
    }
    gW.addmm_(z.t(), h);
    if (gb.defined()) gb.add_(z.sum(0));
  }

  const Tensor loss = at::scalar_tensor(sum_rows(row_loss), fopt);
  if (!compute_grad) {
    // three distinct tensors: outputs of a custom op must not alias each other
    const auto e = [&] { return at::empty({0}, hidden.options()); };
    return {loss, logp, entropy, e(), e(), e()};
  }
  return {loss,
          logp,
          entropy,
          gh.to(hidden.scalar_type()),
          gW.to(weight.scalar_type()),
          gb.defined() ? gb.to(bias->scalar_type()) : at::empty({0}, hidden.options())};
}

}  // namespace
}  // namespace r1

TORCH_LIBRARY_IMPL(r1kernels, CPU, m) { m.impl("fused_grpo_loss", &r1::fused_grpo_loss_cpu); }
