// The argument checks of r1kernels::tree_attention that need no data (shapes, dtypes, which
// optional tensors come together), shared by the CPU and CUDA kernels; each adds its own (the
// CPU kernel the tree structure it reads on the host, the CUDA kernel the devices).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace r1 {

struct TreeArgShapes {
  int64_t N, hq, d, hkv, num_trees;
  bool has_cache;
};

inline TreeArgShapes check_tree_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& parents,
                                               const at::Tensor& cu_nodes, const std::optional<at::Tensor>& k_cache,
                                               const std::optional<at::Tensor>& v_cache, const std::optional<at::Tensor>& block_tables,
                                               const std::optional<at::Tensor>& prefix_lens) {
  TORCH_CHECK_VALUE(q.dim() == 3 && k.dim() == 3 && v.sizes() == k.sizes() && k.size(0) == q.size(0), "q must be [N, Hq, D] and k, v [N, Hkv, D]");
  TORCH_CHECK_VALUE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), "k and v must have q's dtype");
  TORCH_CHECK_VALUE(parents.scalar_type() == at::kInt && cu_nodes.scalar_type() == at::kInt && parents.dim() == 1 && cu_nodes.dim() == 1,
                    "parents and cu_nodes must be 1-D int32");
  const int64_t N = q.size(0), hq = q.size(1), d = q.size(2), hkv = k.size(1);
  TORCH_CHECK_VALUE(k.size(2) == d, "q has head_dim ", d, " but k has head_dim ", k.size(2));
  TORCH_CHECK_VALUE(hkv > 0 && hq % hkv == 0, "q's heads (", hq, ") must be a multiple of k's kv heads (", hkv, ")");
  TORCH_CHECK_VALUE(parents.numel() == N, "parents must have ", N, " entries");
  const int64_t T = cu_nodes.numel() - 1;
  TORCH_CHECK_VALUE(T >= 0, "cu_nodes must have num_trees + 1 entries");
  const bool has_cache = k_cache.has_value();
  TORCH_CHECK_VALUE(has_cache == v_cache.has_value() && has_cache == block_tables.has_value() && has_cache == prefix_lens.has_value(),
                    "k_cache, v_cache, block_tables and prefix_lens must be given together (the paged prefix) or not at all");
  if (has_cache) {
    const at::Tensor& kcache = *k_cache;
    TORCH_CHECK_VALUE(kcache.dim() == 4 && v_cache->sizes() == kcache.sizes() && kcache.size(2) == hkv && kcache.size(3) == d,
                      "k_cache and v_cache must be [num_blocks, block_size, Hkv, D] matching k");
    TORCH_CHECK_VALUE(kcache.scalar_type() == q.scalar_type() && v_cache->scalar_type() == q.scalar_type(), "k_cache must have q's dtype");
    TORCH_CHECK_VALUE(kcache.is_contiguous() && v_cache->is_contiguous(), "k_cache must be contiguous");
    const at::Tensor &tb = *block_tables, &pl = *prefix_lens;
    TORCH_CHECK_VALUE(tb.scalar_type() == at::kInt && pl.scalar_type() == at::kInt && tb.dim() == 2 && tb.size(0) == T && pl.numel() == T,
                      "block_tables must be int32 [num_trees, max_blocks] and prefix_lens int32 [num_trees]");
  }
  return {N, hq, d, hkv, T, has_cache};
}

}  // namespace r1
