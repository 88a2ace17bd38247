// y = x W^T + b for a few rows of x (r1kernels::skinny_linear's CPU kernel), for other CPU kernels
// that run the projections of a decode step themselves.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace r1 {

at::Tensor skinny_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias);

}  // namespace r1
