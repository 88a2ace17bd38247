// r1kernels::reshape_and_cache on the CPU: row copies of new tokens' K/V into their cache slots,
// with the slot checks the Python wrapper leaves to this kernel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

namespace {

void reshape_and_cache_cpu(const at::Tensor& key, const at::Tensor& value, at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& slot_mapping) {
  TORCH_CHECK_VALUE(k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes() && k_cache.is_contiguous() && v_cache.is_contiguous(),
                    "k_cache and v_cache must be contiguous [num_blocks, block_size, Hkv, D] of the same shape");
  TORCH_CHECK_VALUE(key.scalar_type() == k_cache.scalar_type() && value.scalar_type() == v_cache.scalar_type() && k_cache.scalar_type() == v_cache.scalar_type(),
                    "key and value must have the cache's dtype");
  TORCH_CHECK_VALUE(slot_mapping.scalar_type() == at::kLong && slot_mapping.dim() == 1, "slot_mapping must be a 1-D int64 tensor");
  const int64_t n = slot_mapping.numel(), row = k_cache.size(2) * k_cache.size(3);
  TORCH_CHECK_VALUE(key.numel() == n * row && value.numel() == n * row, "key and value must be [N, Hkv, D] with N = slot_mapping's length");
  auto kc = key.contiguous(), vc = value.contiguous(), sm = slot_mapping.contiguous();
  const int64_t* slots = sm.data_ptr<int64_t>();
  const int64_t n_slots = k_cache.size(0) * k_cache.size(1);
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_VALUE(slots[i] >= -1 && slots[i] < n_slots, "slot_mapping entries must be -1 (skip) or in [0, ", n_slots, "), got ", slots[i], " at ", i);
  const int64_t bytes = row * k_cache.element_size();
  const char* ks = static_cast<const char*>(kc.data_ptr());
  const char* vs = static_cast<const char*>(vc.data_ptr());
  char* kd = static_cast<char*>(k_cache.data_ptr());
  char* vd = static_cast<char*>(v_cache.data_ptr());
  // a decode step writes a handful of rows: threads only pay off for prefill-sized writes
  at::parallel_for(0, n, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(bytes, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if (slots[i] < 0) continue;
      std::memcpy(kd + slots[i] * bytes, ks + i * bytes, bytes);
      std::memcpy(vd + slots[i] * bytes, vs + i * bytes, bytes);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(r1kernels, CPU, m) {
  m.impl("reshape_and_cache", &reshape_and_cache_cpu);
}
