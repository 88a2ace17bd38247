// r1kernels::copy_blocks on the GPU, for the CUDA dispatch key: one thread block per (src, dst) row
// of block_mapping copies a whole K and V block. The block-id checks are done by the Python wrapper
// for CUDA tensors.
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
__global__ void copy_blocks_kernel(T* __restrict__ k_cache, T* __restrict__ v_cache, const int64_t* __restrict__ mapping, int64_t block_numel) {
  const int64_t src = mapping[2 * blockIdx.x], dst = mapping[2 * blockIdx.x + 1];
  for (int64_t e = threadIdx.x; e < block_numel; e += blockDim.x) {
    k_cache[dst * block_numel + e] = k_cache[src * block_numel + e];
    v_cache[dst * block_numel + e] = v_cache[src * block_numel + e];
  }
}

void copy_blocks_cuda(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& block_mapping) {
  TORCH_CHECK_VALUE(k_cache.is_contiguous() && v_cache.is_contiguous(), "the caches must be contiguous");
  TORCH_CHECK_VALUE(block_mapping.scalar_type() == at::kLong && block_mapping.dim() == 2 && block_mapping.size(1) == 2, "block_mapping must be int64 [M, 2]");
  const int64_t m = block_mapping.size(0);
  if (m == 0) return;
  auto mapping = block_mapping.contiguous();
  const c10::cuda::CUDAGuard guard(k_cache.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, k_cache.scalar_type(), "copy_blocks", [&] {
    copy_blocks_kernel<scalar_t><<<m, 256, 0, stream>>>(k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>(), mapping.data_ptr<int64_t>(), k_cache.stride(0));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace r1kernels

TORCH_LIBRARY_IMPL(r1kernels, CUDA, m) { m.impl("copy_blocks", &r1kernels::copy_blocks_cuda); }
