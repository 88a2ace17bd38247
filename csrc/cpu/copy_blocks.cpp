// r1kernels::copy_blocks on the CPU: whole cache blocks copied (copy-on-write of shared prefixes),
// with the block-id checks the Python wrapper leaves to this kernel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

namespace {

void copy_blocks_cpu(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& block_mapping) {
  TORCH_CHECK_VALUE(k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes() && k_cache.is_contiguous() && v_cache.is_contiguous() &&
                        k_cache.scalar_type() == v_cache.scalar_type(),
                    "k_cache and v_cache must be contiguous [num_blocks, block_size, Hkv, D] of the same shape and dtype");
  TORCH_CHECK_VALUE(block_mapping.scalar_type() == at::kLong && block_mapping.dim() == 2 && block_mapping.size(1) == 2,
                    "block_mapping must be an int64 tensor [M, 2] of (src, dst) rows");
  auto bm = block_mapping.contiguous();
  const int64_t* map = bm.data_ptr<int64_t>();
  const int64_t m = bm.size(0), nb = k_cache.size(0);
  std::vector<char> role(nb, 0);  // 1: a source, 2: a destination
  for (int64_t i = 0; i < m; ++i)
    TORCH_CHECK_VALUE(map[2 * i] >= 0 && map[2 * i] < nb && map[2 * i + 1] >= 0 && map[2 * i + 1] < nb, "block_mapping ids must be in [0, ", nb,
                      "), got (", map[2 * i], ", ", map[2 * i + 1], ") in row ", i);
  for (int64_t i = 0; i < m; ++i) role[map[2 * i]] |= 1;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t dst = map[2 * i + 1];
    TORCH_CHECK_VALUE(role[dst] == 0, "block_mapping destinations must be distinct and not also sources: block ", dst, " (row ", i, ") is already a source or a destination");
    role[dst] = 2;
  }
  const int64_t bytes = k_cache.stride(0) * k_cache.element_size();
  char* kd = static_cast<char*>(k_cache.data_ptr());
  char* vd = static_cast<char*>(v_cache.data_ptr());
  at::parallel_for(0, m, std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(bytes, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      std::memcpy(kd + map[2 * i + 1] * bytes, kd + map[2 * i] * bytes, bytes);
      std::memcpy(vd + map[2 * i + 1] * bytes, vd + map[2 * i] * bytes, bytes);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(r1kernels, CPU, m) { m.impl("copy_blocks", &copy_blocks_cpu); }
