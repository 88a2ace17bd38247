// r1kernels::paged_attention on the GPU, for the CUDA dispatch key: decode, prefill and chunked
// prefill, one kernel.
//
// paged_attention: one thread block per (query row, kv head), serving the Hq / Hkv query heads of
// that kv head. Keys go through an fp32 online softmax CHUNK at a time: threads compute the
// chunk's scores (one key per thread, all heads), one warp per head reduces max and sum, then the
// threads update the [heads, D] output accumulator in shared memory, reading V coalesced along D.
// The row's sequence comes from a binary search of cu_seqlens_q, so nothing waits on the host.
// The data checks (offsets, lengths, block ids) are done by the Python wrapper for CUDA tensors.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "softmax_chunk.h"

#include <cmath>
#include <cstdint>

namespace r1kernels {
namespace {

using namespace softmax_chunk;

// ---- attention --------------------------------------------------------------------------------

template <typename T>
__global__ void paged_attention_kernel(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache, T* __restrict__ out,
                                       float* __restrict__ lse, const int32_t* __restrict__ table, const int32_t* __restrict__ seq_lens,
                                       const int32_t* __restrict__ cu, int num_seqs, int64_t max_blocks, int block_size, int hq, int hkv, int d,
                                       float scale, bool causal) {
  extern __shared__ float smem[];
  const int G = hq / hkv;
  const Smem st = smem_layout(smem, G, d);
  float *qs = st.qs, *acc = st.acc, *sc = st.sc, *m = st.m, *l = st.l, *alpha = st.alpha;

  const int64_t row = blockIdx.x;
  const int kvh = blockIdx.y;
  const int s = find_segment(cu, num_seqs, row);  // the row's sequence
  const int64_t q_len = cu[s + 1] - cu[s];
  const int64_t L = seq_lens[s];
  const int64_t limit = causal ? L - q_len + (row - cu[s]) + 1 : L;

  for (int i = threadIdx.x; i < G * d; i += blockDim.x) {
    const int g = i / d, e = i % d;
    qs[i] = static_cast<float>(q[(row * hq + kvh * G + g) * d + e]) * scale;
    acc[i] = 0.f;
  }
  for (int g = threadIdx.x; g < G; g += blockDim.x) {
    m[g] = -INFINITY;
    l[g] = 0.f;
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
  const int32_t* tab = table + s * max_blocks;
  for (int64_t c0 = 0; c0 < limit; c0 += kChunk) {
    const int n = static_cast<int>(limit - c0 < kChunk ? limit - c0 : kChunk);
    for (int t = threadIdx.x; t < n; t += blockDim.x) {
      const int64_t pos = c0 + t;
      const T* kr = k_cache + ((static_cast<int64_t>(tab[pos / block_size]) * block_size + pos % block_size) * hkv + kvh) * d;
      for (int g = 0; g < G; ++g) {
        float dot = 0.f;
        for (int e = 0; e < d; ++e) dot += qs[g * d + e] * static_cast<float>(kr[e]);
        sc[g * kChunk + t] = dot;
      }
    }
    __syncthreads();
    for (int g = warp; g < G; g += n_warps) {
      float mx = -INFINITY;
      for (int t = lane; t < n; t += 32) mx = fmaxf(mx, sc[g * kChunk + t]);
      mx = warp_max(mx);
      const float m_new = fmaxf(m[g], mx);
      float sum = 0.f;
      for (int t = lane; t < n; t += 32) {
        const float p = __expf(sc[g * kChunk + t] - m_new);
        sc[g * kChunk + t] = p;
        sum += p;
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        const float a = m[g] == -INFINITY ? 0.f : __expf(m[g] - m_new);
        alpha[g] = a;
        l[g] = l[g] * a + sum;
        m[g] = m_new;
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * d; i += blockDim.x) {
      const int g = i / d, e = i % d;
      float o = acc[i] * alpha[g];
      for (int t = 0; t < n; ++t) {
        const int64_t pos = c0 + t;
        const T* vr = v_cache + ((static_cast<int64_t>(tab[pos / block_size]) * block_size + pos % block_size) * hkv + kvh) * d;
        o += sc[g * kChunk + t] * static_cast<float>(vr[e]);
      }
      acc[i] = o;
    }
    __syncthreads();
  }

  for (int i = threadIdx.x; i < G * d; i += blockDim.x) {
    const int g = i / d, e = i % d;
    const float inv = l[g] > 0.f ? 1.f / l[g] : 0.f;
    out[(row * hq + kvh * G + g) * d + e] = static_cast<T>(acc[i] * inv);
  }
  for (int g = threadIdx.x; g < G; g += blockDim.x) lse[row * hq + kvh * G + g] = l[g] > 0.f ? m[g] + logf(l[g]) : -INFINITY;
}

std::tuple<at::Tensor, at::Tensor> paged_attention_cuda(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& block_tables,
                                                        const at::Tensor& seq_lens, const at::Tensor& cu_seqlens_q, double scale, bool causal) {
  TORCH_CHECK_VALUE(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(), "q must be [Nq, Hq, D] and the caches [num_blocks, block_size, Hkv, D]");
  TORCH_CHECK_VALUE(q.scalar_type() == k_cache.scalar_type(), "q must have the cache's dtype");
  const int64_t nq = q.size(0), hq = q.size(1), d = q.size(2), hkv = k_cache.size(2), bs = k_cache.size(1);
  TORCH_CHECK_VALUE(hkv > 0 && hq % hkv == 0 && k_cache.size(3) == d, "q's heads must be a multiple of the cache's kv heads, with the same head_dim");
  const int64_t G = hq / hkv;
  const int64_t smem = smem_bytes(G, d, "paged attention");
  auto qc = q.contiguous();
  auto out = at::empty_like(qc);
  auto lse = at::empty({nq, hq}, q.options().dtype(at::kFloat));
  const int num_seqs = static_cast<int>(block_tables.size(0));
  if (nq == 0 || num_seqs == 0) return {out, lse};
  const c10::cuda::CUDAGuard guard(q.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(nq), static_cast<unsigned>(hkv));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "paged_attention", [&] {
    paged_attention_kernel<scalar_t><<<grid, kThreads, smem, stream>>>(
        qc.data_ptr<scalar_t>(), k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lse.data_ptr<float>(),
        block_tables.data_ptr<int32_t>(), seq_lens.data_ptr<int32_t>(), cu_seqlens_q.data_ptr<int32_t>(), num_seqs, block_tables.size(1),
        static_cast<int>(bs), static_cast<int>(hq), static_cast<int>(hkv), static_cast<int>(d), static_cast<float>(scale), causal);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, lse};
}

}  // namespace
}  // namespace r1kernels

TORCH_LIBRARY_IMPL(r1kernels, CUDA, m) {
  m.impl("paged_attention", &r1kernels::paged_attention_cuda);
}
