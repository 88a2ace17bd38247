// Per-row math shared by the fused GRPO CPU ops (fused_logprobs, fused_logprobs_backward,
// fused_grpo_loss, logits_grpo_loss, grpo_token_loss): softmax statistics of one logits row,
// their online (vocabulary-chunked) form, the per-token GRPO loss and its derivative in closed form,
// and the gradient of the logits. Everything is fp32 on contiguous rows; callers convert chunks.
//
// Conventions: z is a row of raw logits (bias added, not yet divided by the temperature);
// s = z * inv_temp; lse = logsumexp(s); p = exp(s - lse); entropy = -sum p log p.
#pragma once

#include <cstdint>
#include <optional>

namespace r1 {

// The scalar options of the loss, as the schemas pass them.
struct LossParams {
  double beta;
  double eps_low;
  double eps_high;
  std::optional<double> delta;
  int64_t loss_kind;  // 0 clipped surrogate (grpo/bnpo/dr_grpo/dapo), 1 cispo, 2 sapo
  double sapo_tpos;
  double sapo_tneg;
  // truncated importance sampling: the surrogate (not the KL) of each token is weighted by
  // min(exp(logp - rollout_logp), tis_cap), a constant in the gradient; absent: no weight
  std::optional<double> tis_cap;
};

// Per-token loss and d loss / d logp, the closed form of r1kernels._torch.grpo_token_loss.token_loss_and_grad: ties in
// min() split the gradient in half as torch.minimum does. `old_lp` is logp itself when on-policy;
// `ref_lp` is read only when beta != 0, `rollout_lp` only when p.tis_cap is set.
void token_loss_and_grad(float lp, float adv, float old_lp, float ref_lp, float rollout_lp, const LossParams& p,
                         float* loss, float* grad);

// Applies the aggregation weight: a token with scale 0 contributes nothing, even a non-finite loss.
inline void scaled_token_loss(float lp, float adv, float old_lp, float ref_lp, float rollout_lp, float scale,
                              const LossParams& p, float* loss, float* grad) {
  if (scale == 0.f) {
    *loss = 0.f;
    *grad = 0.f;
    return;
  }
  token_loss_and_grad(lp, adv, old_lp, ref_lp, rollout_lp, p, loss, grad);
  *loss *= scale;
  *grad *= scale;
}

struct RowStats {
  float lse;      // logsumexp(s)
  float entropy;  // -sum p log p
  float logp;     // s[target] - lse
  float sum_exp;  // sum exp(s - max s): p = e / sum_exp where e is what keep_exp stored
};

// Softmax statistics of one row z[V]. With keep_exp, z is overwritten by exp(s - max s) (the
// unnormalised probabilities) so the gradient pass need not recompute the exponentials.
RowStats softmax_row(float* z, int64_t V, int64_t target, float inv_temp, bool keep_exp);

// In place: e[v] <- c * (onehot(target) - e[v] / sum_exp), the gradient of the logits from the
// exponentials softmax_row kept, for c = d loss / d logp / temperature.
void grad_from_exp(float* e, int64_t V, int64_t target, float sum_exp, float c);

// Online softmax statistics over vocabulary chunks, relative to the running max m (in s units):
// sum_exp = sum exp(s - m), sum_es = sum exp(s - m) * (s - m).
struct OnlineRow {
  float m;
  float sum_exp;
  float sum_es;
  float target_s;
};
void online_init(OnlineRow& r);
void online_update(OnlineRow& r, const float* z, int64_t n, float inv_temp);
RowStats online_finish(const OnlineRow& r);

// In place: z[v] <- (g_lp * (onehot - p) - g_ent * p * (log p + entropy)) * inv_temp, the gradient
// of the logits of (logp, entropy) recomputed from the saved lse; `target` < 0 when the target lies
// outside this vocabulary chunk.
void logprob_grad_row(float* z, int64_t n, int64_t target, float inv_temp, float lse, float entropy, float g_lp,
                      float g_ent);

}  // namespace r1
