// The GRPO per-token loss given log-probs, its reduction and its gradient in logp, on the GPU:
// r1kernels::grpo_token_loss for the CUDA dispatch key.
//
// Per token (token-level importance sampling; w = exp(logp - old), old = logp when absent):
//   loss_kind 0 (grpo/bnpo/dr_grpo/dapo): -min(min(w, delta) * A, clamp(w, 1 - eps_low, 1 + eps_high) * A)
//   loss_kind 1 (cispo): -sg(min(w, eps_high)) * A * logp
//   loss_kind 2 (sapo):  -(sigmoid(tau (w - 1)) * 4 / tau) * A, tau = sapo_tpos if A > 0 else sapo_tneg
//   times min(exp(logp - rollout), tis_cap) when rollout_logp is given (truncated importance
//   sampling against the sampler's log-probs; a constant in the gradient, not applied to the KL),
//   plus beta * (exp(ref - logp) - (ref - logp) - 1) when beta != 0.
// loss = sum over tokens with token_scale != 0 of token_scale * loss_t (the aggregation is folded
// into token_scale by the Python layer); grad[t] = token_scale * dloss_t/dlogp, 0 where the scale
// is 0. Ties in min() split the gradient in half, as torch.minimum's backward does. The formulas
// are those of r1kernels/_torch/grpo_token_loss.py token_loss_and_grad, in float32.

// per-operator headers rather than ATen/ATen.h: nvcc parses every header three times (host, sm_80,
// sm_90a), and the whole of ATen costs about a quarter more compile time
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

namespace r1kernels {
namespace {

constexpr int kThreads = 256;

struct LossParams {
  float beta, eps_low, eps_high, delta, sapo_tpos, sapo_tneg, tis_cap;
  bool has_delta, has_tis;
  int loss_kind;
};

__device__ __forceinline__ void token_loss_and_grad(float lp, float old, float ref, float rollout, float A,
                                                    const LossParams& p, float* loss, float* grad) {
  const float w = expf(lp - old);
  float l, g;
  if (p.loss_kind == 1) {  // cispo: the capped ratio is a constant weight on logp
    const float cap = fminf(w, p.eps_high);
    l = -cap * A * lp;
    g = -cap * A;
  } else if (p.loss_kind == 2) {  // sapo: a soft gate in place of the hard clip
    const float tau = A > 0.f ? p.sapo_tpos : p.sapo_tneg;
    const float sig = 1.f / (1.f + expf(-tau * (w - 1.f)));
    l = -(sig * 4.f / tau) * A;
    g = -4.f * A * sig * (1.f - sig) * w;
  } else {
    const float lo = 1.f - p.eps_low, hi = 1.f + p.eps_high;
    const float c = fminf(fmaxf(w, lo), hi);
    const float dc = (w >= lo && w <= hi) ? w : 0.f;  // d clamp(w)/d logp
    float w1 = w, dw1 = w;
    if (p.has_delta) {
      w1 = fminf(w, p.delta);
      dw1 = w <= p.delta ? w : 0.f;
    }
    const float a = w1 * A, b = c * A;
    l = -fminf(a, b);
    g = a < b ? -A * dw1 : (a > b ? -A * dc : -A * (dw1 + dc) * 0.5f);
  }
  if (p.has_tis) {
    const float tis = fminf(expf(lp - rollout), p.tis_cap);
    l *= tis;
    g *= tis;
  }
  if (p.beta != 0.f) {
    const float d = ref - lp;
    l += p.beta * (expf(d) - d - 1.f);
    g += p.beta * (1.f - expf(d));
  }
  *loss = l;
  *grad = g;
}

__global__ void grpo_token_loss_kernel(const float* __restrict__ logp, const float* __restrict__ scale,
                                       const float* __restrict__ adv, const float* __restrict__ old_logp,
                                       const float* __restrict__ ref_logp, const float* __restrict__ rollout_logp,
                                       LossParams p, int64_t n,
                                       float* __restrict__ contrib, float* __restrict__ grad) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float s = scale[i];
  if (s == 0.f) {  // masked: adds nothing, even where its per-token loss would not be finite
    contrib[i] = 0.f;
    grad[i] = 0.f;
    return;
  }
  const float lp = logp[i];
  float l, g;
  token_loss_and_grad(lp, old_logp ? old_logp[i] : lp, ref_logp ? ref_logp[i] : 0.f,
                      rollout_logp ? rollout_logp[i] : 0.f, adv[i], p, &l, &g);
  contrib[i] = l * s;
  grad[i] = g * s;
}

at::Tensor as_float_vector(const at::Tensor& t, int64_t n, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == n, name, " must have shape [", n, "], got ", t.sizes());
  TORCH_CHECK_VALUE(t.is_floating_point(), name, " must be floating point, got ", t.scalar_type());
  return t.to(at::kFloat).contiguous();
}

std::tuple<at::Tensor, at::Tensor> grpo_token_loss_cuda(const at::Tensor& logp_in, const at::Tensor& token_scale,
                                                        const at::Tensor& token_adv,
                                                        const std::optional<at::Tensor>& old_logp,
                                                        const std::optional<at::Tensor>& ref_logp, double beta,
                                                        double eps_low, double eps_high, std::optional<double> delta,
                                                        int64_t loss_kind, double sapo_tpos, double sapo_tneg,
                                                        const std::optional<at::Tensor>& rollout_logp,
                                                        std::optional<double> tis_cap) {
  TORCH_CHECK_VALUE(logp_in.dim() == 1, "logp must be 1-D [N], got ", logp_in.sizes());
  const int64_t n = logp_in.size(0);
  TORCH_CHECK_VALUE(loss_kind >= 0 && loss_kind <= 2, "loss_kind must be 0 (grpo), 1 (cispo) or 2 (sapo), got ",
                    loss_kind);
  TORCH_CHECK_VALUE(beta == 0.0 || ref_logp.has_value(), "ref_logp is required when beta != 0");
  TORCH_CHECK_VALUE(rollout_logp.has_value() == tis_cap.has_value(),
                    "rollout_logp and tis_cap go together (truncated importance sampling needs both)");
  TORCH_CHECK_VALUE(!tis_cap.has_value() || *tis_cap > 0, "tis_cap must be > 0, got ", tis_cap.value_or(0.0));
  const c10::cuda::CUDAGuard guard(logp_in.device());
  const at::Tensor logp = as_float_vector(logp_in, n, "logp");
  const at::Tensor scale = as_float_vector(token_scale, n, "token_scale");
  const at::Tensor adv = as_float_vector(token_adv, n, "token_adv");
  std::optional<at::Tensor> old, ref, rollout;
  if (old_logp.has_value()) old = as_float_vector(*old_logp, n, "old_logp");
  if (ref_logp.has_value() && beta != 0.0) ref = as_float_vector(*ref_logp, n, "ref_logp");
  if (rollout_logp.has_value()) rollout = as_float_vector(*rollout_logp, n, "rollout_logp");

  LossParams p;
  p.beta = static_cast<float>(beta);
  p.eps_low = static_cast<float>(eps_low);
  p.eps_high = static_cast<float>(eps_high);
  p.has_delta = delta.has_value();
  p.delta = delta.has_value() ? static_cast<float>(*delta) : 0.f;
  p.sapo_tpos = static_cast<float>(sapo_tpos);
  p.sapo_tneg = static_cast<float>(sapo_tneg);
  p.loss_kind = static_cast<int>(loss_kind);
  p.has_tis = tis_cap.has_value();
  p.tis_cap = tis_cap.has_value() ? static_cast<float>(*tis_cap) : 0.f;

  at::Tensor contrib = at::empty_like(logp);
  at::Tensor grad = at::empty_like(logp);
  if (n > 0) {
    const int64_t blocks = (n + kThreads - 1) / kThreads;
    grpo_token_loss_kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        logp.data_ptr<float>(), scale.data_ptr<float>(), adv.data_ptr<float>(),
        old ? old->data_ptr<float>() : nullptr, ref ? ref->data_ptr<float>() : nullptr,
        rollout ? rollout->data_ptr<float>() : nullptr, p, n,
        contrib.data_ptr<float>(), grad.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // a separate sum keeps the reduction deterministic (no atomics)
  return {contrib.sum(), grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(r1kernels, CUDA, m) { m.impl("grpo_token_loss", &grpo_token_loss_cuda); }

}  // namespace r1kernels
