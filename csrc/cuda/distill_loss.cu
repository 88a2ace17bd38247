// r1kernels::fused_distill_loss for the CUDA dispatch key (semantics exactly as
// r1kernels/_torch/distill_loss.py): per chunk of rows, the two heads' logits GEMMs (cuBLAS, fp32
// results), one thread block per row over the vocabulary (the formulas of
// r1kernels/_torch/distill_rows.py, three passes as csrc/cpu/distill_row_math.cpp: online
// logsumexps, the loss with the row-local part of the gradient A written over the student's row and
// p over the teacher's, then a -= K p), and the student's gradient GEMMs. Neither model's [N, V]
// logits exist beyond one chunk.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <optional>

namespace r1kernels {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

struct Params {
  float beta, inv_temp, weight_hard, weight_soft;
  int64_t ignore_index;
  int mode;  // 0: beta 0 (forward KL), 1: beta 1 (reverse KL), 2: the mixture
  bool has_labels, hard, hard1, compute_grad;
};

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// sum (or max) over the block; every thread gets the result. `red` holds kWarps floats.
template <bool MAX>
__device__ float block_reduce(float v, float* red) {
  v = MAX ? warp_max(v) : warp_sum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // red may still be read by the previous reduction
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float r = lane < kWarps ? red[lane] : (MAX ? -INFINITY : 0.f);
  r = MAX ? warp_max(r) : warp_sum(r);
  return r;
}

// logsumexp of x * k over the row: the block's max first, then the sum (two reads of the row)
__device__ float row_lse(const float* x, int64_t V, float k, float* red) {
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) m = fmaxf(m, x[v] * k);
  m = block_reduce<true>(m, red);
  float s = 0.f;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) s += __expf(x[v] * k - m);
  s = block_reduce<false>(s, red);
  return m + logf(s);
}

__global__ void __launch_bounds__(kThreads) distill_row_kernel(float* __restrict__ zs, float* __restrict__ zt, int64_t V,
                                                               const int64_t* __restrict__ labels,
                                                               const float* __restrict__ scale,
                                                               float* __restrict__ row_loss, Params p) {
  __shared__ float red[kWarps];
  const int64_t row = blockIdx.x;
  float* a = zs + row * V;
  float* b = zt + row * V;
  bool counted = true;
  int64_t label = 0;
  if (p.has_labels) {
    label = labels[row];
    counted = label != p.ignore_index;
    if (!counted) label = 0;
  }
  const float a_label = a[label];  // read before the row is overwritten
  const float k = p.inv_temp;
  const float lse_a = row_lse(a, V, k, red), lse_b = row_lse(b, V, k, red);
  const float lse1 = p.hard1 ? row_lse(a, V, 1.f, red) : lse_a;
  const float rs = scale[row];
  const float c_soft = counted ? rs * p.weight_soft * k : 0.f;
  const float c_hard = counted && p.hard ? rs * p.weight_hard : 0.f;
  const float wa = 1.f - p.beta;
  float st = 0.f, ss = 0.f;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    const float x = a[v];
    const float s = x * k - lse_a, t = b[v] * k - lse_b;
    const float ps = __expf(s), q = __expf(t);
    float A;
    if (p.mode == 0) {
      st += q > 0.f ? q * (t - s) : 0.f;
      A = ps - q;
    } else if (p.mode == 1) {
      A = ps > 0.f ? ps * (s - t) : 0.f;
      ss += A;
    } else {
      const float m = __logf(wa * ps + p.beta * q);
      st += q > 0.f ? q * (t - m) : 0.f;
      const float d = ps > 0.f ? ps * (s - m) : 0.f;
      ss += d;
      A = wa * d;
    }
    if (p.compute_grad) {
      const float h = p.hard1 ? __expf(x - lse1) : ps;
      a[v] = c_soft * A + c_hard * h;
      b[v] = ps;
    }
  }
  st = block_reduce<false>(st, red);
  ss = block_reduce<false>(ss, red);
  const float soft = p.mode == 0 ? st : (p.mode == 1 ? ss : p.beta * st + wa * ss);
  if (threadIdx.x == 0) {
    float loss = p.weight_soft * soft + (p.hard ? p.weight_hard * (lse1 - a_label) : 0.f);
    row_loss[row] = counted ? loss : 0.f;
  }
  if (!p.compute_grad) return;
  const float K = p.mode == 0 ? 0.f : (p.mode == 1 ? ss : wa * ss);
  const float ck = c_soft * K;
  if (ck != 0.f)
    for (int64_t v = threadIdx.x; v < V; v += kThreads) a[v] -= ck * b[v];
  __syncthreads();  // every thread's writes to the row land before the label's entry is adjusted
  if (threadIdx.x == 0 && p.hard) a[label] -= c_hard;
}

int64_t chunk_rows(int64_t V, int64_t n) {
  const char* env = std::getenv("R1_DISTILL_CHUNK_BYTES");
  const int64_t budget = env ? std::max<int64_t>(std::atoll(env), 1) : int64_t(192) << 20;
  return std::max<int64_t>(std::min(budget / (std::max<int64_t>(V, 1) * 4), n), 1);
}

Tensor head_logits(const Tensor& h, const Tensor& w, const OptTensor& b) {
  const Tensor z = b.has_value() ? at::addmm(b->to(h.scalar_type()), h, w.t()) : at::mm(h, w.t());
  return z.to(at::kFloat).contiguous();
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> fused_distill_loss_cuda(
    const Tensor& student_hidden, const Tensor& student_weight, const OptTensor& student_bias,
    const Tensor& teacher_hidden, const Tensor& teacher_weight, const OptTensor& teacher_bias, const OptTensor& labels,
    const Tensor& row_scale, double beta, double temperature, int64_t ignore_index, double weight_hard,
    double weight_soft, bool compute_grad) {
  TORCH_CHECK_VALUE(student_hidden.dim() == 2 && student_weight.dim() == 2 && teacher_hidden.dim() == 2 &&
                        teacher_weight.dim() == 2,
                    "hidden states must be [N, H] and weights [V, H]");
  const int64_t N = student_hidden.size(0), V = student_weight.size(0);
  TORCH_CHECK_VALUE(teacher_hidden.size(0) == N, "teacher_hidden must have N = ", N, " rows, got ", teacher_hidden.size(0));
  TORCH_CHECK_VALUE(teacher_weight.size(0) == V, "the vocabularies differ: student_weight has V=", V,
                    ", teacher_weight V=", teacher_weight.size(0));
  TORCH_CHECK_VALUE(student_hidden.size(1) == student_weight.size(1) && teacher_hidden.size(1) == teacher_weight.size(1),
                    "each hidden state's H must equal its weight's H");
  TORCH_CHECK_VALUE(row_scale.dim() == 1 && row_scale.size(0) == N && row_scale.scalar_type() == at::kFloat,
                    "row_scale must be float32 [N] = [", N, "]");
  TORCH_CHECK_VALUE(beta >= 0.0 && beta <= 1.0, "beta must be in [0, 1], got ", beta);
  TORCH_CHECK_VALUE(temperature > 0.0, "temperature must be > 0, got ", temperature);
  TORCH_CHECK_VALUE(labels.has_value() || weight_hard == 0.0, "labels=None needs weight_hard == 0");
  if (labels.has_value())
    TORCH_CHECK_VALUE(labels->dim() == 1 && labels->size(0) == N && labels->scalar_type() == at::kLong,
                      "labels must be int64 [N] = [", N, "]");
  const c10::cuda::CUDAGuard guard(student_hidden.device());

  Params p;
  p.beta = float(beta);
  p.inv_temp = float(1.0 / temperature);
  p.weight_hard = float(weight_hard);
  p.weight_soft = float(weight_soft);
  p.ignore_index = ignore_index;
  p.mode = beta == 0.0 ? 0 : (beta == 1.0 ? 1 : 2);
  p.has_labels = labels.has_value();
  p.hard = labels.has_value() && weight_hard != 0.0;
  p.hard1 = p.hard && temperature != 1.0;
  p.compute_grad = compute_grad;

  const auto dt_s = at::promote_types(student_hidden.scalar_type(), student_weight.scalar_type());
  const auto dt_t = at::promote_types(teacher_hidden.scalar_type(), teacher_weight.scalar_type());
  const Tensor hs_all = student_hidden.to(dt_s).contiguous(), ws = student_weight.to(dt_s).contiguous();
  const Tensor ht_all = teacher_hidden.to(dt_t).contiguous(), wt = teacher_weight.to(dt_t).contiguous();
  const Tensor lab = labels.has_value() ? labels->contiguous() : Tensor();
  const Tensor scale = row_scale.contiguous();
  const auto fopt = student_hidden.options().dtype(at::kFloat);
  Tensor row_loss = at::zeros({N}, fopt);
  Tensor gh, gW, gb;
  if (compute_grad) {
    gh = at::empty({N, student_hidden.size(1)}, fopt);
    gW = at::zeros(student_weight.sizes(), fopt);
    if (student_bias.has_value()) gb = at::zeros({V}, fopt);
  }
  const int64_t R = chunk_rows(V, N);
  auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t start = 0; start < N; start += R) {
    const int64_t r = std::min(R, N - start);
    const Tensor hs = hs_all.narrow(0, start, r);
    Tensor zs = head_logits(hs, ws, student_bias);
    Tensor zt = head_logits(ht_all.narrow(0, start, r), wt, teacher_bias);
    distill_row_kernel<<<r, kThreads, 0, stream>>>(
        zs.data_ptr<float>(), zt.data_ptr<float>(), V, lab.defined() ? lab.data_ptr<int64_t>() + start : nullptr,
        scale.data_ptr<float>() + start, row_loss.data_ptr<float>() + start, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (!compute_grad) continue;
    // zs now holds d loss / d student logits for these rows
    const Tensor dz = zs.to(dt_s);
    gh.narrow(0, start, r).copy_(at::mm(dz, ws));
    if (dt_s == at::kFloat)
      gW.addmm_(dz.t(), hs);
    else  // a low-precision head: the chunks' products accumulate in fp32
      gW.add_(at::mm(dz.t(), hs));
    if (gb.defined()) gb.add_(zs.sum(0));
  }
  const Tensor loss = (row_loss.to(at::kDouble) * scale.to(at::kDouble)).sum().to(at::kFloat);
  if (!compute_grad) {
    const auto e = [&] { return at::empty({0}, student_hidden.options()); };
    return {loss, row_loss, e(), e(), e()};
  }
  return {loss, row_loss, gh.to(student_hidden.scalar_type()), gW.to(student_weight.scalar_type()),
          gb.defined() ? gb.to(student_bias->scalar_type()) : at::empty({0}, student_hidden.options())};
}

}  // namespace
}  // namespace r1kernels

TORCH_LIBRARY_IMPL(r1kernels, CUDA, m) { m.impl("fused_distill_loss", &r1kernels::fused_distill_loss_cuda); }
