// r1kernels::fused_distill_loss on the CPU (semantics exactly as r1kernels/_torch/distill_loss.py):
// both models' hidden states and LM heads -> the reduced loss, each position's loss and the
// gradients of the student's hidden states, weight and bias, all in the forward. Per chunk of
// counted rows (positions whose label is ignore_index are skipped entirely): the two logits GEMMs
// into two [rows, V] fp32 buffers, the row pass of distill_row_math (which turns the student's
// buffer into the gradient of its logits in place), then the student's two gradient GEMMs. Four
// GEMMs of the heads' size in all; neither model's [N, V] logits ever exist.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "distill_row_math.h"

namespace r1 {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

Tensor f32(const Tensor& t) { return t.to(at::kFloat).contiguous(); }

void check_head(const Tensor& h, const Tensor& w, const OptTensor& b, int64_t N, const char* who) {
  TORCH_CHECK_VALUE(h.dim() == 2 && w.dim() == 2 && h.size(1) == w.size(1) && h.size(0) == N, who,
                    " hidden must be [N, H] = [", N, ", H] and weight [V, H], got hidden ", h.sizes(), " and weight ",
                    w.sizes());
  TORCH_CHECK_VALUE(h.is_floating_point() && w.is_floating_point(), who, " hidden and weight must be floating point, got ",
                    h.scalar_type(), " and ", w.scalar_type());
  TORCH_CHECK_VALUE(!b.has_value() || (b->dim() == 1 && b->size(0) == w.size(0)), who, " bias must have shape [V] = [",
                    w.size(0), "], got ", b.has_value() ? b->sizes() : at::IntArrayRef{});
}

// logits = h @ w.T + b into `out`
void head_logits(Tensor& out, const Tensor& h, const Tensor& wt, const Tensor& b) {
  if (b.defined())
    at::addmm_out(out, b, h, wt);
  else
    at::mm_out(out, h, wt);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> fused_distill_loss_cpu(
    const Tensor& student_hidden, const Tensor& student_weight, const OptTensor& student_bias,
    const Tensor& teacher_hidden, const Tensor& teacher_weight, const OptTensor& teacher_bias, const OptTensor& labels,
    const Tensor& row_scale, double beta, double temperature, int64_t ignore_index, double weight_hard,
    double weight_soft, bool compute_grad) {
  const int64_t N = student_hidden.size(0), Hs = student_hidden.size(1), V = student_weight.size(0);
  check_head(student_hidden, student_weight, student_bias, N, "student");
  check_head(teacher_hidden, teacher_weight, teacher_bias, N, "teacher");
  TORCH_CHECK_VALUE(teacher_weight.size(0) == V, "the vocabularies differ: student_weight has V=", V,
                    ", teacher_weight V=", teacher_weight.size(0));
  const OptTensor lab = labels.has_value() ? OptTensor(labels->contiguous()) : OptTensor();
  check_distill_args(lab, row_scale, N, V, ignore_index, beta, temperature, weight_hard);
  const DistillParams p{float(beta), float(1.0 / temperature), float(weight_hard), float(weight_soft), compute_grad};

  const auto fopt = student_hidden.options().dtype(at::kFloat);
  // fp32 copies only where the inputs are not fp32 already (bf16/fp16 heads accumulate in fp32)
  const Tensor Ws = f32(student_weight), Wt = f32(teacher_weight);
  const Tensor bs = student_bias.has_value() ? f32(*student_bias) : Tensor();
  const Tensor bt = teacher_bias.has_value() ? f32(*teacher_bias) : Tensor();
  const Tensor hs_all = student_hidden.contiguous(), ht_all = teacher_hidden.contiguous();
  const Tensor scale = row_scale.contiguous();
  Tensor row_loss = at::zeros({N}, fopt);
  Tensor gh, gW, gb;
  if (compute_grad) {
    gh = at::zeros({N, Hs}, fopt);
    // written by the first chunk's GEMM, not zeroed first (one pass less over the [V, H] buffer)
    gW = at::empty({V, Hs}, fopt);
    if (bs.defined()) gb = at::empty({V}, fopt);
  }

  const std::vector<int64_t> rows = counted_rows(lab, N, ignore_index);
  const int64_t n_rows = int64_t(rows.size());
  const bool all_rows = n_rows == N;  // the common case: chunks are plain slices
  const Tensor idx_all = at::from_blob(const_cast<int64_t*>(rows.data()), {n_rows}, at::kLong);
  const int64_t R = distill_chunk_rows(V, n_rows);
  // the only tokens x vocabulary memory: one chunk of each model's logits
  Tensor buf_s = n_rows ? at::empty({R, V}, fopt) : Tensor(), buf_t = n_rows ? at::empty({R, V}, fopt) : Tensor();

  for (int64_t start = 0; start < n_rows; start += R) {
    const int64_t r = std::min(R, n_rows - start);
    const Tensor idx = idx_all.narrow(0, start, r);
    const auto take = [&](const Tensor& all) {
      return (all_rows ? all.narrow(0, start, r) : all.index_select(0, idx)).to(at::kFloat).contiguous();
    };
    const Tensor hs = take(hs_all);
    Tensor zs = buf_s.narrow(0, 0, r), zt = buf_t.narrow(0, 0, r);
    head_logits(zs, hs, Ws.t(), bs);
    head_logits(zt, take(ht_all), Wt.t(), bt);
    distill_rows(zs.data_ptr<float>(), zt.data_ptr<float>(), r, V, rows.data() + start,
                 lab.has_value() ? lab->data_ptr<int64_t>() : nullptr, scale.data_ptr<float>(), p,
                 row_loss.data_ptr<float>());
    if (!compute_grad) continue;
    // zs now holds d loss / d student logits for these rows
    if (all_rows) {
      Tensor gh_rows = gh.narrow(0, start, r);
      at::mm_out(gh_rows, zs, Ws);
    } else {
      gh.index_copy_(0, idx, at::mm(zs, Ws));
    }
    if (start == 0) {
      at::mm_out(gW, zs.t(), hs);
      if (gb.defined()) at::sum_out(gb, zs, 0);
    } else {
      gW.addmm_(zs.t(), hs);
      if (gb.defined()) gb.add_(zs.sum(0));
    }
  }
  if (compute_grad && n_rows == 0) {  // no counted row: no chunk wrote them
    gW.zero_();
    if (gb.defined()) gb.zero_();
  }

  // in row order, in double: the loss does not depend on the thread count
  const Tensor loss = (row_loss.to(at::kDouble) * scale.to(at::kDouble)).sum().to(at::kFloat);
  if (!compute_grad) {
    // three distinct tensors: outputs of a custom op must not alias each other
    const auto e = [&] { return at::empty({0}, student_hidden.options()); };
    return {loss, row_loss, e(), e(), e()};
  }
  return {loss, row_loss, gh.to(student_hidden.scalar_type()), gW.to(student_weight.scalar_type()),
          gb.defined() ? gb.to(student_bias->scalar_type()) : at::empty({0}, student_hidden.options())};
}

}  // namespace
}  // namespace r1

TORCH_LIBRARY_IMPL(r1kernels, CPU, m) { m.impl("fused_distill_loss", &r1::fused_distill_loss_cpu); }
