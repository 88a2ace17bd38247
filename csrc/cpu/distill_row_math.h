// Per-row math of the distillation loss CPU ops (fused_distill_loss, logits_distill_loss), the
// closed form of r1kernels/_torch/distill_rows.py: one row of each model's fp32 logits in, the row's
// loss out and, with compute_grad, the gradient of row_scale * loss with respect to the student's
// logits written over the student's row (the teacher's row is scratch).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace r1 {

struct DistillParams {
  float beta;
  float inv_temp;
  float weight_hard;
  float weight_soft;
  bool compute_grad;
};

// One row: a = student logits [V] (becomes the gradient), b = teacher logits [V] (overwritten when
// compute_grad), label < 0 when there is no hard loss for the row.
float distill_row(float* a, float* b, int64_t V, int64_t label, float row_scale, const DistillParams& p);

// Rows of a chunk in parallel: zs, zt [rows, V]; chunk row r is position index[r] (index null: r),
// whose label is labels[index[r]] (labels null: no hard loss) and weight scale[index[r]].
void distill_rows(float* zs, float* zt, int64_t rows, int64_t V, const int64_t* index, const int64_t* labels,
                  const float* scale, const DistillParams& p, float* row_loss);

// Rows per chunk: each [rows, V] fp32 buffer stays within the byte budget (192 MiB: 331 rows of the
// Qwen2.5-0.5B head; R1_DISTILL_CHUNK_BYTES overrides it, read per call so tests force small chunks).
int64_t distill_chunk_rows(int64_t V, int64_t n_rows);

// The positions whose label is not ignore_index (all of them without labels).
std::vector<int64_t> counted_rows(const std::optional<at::Tensor>& labels, int64_t N, int64_t ignore_index);

// Checks shared by both ops: labels [N] int64 in [0, V) or ignore_index, row_scale [N] float32,
// beta in [0, 1], temperature > 0.
void check_distill_args(const std::optional<at::Tensor>& labels, const at::Tensor& row_scale, int64_t N, int64_t V,
                        int64_t ignore_index, double beta, double temperature, double weight_hard);

}  // namespace r1
