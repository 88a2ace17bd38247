// r1kernels::merge_attention_states on the GPU, for the CUDA dispatch key: the logsumexp merge of
// two partial attentions over disjoint key sets, one thread block per (token, head) row.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>

namespace r1kernels {
namespace {

template <typename T>
__global__ void merge_kernel(const T* __restrict__ oa, const float* __restrict__ la, const T* __restrict__ ob, const float* __restrict__ lb, T* __restrict__ out,
                             float* __restrict__ lse, int64_t rows, int64_t d) {
  const int64_t r = blockIdx.x;
  // an empty side's lse is -inf here and +inf in vLLM's convention: either way it has no weight
  const float a = isinf(la[r]) ? -INFINITY : la[r];
  const float b = isinf(lb[r]) ? -INFINITY : lb[r];
  const float mx = fmaxf(a, b);
  float wa = 0.f, wb = 0.f;
  if (mx != -INFINITY) {
    wa = a == -INFINITY ? 0.f : expf(a - mx);
    wb = b == -INFINITY ? 0.f : expf(b - mx);
  }
  const float tot = wa + wb;
  if (tot > 0.f) {
    wa /= tot;
    wb /= tot;
  }
  for (int64_t e = threadIdx.x; e < d; e += blockDim.x)
    out[r * d + e] = static_cast<T>(wa * static_cast<float>(oa[r * d + e]) + wb * static_cast<float>(ob[r * d + e]));
  if (threadIdx.x == 0) lse[r] = tot > 0.f ? mx + logf(tot) : -INFINITY;
}

std::tuple<at::Tensor, at::Tensor> merge_attention_states_cuda(const at::Tensor& out_a, const at::Tensor& lse_a, const at::Tensor& out_b, const at::Tensor& lse_b) {
  TORCH_CHECK_VALUE(out_a.dim() == 3 && out_b.sizes() == out_a.sizes() && lse_a.scalar_type() == at::kFloat && lse_b.scalar_type() == at::kFloat,
                    "out_a, out_b must be [N, H, D] and lse_a, lse_b float32 [N, H]");
  auto oa = out_a.contiguous(), ob = out_b.contiguous(), la = lse_a.contiguous(), lb = lse_b.contiguous();
  auto out = at::empty_like(oa);
  auto lse = at::empty_like(la);
  const int64_t rows = oa.size(0) * oa.size(1), d = oa.size(2);
  if (rows == 0) return {out, lse};
  const c10::cuda::CUDAGuard guard(oa.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, oa.scalar_type(), "merge_attention_states", [&] {
    merge_kernel<scalar_t><<<rows, 64, 0, stream>>>(oa.data_ptr<scalar_t>(), la.data_ptr<float>(), ob.data_ptr<scalar_t>(), lb.data_ptr<float>(),
                                                    out.data_ptr<scalar_t>(), lse.data_ptr<float>(), rows, d);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, lse};
}

}  // namespace
}  // namespace r1kernels

TORCH_LIBRARY_IMPL(r1kernels, CUDA, m) { m.impl("merge_attention_states", &r1kernels::merge_attention_states_cuda); }
