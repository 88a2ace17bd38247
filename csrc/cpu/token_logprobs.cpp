// CPU kernels of the fused per-token log-probs (semantics exactly as r1kernels/_torch):
//   fused_logprobs           hidden [N, H], LM head [V, H] -> logp, entropy, lse [N] fp32, the
//                            vocabulary in chunks with an online (max, sum exp, sum p * s);
//   fused_logprobs_backward  recomputes each logits chunk from the saved lse and turns it into
//                            d/d logits of (logp, entropy) in place before the two gradient GEMMs.
// Extra memory is one [rows, vocab_chunk] fp32 buffer (and fp32 copies of bf16/fp16 inputs' chunks).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "grpo_row_math.h"

namespace r1 {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// [kRows, kVocab] fp32 = 16 MiB: large enough that each GEMM runs near the machine's rate, small
// enough to stay out of the way of the model's own memory.
constexpr int64_t kRows = 512;
constexpr int64_t kVocab = 8192;

void check_head(const Tensor& hidden, const Tensor& weight, const OptTensor& bias, const Tensor& targets,
                double temperature) {
  TORCH_CHECK_VALUE(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
                    "hidden must be [N, H] and weight [V, H], got hidden ", hidden.sizes(), " and weight ",
                    weight.sizes());
  TORCH_CHECK_VALUE(hidden.is_floating_point() && weight.is_floating_point(),
                    "hidden and weight must be floating point, got ", hidden.scalar_type(), " and ",
                    weight.scalar_type());
  const int64_t N = hidden.size(0), V = weight.size(0);
  TORCH_CHECK_VALUE(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == V), "bias must have shape [V] = [", V,
                    "]");
  TORCH_CHECK_VALUE(temperature > 0, "temperature must be > 0, got ", temperature);
  TORCH_CHECK_VALUE(targets.dim() == 1 && targets.size(0) == N && targets.scalar_type() == at::kLong,
                    "targets must be int64 of shape [N] = [", N, "], got ", targets.scalar_type(), " ",
                    targets.sizes());
  if (N) {
    const auto [lo, hi] = at::aminmax(targets);
    const int64_t mn = lo.item<int64_t>(), mx = hi.item<int64_t>();
    TORCH_CHECK_VALUE(mn >= 0 && mx < V, "targets must lie in [0, ", V, ") (the vocabulary), got values in [", mn,
                      ", ", mx, "]");
  }
}

Tensor f32(const Tensor& t) { return t.to(at::kFloat).contiguous(); }

// z = h @ W[v0:v0+n].T (+ bias chunk) into buf's first rows
Tensor logits_chunk(Tensor& buf, const Tensor& h, const Tensor& Wc, const Tensor& bc) {
  Tensor z = buf.narrow(0, 0, h.size(0)).narrow(1, 0, Wc.size(0));
  if (z.size(1) != buf.size(1)) z = at::empty({h.size(0), Wc.size(0)}, buf.options());  // last, short chunk
  if (bc.defined())
    at::addmm_out(z, bc, h, Wc.t());
  else
    at::mm_out(z, h, Wc.t());
  return z;
}

std::tuple<Tensor, Tensor, Tensor> fused_logprobs_cpu(const Tensor& hidden, const Tensor& weight, const OptTensor& bias,
                                                      const Tensor& targets, double temperature) {
  check_head(hidden, weight, bias, targets, temperature);
  const int64_t N = hidden.size(0), V = weight.size(0);
  const float inv_temp = float(1.0 / temperature);
  const auto fopt = hidden.options().dtype(at::kFloat);
  const Tensor h = f32(hidden);  // [N, H]: small next to the head
  const Tensor tgt = targets.contiguous();
  std::vector<OnlineRow> state(N);
  for (auto& s : state) online_init(s);
  Tensor buf = at::empty({std::min(N, kRows), std::min(V, kVocab)}, fopt);
  for (int64_t v0 = 0; v0 < V && N; v0 += kVocab) {
    const int64_t vn = std::min(kVocab, V - v0);
    const Tensor Wc = f32(weight.narrow(0, v0, vn));
    const Tensor bc = bias.has_value() ? f32(bias->narrow(0, v0, vn)) : Tensor();
    for (int64_t r0 = 0; r0 < N; r0 += kRows) {
      const int64_t rn = std::min(kRows, N - r0);
      Tensor z = logits_chunk(buf, h.narrow(0, r0, rn), Wc, bc);
      const float* zp = z.data_ptr<float>();
      const int64_t* t = tgt.data_ptr<int64_t>();
      at::parallel_for(0, rn, 1, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          OnlineRow& s = state[r0 + r];
          const float* zr = zp + r * vn;
          const int64_t t_local = t[r0 + r] - v0;
          if (t_local >= 0 && t_local < vn) s.target_s = zr[t_local] * inv_temp;
          online_update(s, zr, vn, inv_temp);
        }
      });
    }
  }
  Tensor logp = at::empty({N}, fopt), entropy = at::empty({N}, fopt), lse = at::empty({N}, fopt);
  float *lp = logp.data_ptr<float>(), *en = entropy.data_ptr<float>(), *ls = lse.data_ptr<float>();
  for (int64_t i = 0; i < N; ++i) {
    const RowStats st = online_finish(state[i]);
    lp[i] = st.logp;
    en[i] = st.entropy;
    ls[i] = st.lse;
  }
  return {logp, entropy, lse};
}

std::tuple<Tensor, Tensor, Tensor> fused_logprobs_backward_cpu(const Tensor& grad_logp, const OptTensor& grad_entropy,
                                                               const Tensor& hidden, const Tensor& weight,
                                                               const OptTensor& bias, const Tensor& targets,
                                                               const Tensor& lse, const Tensor& entropy,
                                                               double temperature) {
  check_head(hidden, weight, bias, targets, temperature);
  const int64_t N = hidden.size(0), H = hidden.size(1), V = weight.size(0);
  for (const auto& [t, name] : {std::pair<const Tensor*, const char*>{&grad_logp, "grad_logp"}, {&lse, "lse"},
                                {&entropy, "entropy"}})
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == N, name, " must have shape [N] = [", N, "], got ", t->sizes());
  TORCH_CHECK_VALUE(!grad_entropy.has_value() || (grad_entropy->dim() == 1 && grad_entropy->size(0) == N),
                    "grad_entropy must have shape [N] = [", N, "]");
  const float inv_temp = float(1.0 / temperature);
  const auto fopt = hidden.options().dtype(at::kFloat);
  const Tensor h = f32(hidden);
  const Tensor g_lp = f32(grad_logp), ls = f32(lse), ent = f32(entropy);
  const Tensor g_ent = grad_entropy.has_value() ? f32(*grad_entropy) : Tensor();
  const Tensor tgt = targets.contiguous();
  Tensor gh = at::zeros({N, H}, fopt), gW = at::zeros({V, H}, fopt);
  Tensor gb = bias.has_value() ? at::zeros({V}, fopt) : Tensor();
  Tensor buf = at::empty({std::max<int64_t>(std::min(N, kRows), 1), std::max<int64_t>(std::min(V, kVocab), 1)}, fopt);
  const float *glp = g_lp.data_ptr<float>(), *lsp = ls.data_ptr<float>(), *enp = ent.data_ptr<float>();
  const float* gep = g_ent.defined() ? g_ent.data_ptr<float>() : nullptr;
  const int64_t* t = tgt.data_ptr<int64_t>();
  for (int64_t v0 = 0; v0 < V && N; v0 += kVocab) {
    const int64_t vn = std::min(kVocab, V - v0);
    const Tensor Wc = f32(weight.narrow(0, v0, vn));
    const Tensor bc = bias.has_value() ? f32(bias->narrow(0, v0, vn)) : Tensor();
    Tensor gWc = gW.narrow(0, v0, vn);
    for (int64_t r0 = 0; r0 < N; r0 += kRows) {
      const int64_t rn = std::min(kRows, N - r0);
      const Tensor hr = h.narrow(0, r0, rn);
      Tensor z = logits_chunk(buf, hr, Wc, bc);
      float* zp = z.data_ptr<float>();
      at::parallel_for(0, rn, 1, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t i = r0 + r;
          const int64_t t_local = (t[i] >= v0 && t[i] < v0 + vn) ? t[i] - v0 : -1;
          logprob_grad_row(zp + r * vn, vn, t_local, inv_temp, lsp[i], enp[i], glp[i], gep ? gep[i] : 0.f);
        }
      });
      gh.narrow(0, r0, rn).addmm_(z, Wc);
      gWc.addmm_(z.t(), hr);
      if (gb.defined()) gb.narrow(0, v0, vn).add_(z.sum(0));
    }
  }
  return {gh.to(hidden.scalar_type()), gW.to(weight.scalar_type()),
          gb.defined() ? gb.to(bias->scalar_type()) : at::empty({0}, hidden.options())};
}

}  // namespace
}  // namespace r1

TORCH_LIBRARY_IMPL(r1kernels, CPU, m) {
  m.impl("fused_logprobs", &r1::fused_logprobs_cpu);
  m.impl("fused_logprobs_backward", &r1::fused_logprobs_backward_cpu);
}
