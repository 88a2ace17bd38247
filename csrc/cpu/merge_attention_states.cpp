// r1kernels::merge_attention_states on the CPU: the logsumexp merge of two partial attentions over
// disjoint key sets, weights relative to the larger lse, rows on torch's intra-op threads.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "attention_common.h"

namespace {

template <typename T>
R1_INLINE void merge_rows(const T* oa, const float* la, const T* ob, const float* lb, T* out, float* lse, int64_t r0, int64_t r1, int64_t d) {
  for (int64_t r = r0; r < r1; ++r) {
    // an empty side's lse is -inf here and +inf in vLLM's convention (FlashAttention writes +inf):
    // either way it has no weight
    const float a = std::isinf(la[r]) ? r1::kNegInf : la[r];
    const float b = std::isinf(lb[r]) ? r1::kNegInf : lb[r];
    const float m = std::max(a, b);
    float wa = 0.f, wb = 0.f;
    if (m != r1::kNegInf) {
      wa = a == r1::kNegInf ? 0.f : std::exp(a - m);
      wb = b == r1::kNegInf ? 0.f : std::exp(b - m);
    }
    const float tot = wa + wb;
    lse[r] = tot > 0.f ? m + std::log(tot) : r1::kNegInf;
    if (tot > 0.f) {
      wa /= tot;
      wb /= tot;
    }
    const T* xa = oa + r * d;
    const T* xb = ob + r * d;
    T* y = out + r * d;
    for (int64_t i = 0; i < d; ++i) y[i] = static_cast<T>(wa * r1::to_float(xa[i]) + wb * r1::to_float(xb[i]));
  }
}

std::tuple<at::Tensor, at::Tensor> merge_attention_states_cpu(const at::Tensor& out_a, const at::Tensor& lse_a, const at::Tensor& out_b,
                                                              const at::Tensor& lse_b) {
  TORCH_CHECK_VALUE(out_a.dim() == 3 && out_b.sizes() == out_a.sizes() && out_b.scalar_type() == out_a.scalar_type(),
                    "out_a and out_b must be [N, H, D] of the same shape and dtype");
  TORCH_CHECK_VALUE(lse_a.scalar_type() == at::kFloat && lse_b.scalar_type() == at::kFloat && lse_a.numel() == out_a.size(0) * out_a.size(1) &&
                        lse_b.numel() == lse_a.numel(),
                    "lse_a and lse_b must be float32 [N, H]");
  auto oa = out_a.contiguous(), ob = out_b.contiguous(), la = lse_a.contiguous(), lb = lse_b.contiguous();
  auto out = at::empty_like(oa);
  auto lse = at::empty_like(la);
  const int64_t rows = oa.size(0) * oa.size(1), d = oa.size(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, oa.scalar_type(), "merge_attention_states", [&] {
    at::parallel_for(0, rows, 2048 / std::max<int64_t>(d, 1) + 1, [&](int64_t r0, int64_t r1) {
      merge_rows(oa.data_ptr<scalar_t>(), la.data_ptr<float>(), ob.data_ptr<scalar_t>(), lb.data_ptr<float>(), out.data_ptr<scalar_t>(),
                 lse.data_ptr<float>(), r0, r1, d);
    });
  });
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(r1kernels, CPU, m) { m.impl("merge_attention_states", &merge_attention_states_cpu); }
