// r1kernels::reshape_and_cache on the GPU, for the CUDA dispatch key: one thread block per new token
// copies its K/V row into its cache slot (slot -1: padding, skipped). The slot checks are done by
// the Python wrapper for CUDA tensors.
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

constexpr int kThreads = 128;  // as paged_attention's blocks

template <typename T>
__global__ void reshape_and_cache_kernel(const T* __restrict__ key, const T* __restrict__ value, T* __restrict__ k_cache,
                                         T* __restrict__ v_cache, const int64_t* __restrict__ slots, int64_t row) {
  const int64_t i = blockIdx.x;
  const int64_t slot = slots[i];
  if (slot < 0) return;  // padding token
  for (int64_t e = threadIdx.x; e < row; e += blockDim.x) {
    k_cache[slot * row + e] = key[i * row + e];
    v_cache[slot * row + e] = value[i * row + e];
  }
}

void reshape_and_cache_cuda(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& slot_mapping) {
  TORCH_CHECK_VALUE(k_cache.is_contiguous() && v_cache.is_contiguous() && key.is_contiguous() && value.is_contiguous(), "key, value and the caches must be contiguous");
  TORCH_CHECK_VALUE(slot_mapping.scalar_type() == at::kLong, "slot_mapping must be int64");
  const int64_t n = slot_mapping.numel();
  if (n == 0) return;
  const int64_t row = k_cache.size(2) * k_cache.size(3);
  const c10::cuda::CUDAGuard guard(key.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, k_cache.scalar_type(), "reshape_and_cache", [&] {
    reshape_and_cache_kernel<scalar_t><<<n, kThreads, 0, stream>>>(key.data_ptr<scalar_t>(), value.data_ptr<scalar_t>(), k_cache.data_ptr<scalar_t>(),
                                                                   v_cache.data_ptr<scalar_t>(), slot_mapping.data_ptr<int64_t>(), row);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace r1kernels

TORCH_LIBRARY_IMPL(r1kernels, CUDA, m) { m.impl("reshape_and_cache", &r1kernels::reshape_and_cache_cuda); }
