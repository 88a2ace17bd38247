// Pieces the CUDA attention kernels (paged_attention.cu, tree_attention.cu) share: one thread
// block per (query row, kv head) serving the kv head's G query heads, keys through an fp32 online
// softmax kChunk at a time, the block's state in dynamic shared memory. Included by .cu files only.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace r1kernels {
namespace softmax_chunk {

constexpr int kThreads = 128;
constexpr int kChunk = 64;  // keys per softmax update
constexpr int kMaxSmemBytes = 48 * 1024;

__device__ __forceinline__ float warp_max(float v) {
  for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// The block's shared state: [G, D] scaled queries and accumulator, [G, kChunk] scores, [G] max,
// sum and rescale, all floats of the kernel's dynamic shared memory.
struct Smem {
  float *qs, *acc, *sc, *m, *l, *alpha;
};

__device__ __forceinline__ Smem smem_layout(float* smem, int G, int d) {
  Smem s;
  s.qs = smem;               // [G, D] scaled queries
  s.acc = s.qs + G * d;      // [G, D] unnormalised output
  s.sc = s.acc + G * d;      // [G, kChunk] scores, then probabilities
  s.m = s.sc + G * kChunk;   // [G] running max
  s.l = s.m + G;             // [G] running sum
  s.alpha = s.l + G;         // [G] rescale of this chunk
  return s;
}

// The segment holding `row` of rows packed by offsets cu[0..n] (cu[0] = 0): the last s with
// cu[s] <= row, so empty segments, which share their offset with the next, are skipped.
__device__ __forceinline__ int find_segment(const int32_t* __restrict__ cu, int n, int64_t row) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (cu[mid] <= row) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// Bytes of smem_layout for G heads of head_dim d, checked against what a block may hold; `what`
// names the op in the error.
inline int64_t smem_bytes(int64_t G, int64_t d, const char* what) {
  const int64_t bytes = (2 * G * d + G * kChunk + 3 * G) * static_cast<int64_t>(sizeof(float));
  TORCH_CHECK_VALUE(bytes <= kMaxSmemBytes, "the CUDA ", what, " holds (Hq / Hkv) x head_dim = ", G * d,
                    " floats per block in shared memory; at most ", (kMaxSmemBytes / 4 - G * kChunk - 3 * G) / 2, " fit");
  return bytes;
}

}  // namespace softmax_chunk
}  // namespace r1kernels
