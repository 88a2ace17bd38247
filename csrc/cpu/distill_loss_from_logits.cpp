// r1kernels::logits_distill_loss on the CPU (semantics exactly as
// r1kernels/_torch/distill_loss_from_logits.py): both models' logits [N, V] -> the reduced loss, each
// position's loss and the gradient of the student's logits, in one row pass of distill_row_math per
// row, over chunks of counted rows copied to fp32 (the student's copy becomes its gradient in place).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "distill_row_math.h"

namespace r1 {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

std::tuple<Tensor, Tensor, Tensor> logits_distill_loss_cpu(const Tensor& student_logits, const Tensor& teacher_logits,
                                                           const OptTensor& labels, const Tensor& row_scale, double beta,
                                                           double temperature, int64_t ignore_index, double weight_hard,
                                                           double weight_soft, bool compute_grad) {
  TORCH_CHECK_VALUE(student_logits.dim() == 2 && teacher_logits.sizes() == student_logits.sizes(),
                    "student_logits and teacher_logits must both be [N, V], got ", student_logits.sizes(), " and ",
                    teacher_logits.sizes());
  TORCH_CHECK_VALUE(student_logits.is_floating_point() && teacher_logits.is_floating_point(),
                    "student_logits and teacher_logits must be floating point, got ", student_logits.scalar_type(),
                    " and ", teacher_logits.scalar_type());
  const int64_t N = student_logits.size(0), V = student_logits.size(1);
  const OptTensor lab = labels.has_value() ? OptTensor(labels->contiguous()) : OptTensor();
  check_distill_args(lab, row_scale, N, V, ignore_index, beta, temperature, weight_hard);
  const DistillParams p{float(beta), float(1.0 / temperature), float(weight_hard), float(weight_soft), compute_grad};
  const auto fopt = student_logits.options().dtype(at::kFloat);
  const Tensor scale = row_scale.contiguous();
  const Tensor zs_all = student_logits.contiguous(), zt_all = teacher_logits.contiguous();
  Tensor row_loss = at::zeros({N}, fopt);
  // zero at ignored rows
  Tensor grad = compute_grad ? at::zeros({N, V}, fopt) : Tensor();

  const std::vector<int64_t> rows = counted_rows(lab, N, ignore_index);
  const int64_t n_rows = int64_t(rows.size());
  const int64_t R = distill_chunk_rows(V, n_rows);
  for (int64_t start = 0; start < n_rows; start += R) {
    const int64_t r = std::min(R, n_rows - start);
    // the chunk's counted rows, gathered into fresh contiguous fp32 [r, V] copies the row pass may overwrite
    const Tensor idx = at::from_blob(const_cast<int64_t*>(rows.data() + start), {r}, at::kLong);
    Tensor zs = zs_all.index_select(0, idx).to(at::kFloat).contiguous();
    Tensor zt = zt_all.index_select(0, idx).to(at::kFloat).contiguous();
    distill_rows(zs.data_ptr<float>(), zt.data_ptr<float>(), r, V, rows.data() + start,
                 lab.has_value() ? lab->data_ptr<int64_t>() : nullptr, scale.data_ptr<float>(), p,
                 row_loss.data_ptr<float>());
    if (compute_grad) grad.index_copy_(0, idx, zs);
  }

  const Tensor loss = (row_loss.to(at::kDouble) * scale.to(at::kDouble)).sum().to(at::kFloat);
  return {loss, row_loss, compute_grad ? grad.to(student_logits.scalar_type()) : at::empty({0}, student_logits.options())};
}

}  // namespace
}  // namespace r1

TORCH_LIBRARY_IMPL(r1kernels, CPU, m) { m.impl("logits_distill_loss", &r1::logits_distill_loss_cpu); }
