// r1kernels::tree_attention on the GPU, for the CUDA dispatch key.
//
// One thread block per (node, kv head), serving the Hq / Hkv query heads of that kv head, laid out
// as paged_attention.cu's kernel: keys go through an fp32 online softmax CHUNK at a time (threads
// compute the chunk's scores, one key per thread and all heads; one warp per head reduces max and
// sum; then the threads update the [heads, D] output accumulator in shared memory, reading V
// coalesced along D). The keys come in two runs:
//   1. the node's tree's paged prefix (its row of block_tables, prefix_lens tokens; none without
//      a cache), CHUNK positions at a time, each thread finding its key's block in the table;
//   2. the node itself and its ancestors: thread 0 walks `parents` (indices within the tree) and
//      lists up to CHUNK of the chain's rows, then the block attends to them, until the root.
// Every node attends at least to itself, so each row's softmax sum is positive. The node's tree
// comes from a binary search of cu_nodes, so nothing waits on the host. The data checks (offsets,
// parents forming trees, prefix lengths, block ids) are done by the Python wrapper for CUDA tensors.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../tree_attention_args.h"
#include "softmax_chunk.h"

#include <cmath>
#include <cstdint>
#include <optional>

namespace r1kernels {
namespace {

using namespace softmax_chunk;

// One online-softmax update over n (<= kChunk) keys: key t is the row at kbase + off[t], its value
// at vbase + off[t] (both [*, D] rows of the same layout). Ends with __syncthreads().
template <typename T>
__device__ __forceinline__ void attend_chunk(const Smem& s, const T* __restrict__ kbase, const T* __restrict__ vbase, const int64_t* off, int n, int G,
                                             int d) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    const T* kr = kbase + off[t];
    for (int g = 0; g < G; ++g) {
      float dot = 0.f;
      for (int e = 0; e < d; ++e) dot += s.qs[g * d + e] * static_cast<float>(kr[e]);
      s.sc[g * kChunk + t] = dot;
    }
  }
  __syncthreads();
  for (int g = warp; g < G; g += n_warps) {
    float mx = -INFINITY;
    for (int t = lane; t < n; t += 32) mx = fmaxf(mx, s.sc[g * kChunk + t]);
    mx = warp_max(mx);
    const float m_new = fmaxf(s.m[g], mx);
    float sum = 0.f;
    for (int t = lane; t < n; t += 32) {
      const float p = __expf(s.sc[g * kChunk + t] - m_new);
      s.sc[g * kChunk + t] = p;
      sum += p;
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      const float a = s.m[g] == -INFINITY ? 0.f : __expf(s.m[g] - m_new);
      s.alpha[g] = a;
      s.l[g] = s.l[g] * a + sum;
      s.m[g] = m_new;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * d; i += blockDim.x) {
    const int g = i / d, e = i % d;
    float o = s.acc[i] * s.alpha[g];
    for (int t = 0; t < n; ++t) o += s.sc[g * kChunk + t] * static_cast<float>(vbase[off[t] + e]);
    s.acc[i] = o;
  }
  __syncthreads();
}

template <typename T>
__global__ void tree_attention_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const int32_t* __restrict__ parents,
                                      const int32_t* __restrict__ cu, int num_trees, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                                      const int32_t* __restrict__ table, const int32_t* __restrict__ prefix_lens, int64_t max_blocks, int block_size,
                                      T* __restrict__ out, float* __restrict__ lse, int hq, int hkv, int d, float scale) {
  extern __shared__ float smem[];
  __shared__ int64_t off[kChunk];  // element offsets of this chunk's K/V rows
  __shared__ int n_keys;           // keys listed in off
  __shared__ int next;             // the ancestor walk's next node (index within the tree), -1 past the root
  const int G = hq / hkv;
  const Smem s = smem_layout(smem, G, d);

  const int64_t node = blockIdx.x;
  const int kvh = blockIdx.y;
  const int tree = find_segment(cu, num_trees, node);
  const int64_t a = cu[tree];  // the tree's first row

  for (int i = threadIdx.x; i < G * d; i += blockDim.x) {
    const int g = i / d, e = i % d;
    s.qs[i] = static_cast<float>(q[(node * hq + kvh * G + g) * d + e]) * scale;
    s.acc[i] = 0.f;
  }
  for (int g = threadIdx.x; g < G; g += blockDim.x) {
    s.m[g] = -INFINITY;
    s.l[g] = 0.f;
  }
  __syncthreads();

  // 1. the tree's paged prefix
  if (k_cache != nullptr) {
    const int64_t P = prefix_lens[tree];
    const int32_t* tab = table + tree * max_blocks;
    for (int64_t c0 = 0; c0 < P; c0 += kChunk) {
      const int n = static_cast<int>(P - c0 < kChunk ? P - c0 : kChunk);
      for (int t = threadIdx.x; t < n; t += blockDim.x) {
        const int64_t pos = c0 + t;
        off[t] = ((static_cast<int64_t>(tab[pos / block_size]) * block_size + pos % block_size) * hkv + kvh) * d;
      }
      __syncthreads();
      attend_chunk(s, k_cache, v_cache, off, n, G, d);
    }
  }

  // 2. the node and its ancestors, kChunk of the chain at a time. `off`, n_keys and next are
  // written by thread 0 only after attend_chunk's closing barrier and read by every thread between
  // the barrier below and attend_chunk's first one.
  int start = static_cast<int>(node - a);  // index within the tree of the chain's next node
  do {
    if (threadIdx.x == 0) {
      int j = start, n = 0;
      for (; n < kChunk && j >= 0; ++n) {
        off[n] = ((a + j) * hkv + kvh) * d;
        const int p = parents[a + j];
        j = p < j ? p : -1;  // a parent not before its child (unchecked input) ends the walk: never a cycle
      }
      n_keys = n;
      next = j;
    }
    __syncthreads();
    const int n = n_keys;
    start = next;
    attend_chunk(s, k, v, off, n, G, d);
  } while (start >= 0);

  for (int i = threadIdx.x; i < G * d; i += blockDim.x) {
    const int g = i / d, e = i % d;
    const float inv = s.l[g] > 0.f ? 1.f / s.l[g] : 0.f;
    out[(node * hq + kvh * G + g) * d + e] = static_cast<T>(s.acc[i] * inv);
  }
  for (int g = threadIdx.x; g < G; g += blockDim.x) lse[node * hq + kvh * G + g] = s.l[g] > 0.f ? s.m[g] + logf(s.l[g]) : -INFINITY;
}

std::tuple<at::Tensor, at::Tensor> tree_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& parents,
                                                       const at::Tensor& cu_nodes, const std::optional<at::Tensor>& k_cache,
                                                       const std::optional<at::Tensor>& v_cache, const std::optional<at::Tensor>& block_tables,
                                                       const std::optional<at::Tensor>& prefix_lens, double scale) {
  const r1::TreeArgShapes shapes = r1::check_tree_attention_args(q, k, v, parents, cu_nodes, k_cache, v_cache, block_tables, prefix_lens);
  const int64_t N = shapes.N, hq = shapes.hq, d = shapes.d, hkv = shapes.hkv, T = shapes.num_trees;
  const bool has_cache = shapes.has_cache;
  const auto dev = q.device();
  TORCH_CHECK_VALUE(k.device() == dev && v.device() == dev && parents.device() == dev && cu_nodes.device() == dev,
                    "k, v, parents and cu_nodes must be on q's device ", dev);
  at::Tensor tb, pl;
  int64_t max_blocks = 1, bs = 1;
  if (has_cache) {
    const auto& kcache = *k_cache;
    TORCH_CHECK_VALUE(kcache.device() == dev && v_cache->device() == dev && block_tables->device() == dev && prefix_lens->device() == dev,
                      "k_cache, v_cache, block_tables and prefix_lens must be on q's device ", dev);
    tb = block_tables->contiguous();
    pl = prefix_lens->contiguous();
    max_blocks = tb.size(1);
    bs = kcache.size(1);
  }
  const int64_t G = hq / hkv;
  const int64_t smem = smem_bytes(G, d, "tree attention");
  auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous(), pc = parents.contiguous(), cc = cu_nodes.contiguous();
  auto out = at::empty_like(qc);
  auto lse = at::empty({N, hq}, q.options().dtype(at::kFloat));
  if (N == 0 || T == 0) return {out, lse};
  const c10::cuda::CUDAGuard guard(dev);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(N), static_cast<unsigned>(hkv));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "tree_attention", [&] {
    tree_attention_kernel<scalar_t><<<grid, kThreads, smem, stream>>>(
        qc.data_ptr<scalar_t>(), kc.data_ptr<scalar_t>(), vc.data_ptr<scalar_t>(), pc.data_ptr<int32_t>(), cc.data_ptr<int32_t>(), static_cast<int>(T),
        has_cache ? k_cache->data_ptr<scalar_t>() : nullptr, has_cache ? v_cache->data_ptr<scalar_t>() : nullptr,
        has_cache ? tb.data_ptr<int32_t>() : nullptr, has_cache ? pl.data_ptr<int32_t>() : nullptr, max_blocks, static_cast<int>(bs), out.data_ptr<scalar_t>(),
        lse.data_ptr<float>(), static_cast<int>(hq), static_cast<int>(hkv), static_cast<int>(d), static_cast<float>(scale));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, lse};
}

}  // namespace
}  // namespace r1kernels

TORCH_LIBRARY_IMPL(r1kernels, CUDA, m) { m.impl("tree_attention", &r1kernels::tree_attention_cuda); }
