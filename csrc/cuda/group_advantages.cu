// Group-relative advantages on the GPU: r1kernels::group_advantages for the CUDA dispatch key.
//
// GRPO (group mean, group std with Bessel's correction), RLOO (leave_one_out: the mean of the
// other G-1 scorable samples), scale_mode 0 = group std, 1 = batch std, 2 = none (Dr. GRPO).
// NaN rewards are unscorable: left out of every statistic, advantage 0. Groups whose scorable
// rewards are all equal (or that have none) get advantage 0 and are flagged in zero_std.
//
// One thread block per group. Statistics accumulate in at::acc_type (float for half/bf16/float,
// double for double). Batch scaling needs every group's statistics first: the first kernel
// writes per-group (count, total, M2), a one-block kernel combines them into the batch std (Chan's
// formula), and a third writes the advantages, so nothing waits on the host apart from the inf check.

// per-operator headers rather than ATen/ATen.h: nvcc parses every header three times (host, sm_80,
// sm_90a), and the whole of ATen costs about a quarter more compile time
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/isinf.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>

namespace r1kernels {
namespace {

constexpr int kThreads = 256;

enum class Op { kSum, kMax, kMin };

template <Op op, typename T>
__device__ __forceinline__ T combine(T a, T b) {
  if constexpr (op == Op::kSum) return a + b;
  else if constexpr (op == Op::kMax) return a > b ? a : b;
  else return a < b ? a : b;
}

// Reduces one value per thread over the block; every thread gets the result. `scratch` holds one
// slot per warp; the trailing __syncthreads lets the caller reduce again with the same scratch.
template <Op op, typename T>
__device__ T block_reduce(T v, T* scratch) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  for (int off = 16; off > 0; off /= 2) v = combine<op>(v, __shfl_down_sync(0xffffffffu, v, off));
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T r = scratch[0];
  for (int w = 1; w < kThreads / 32; ++w) r = combine<op>(r, scratch[w]);
  __syncthreads();
  return r;
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t group_advantage(acc_t r, acc_t mean, acc_t total, acc_t n, acc_t scale,
                                                 bool zero_std, bool leave_one_out, int scale_mode, acc_t eps) {
  if (isnan(r) || zero_std) return acc_t(0);
  acc_t centred;
  if (leave_one_out) {
    // RLOO baseline: mean of the other n - 1 scorable samples of the group
    centred = n >= acc_t(2) ? r - (total - r) / (n - acc_t(1)) : acc_t(0);
  } else {
    centred = r - mean;
  }
  return scale_mode == 2 ? centred : centred / (scale + eps);
}

template <typename scalar_t, typename acc_t>
__global__ void group_stats_kernel(const scalar_t* __restrict__ rewards, scalar_t* __restrict__ adv,
                                   scalar_t* __restrict__ mean_out, scalar_t* __restrict__ std_out,
                                   bool* __restrict__ zero_out, acc_t* __restrict__ count_out,
                                   acc_t* __restrict__ total_out, acc_t* __restrict__ m2_out, int64_t group_size,
                                   bool leave_one_out, int scale_mode, acc_t eps) {
  __shared__ acc_t scratch[kThreads / 32];
  const int64_t g = blockIdx.x;
  const scalar_t* r = rewards + g * group_size;

  acc_t n = 0, total = 0, rmax = -INFINITY, rmin = INFINITY;
  for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
    const acc_t x = static_cast<acc_t>(r[i]);
    if (!isnan(x)) {
      n += 1;
      total += x;
      rmax = x > rmax ? x : rmax;
      rmin = x < rmin ? x : rmin;
    }
  }
  n = block_reduce<Op::kSum>(n, scratch);
  total = block_reduce<Op::kSum>(total, scratch);
  rmax = block_reduce<Op::kMax>(rmax, scratch);
  rmin = block_reduce<Op::kMin>(rmin, scratch);
  const acc_t mean = total / (n > acc_t(1) ? n : acc_t(1));

  // second pass over the group (it sits in L1/L2) for a squared deviation free of cancellation
  acc_t m2 = 0;
  for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
    const acc_t x = static_cast<acc_t>(r[i]);
    if (!isnan(x)) m2 += (x - mean) * (x - mean);
  }
  m2 = block_reduce<Op::kSum>(m2, scratch);
  const acc_t stdev = n >= acc_t(2) ? sqrt(m2 / (n - acc_t(1))) : acc_t(0);
  const bool zero_std = n == acc_t(0) || rmax == rmin;

  if (threadIdx.x == 0) {
    mean_out[g] = static_cast<scalar_t>(mean);
    std_out[g] = static_cast<scalar_t>(stdev);
    zero_out[g] = zero_std;
    count_out[g] = n;
    total_out[g] = total;
    m2_out[g] = m2;
  }
  if (scale_mode == 1) return;  // batch std: written by batch_advantages_kernel once it is known
  for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
    const acc_t a = group_advantage<scalar_t, acc_t>(static_cast<acc_t>(r[i]), mean, total, n, stdev, zero_std,
                                                     leave_one_out, scale_mode, eps);
    adv[g * group_size + i] = static_cast<scalar_t>(a);
  }
}

// Chan et al.'s parallel combination of the groups' (count, total, M2) into the std of every scorable
// reward of the batch (Bessel's correction; 0 with fewer than two). One block.
template <typename acc_t>
__global__ void batch_std_kernel(const acc_t* __restrict__ count, const acc_t* __restrict__ total,
                                 const acc_t* __restrict__ m2, int64_t num_groups, acc_t* __restrict__ out) {
  __shared__ acc_t scratch[kThreads / 32];
  acc_t n = 0, t = 0;
  for (int64_t g = threadIdx.x; g < num_groups; g += blockDim.x) {
    n += count[g];
    t += total[g];
  }
  n = block_reduce<Op::kSum>(n, scratch);
  t = block_reduce<Op::kSum>(t, scratch);
  const acc_t grand_mean = t / (n > acc_t(1) ? n : acc_t(1));
  acc_t m2_all = 0;
  for (int64_t g = threadIdx.x; g < num_groups; g += blockDim.x) {
    const acc_t c = count[g];
    const acc_t d = total[g] / (c > acc_t(1) ? c : acc_t(1)) - grand_mean;
    m2_all += m2[g] + c * d * d;
  }
  m2_all = block_reduce<Op::kSum>(m2_all, scratch);
  if (threadIdx.x == 0) *out = n >= acc_t(2) ? sqrt(m2_all / (n - acc_t(1))) : acc_t(0);
}

template <typename scalar_t, typename acc_t>
__global__ void batch_advantages_kernel(const scalar_t* __restrict__ rewards, scalar_t* __restrict__ adv,
                                        const bool* __restrict__ zero_std, const acc_t* __restrict__ count,
                                        const acc_t* __restrict__ total, const acc_t* __restrict__ batch_std,
                                        int64_t group_size, bool leave_one_out, acc_t eps) {
  const int64_t g = blockIdx.x;
  const acc_t n = count[g];
  const acc_t t = total[g];
  const acc_t mean = t / (n > acc_t(1) ? n : acc_t(1));
  const acc_t s = *batch_std;
  for (int64_t i = threadIdx.x; i < group_size; i += blockDim.x) {
    const acc_t a = group_advantage<scalar_t, acc_t>(static_cast<acc_t>(rewards[g * group_size + i]), mean, t, n, s,
                                                     zero_std[g], leave_one_out, 1, eps);
    adv[g * group_size + i] = static_cast<scalar_t>(a);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_advantages_cuda(const at::Tensor& rewards_in,
                                                                                 int64_t group_size,
                                                                                 int64_t scale_mode,
                                                                                 bool leave_one_out, double eps) {
  TORCH_CHECK_VALUE(rewards_in.dim() == 1, "rewards must be a 1-D tensor, got ", rewards_in.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(rewards_in.scalar_type()), "rewards must be floating point, got ",
                    rewards_in.scalar_type());
  TORCH_CHECK_VALUE(group_size >= 1, "group_size must be an int >= 1, got ", group_size);
  TORCH_CHECK_VALUE(rewards_in.size(0) % group_size == 0, "rewards has ", rewards_in.size(0),
                    " entries, not a multiple of group_size=", group_size);
  TORCH_CHECK_VALUE(scale_mode >= 0 && scale_mode <= 2, "scale_mode must be 0 (group), 1 (batch) or 2 (none), got ",
                    scale_mode);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "eps must be a finite number >= 0, got ", eps);
  // the one host sync: +-inf is an error, never a silently zeroed advantage
  TORCH_CHECK_VALUE(!at::isinf(rewards_in).any().item<bool>(),
                    "rewards must not hold +-inf (NaN marks an unscorable sample; inf is an error)");

  const c10::cuda::CUDAGuard guard(rewards_in.device());
  const at::Tensor rewards = rewards_in.contiguous();
  const int64_t num_groups = rewards.size(0) / group_size;
  at::Tensor adv = at::empty_like(rewards);
  at::Tensor mean = at::empty({num_groups}, rewards.options());
  at::Tensor stdev = at::empty({num_groups}, rewards.options());
  at::Tensor zero_std = at::empty({num_groups}, rewards.options().dtype(at::kBool));
  if (num_groups == 0) return {adv, mean, stdev, zero_std};

  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rewards.scalar_type(), "group_advantages_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    const auto acc_opts = rewards.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    at::Tensor count = at::empty({num_groups}, acc_opts);
    at::Tensor total = at::empty({num_groups}, acc_opts);
    at::Tensor m2 = at::empty({num_groups}, acc_opts);
    group_stats_kernel<scalar_t, acc_t><<<num_groups, kThreads, 0, stream>>>(
        rewards.data_ptr<scalar_t>(), adv.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(), stdev.data_ptr<scalar_t>(),
        zero_std.data_ptr<bool>(), count.data_ptr<acc_t>(), total.data_ptr<acc_t>(), m2.data_ptr<acc_t>(), group_size,
        leave_one_out, static_cast<int>(scale_mode), static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (scale_mode == 1) {
      at::Tensor batch_std = at::empty({1}, acc_opts);
      batch_std_kernel<acc_t><<<1, kThreads, 0, stream>>>(count.data_ptr<acc_t>(), total.data_ptr<acc_t>(),
                                                          m2.data_ptr<acc_t>(), num_groups, batch_std.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      batch_advantages_kernel<scalar_t, acc_t><<<num_groups, kThreads, 0, stream>>>(
          rewards.data_ptr<scalar_t>(), adv.data_ptr<scalar_t>(), zero_std.data_ptr<bool>(), count.data_ptr<acc_t>(),
          total.data_ptr<acc_t>(), batch_std.data_ptr<acc_t>(), group_size, leave_one_out, static_cast<acc_t>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {adv, mean, stdev, zero_std};
}

}  // namespace

TORCH_LIBRARY_IMPL(r1kernels, CUDA, m) { m.impl("group_advantages", &group_advantages_cuda); }

}  // namespace r1kernels
