// CPU kernels of the GRPO loss ops (semantics exactly as r1kernels/_torch):
//   fused_grpo_loss   hidden [N, H], LM head [V, H] -> loss, logp, entropy and the gradients of
//                     hidden, weight and bias, all in the forward: per chunk of rows, three GEMMs
//                     (logits, grad_hidden, grad_weight) around one row pass that turns the logits
//                     buffer into the gradient of the logits in place.
//   logits_grpo_loss  the same row math on given logits [N, V], gradient of the logits instead of GEMMs.
//   grpo_token_loss   the per-token loss and its gradient from log-probs [N].
// Rows with token_scale 0 (masked tokens) are skipped entirely: no GEMM work, logp and entropy 0.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "grpo_row_math.h"

namespace r1 {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Rows per chunk of fused_grpo_loss and logits_grpo_loss: the fp32 logits buffer is rows x V, so
// the byte budget bounds the extra memory (256 MiB: 441 rows of the Qwen2.5-0.5B head). Larger
// chunks give the grad_weight GEMM a longer inner dimension and fewer passes over the [V, H]
// accumulator. R1_GRPO_CHUNK_BYTES overrides the budget (read per call: tests force small chunks).
int64_t chunk_rows(int64_t V, int64_t n_rows) {
  const char* env = std::getenv("R1_GRPO_CHUNK_BYTES");
  const int64_t budget = env ? std::max<int64_t>(std::atoll(env), 1) : int64_t(256) << 20;
  const int64_t rows = std::max<int64_t>(budget / (std::max<int64_t>(V, 1) * int64_t(sizeof(float))), 1);
  return std::max<int64_t>(std::min(rows, n_rows), 1);
}

Tensor f32(const Tensor& t) { return t.to(at::kFloat).contiguous(); }

void check_token_vector(const Tensor& t, const char* name, int64_t N) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == N, name, " must have shape [N] = [", N, "], got ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
}

struct TokenInputs {
  const float* scale;
  const float* adv;
  const float* old;  // nullptr: on-policy
  const float* ref;  // nullptr: no KL
  float old_or(int64_t i, float lp) const { return old ? old[i] : lp; }
  float ref_or(int64_t i) const { return ref ? ref[i] : 0.f; }
};

// Checks shared by the three ops; returns contiguous fp32 views whose pointers TokenInputs holds.
struct TokenTensors {
  Tensor scale, adv, old, ref;
  TokenInputs ptrs() const {
    return {scale.data_ptr<float>(), adv.data_ptr<float>(), old.defined() ? old.data_ptr<float>() : nullptr,
            ref.defined() ? ref.data_ptr<float>() : nullptr};
  }
};

TokenTensors check_token_inputs(int64_t N, const Tensor& token_scale, const Tensor& token_adv, const OptTensor& old_logp,
                                const OptTensor& ref_logp, const LossParams& p) {
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
  TORCH_CHECK_VALUE(p.loss_kind >= 0 && p.loss_kind <= 2, "loss_kind must be 0 (clipped), 1 (cispo) or 2 (sapo), got ",
                    p.loss_kind);
  return t;
}

void check_targets(const Tensor& targets, int64_t N, int64_t V) {
  TORCH_CHECK_VALUE(targets.dim() == 1 && targets.size(0) == N, "targets must have shape [N] = [", N, "], got ",
                    targets.sizes());
  TORCH_CHECK_VALUE(targets.scalar_type() == at::kLong, "targets must be int64, got ", targets.scalar_type());
  if (N == 0) return;
  const auto [lo, hi] = at::aminmax(targets);
  const int64_t mn = lo.item<int64_t>(), mx = hi.item<int64_t>();
  TORCH_CHECK_VALUE(mn >= 0 && mx < V, "targets must lie in [0, ", V, ") (the vocabulary), got values in [", mn, ", ",
                    mx, "]");
}

LossParams make_params(double beta, double eps_low, double eps_high, std::optional<double> delta, int64_t loss_kind,
                       double sapo_tpos, double sapo_tneg) {
  return {beta, eps_low, eps_high, delta, loss_kind, sapo_tpos, sapo_tneg};
}

double sum_rows(const std::vector<float>& v) {
  double s = 0.0;  // in row order: the loss does not depend on the thread count
  for (float x : v) s += x;
  return s;
}

std::tuple<Tensor, Tensor> grpo_token_loss_cpu(const Tensor& logp, const Tensor& token_scale, const Tensor& token_adv,
                                               const OptTensor& old_logp, const OptTensor& ref_logp, double beta,
                                               double eps_low, double eps_high, std::optional<double> delta,
                                               int64_t loss_kind, double sapo_tpos, double sapo_tneg) {
  TORCH_CHECK_VALUE(logp.dim() == 1, "logp must be 1-D [N], got ", logp.sizes());
  const int64_t N = logp.size(0);
  const LossParams p = make_params(beta, eps_low, eps_high, delta, loss_kind, sapo_tpos, sapo_tneg);
  const TokenTensors tt = check_token_inputs(N, token_scale, token_adv, old_logp, ref_logp, p);
  const TokenInputs in = tt.ptrs();
  const Tensor lp = f32(logp);
  const float* lpp = lp.data_ptr<float>();
  Tensor grad = at::empty({N}, lp.options());
  float* g = grad.data_ptr<float>();
  std::vector<float> row_loss(N);
  at::parallel_for(0, N, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      scaled_token_loss(lpp[i], in.adv[i], in.old_or(i, lpp[i]), in.ref_or(i), in.scale[i], p, &row_loss[i], &g[i]);
  });
  return {at::scalar_tensor(sum_rows(row_loss), lp.options()), grad};
}

// Row pass shared by logits_grpo_loss and fused_grpo_loss: z [rows, V] fp32 logits (rows listed
// in `index`, their token positions); with compute_grad, z becomes d loss / d logits in place.
void loss_rows(float* z, int64_t rows, int64_t V, const int64_t* index, const int64_t* targets, const TokenInputs& in,
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
      scaled_token_loss(st.logp, in.adv[i], in.old_or(i, st.logp), in.ref_or(i), in.scale[i], p, &loss, &grad);
      row_loss[i] = loss;
      if (compute_grad) grad_from_exp(zr, V, targets[i], st.sum_exp, grad * inv_temp);
    }
  });
}

std::vector<int64_t> active_rows(const float* scale, int64_t N) {
  std::vector<int64_t> rows;
  rows.reserve(N);
  for (int64_t i = 0; i < N; ++i)
    if (scale[i] != 0.f) rows.push_back(i);
  return rows;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> logits_grpo_loss_cpu(
    const Tensor& logits, const Tensor& targets, const Tensor& token_scale, const Tensor& token_adv,
    const OptTensor& old_logp, const OptTensor& ref_logp, double beta, double eps_low, double eps_high,
    std::optional<double> delta, double temperature, int64_t loss_kind, double sapo_tpos, double sapo_tneg,
    bool compute_grad) {
  TORCH_CHECK_VALUE(logits.dim() == 2 && logits.is_floating_point(), "logits must be a floating-point [N, V] tensor, got ",
                    logits.scalar_type(), " ", logits.sizes());
  TORCH_CHECK_VALUE(temperature > 0, "temperature must be > 0, got ", temperature);
  const int64_t N = logits.size(0), V = logits.size(1);
  const LossParams p = make_params(beta, eps_low, eps_high, delta, loss_kind, sapo_tpos, sapo_tneg);
  const TokenTensors tt = check_token_inputs(N, token_scale, token_adv, old_logp, ref_logp, p);
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

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> fused_grpo_loss_cpu(
    const Tensor& hidden, const Tensor& weight, const OptTensor& bias, const Tensor& targets, const Tensor& token_scale,
    const Tensor& token_adv, const OptTensor& old_logp, const OptTensor& ref_logp, double beta, double eps_low,
    double eps_high, std::optional<double> delta, double temperature, int64_t loss_kind, double sapo_tpos,
    double sapo_tneg, bool compute_grad) {
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
  const LossParams p = make_params(beta, eps_low, eps_high, delta, loss_kind, sapo_tpos, sapo_tneg);
  const TokenTensors tt = check_token_inputs(N, token_scale, token_adv, old_logp, ref_logp, p);
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

TORCH_LIBRARY_IMPL(r1kernels, CPU, m) {
  m.impl("fused_grpo_loss", &r1::fused_grpo_loss_cpu);
  m.impl("logits_grpo_loss", &r1::logits_grpo_loss_cpu);
  m.impl("grpo_token_loss", &r1::grpo_token_loss_cpu);
}
