// CPU kernel of group_advantages (semantics exactly as r1kernels/reference.py): one pass per group
// (parallel over groups) for the count, mean, Bessel std, and whether the scorable rewards are all
// equal; for scale_mode 1 the batch std follows from the group sums (parallel-axis theorem); then
// the advantages. Double precision throughout, outputs in the rewards' dtype.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

namespace r1 {
namespace {

using at::Tensor;

struct Group {
  int64_t n;     // scorable (non-NaN) rewards
  double total;  // their sum
  double mean;
  double ss;     // sum of squared deviations from the mean
  double std;    // Bessel; 0 with fewer than 2
  bool zero_std;
};

std::tuple<Tensor, Tensor, Tensor, Tensor> group_advantages_cpu(const Tensor& rewards, int64_t group_size,
                                                                int64_t scale_mode, bool leave_one_out, double eps) {
  TORCH_CHECK_VALUE(rewards.dim() == 1 && rewards.is_floating_point(), "rewards must be a floating-point 1-D tensor, got ",
                    rewards.scalar_type(), " ", rewards.sizes());
  TORCH_CHECK_VALUE(group_size >= 1, "group_size must be >= 1, got ", group_size);
  const int64_t B = rewards.size(0);
  TORCH_CHECK_VALUE(B % group_size == 0, "rewards has ", B, " entries, not a multiple of group_size=", group_size);
  TORCH_CHECK_VALUE(scale_mode >= 0 && scale_mode <= 2, "scale_mode must be 0 (group), 1 (batch) or 2 (none), got ",
                    scale_mode);
  const int64_t G = group_size, num_groups = B / G;
  const Tensor r64 = rewards.to(at::kDouble).contiguous();
  const double* r = r64.data_ptr<double>();
  for (int64_t i = 0; i < B; ++i)
    TORCH_CHECK_VALUE(!std::isinf(r[i]), "rewards must not hold +-inf (NaN marks an unscorable sample; inf is an error)",
                      ", found ", r[i], " at index ", i);

  std::vector<Group> groups(num_groups);
  at::parallel_for(0, num_groups, 256, [&](int64_t b, int64_t e) {
    for (int64_t g = b; g < e; ++g) {
      const double* x = r + g * G;
      Group& s = groups[g];
      s.n = 0;
      s.total = 0.0;
      double lo = std::numeric_limits<double>::infinity(), hi = -lo;
      for (int64_t j = 0; j < G; ++j) {
        if (std::isnan(x[j])) continue;
        ++s.n;
        s.total += x[j];
        lo = std::min(lo, x[j]);
        hi = std::max(hi, x[j]);
      }
      s.mean = s.total / std::max<int64_t>(s.n, 1);
      s.ss = 0.0;
      for (int64_t j = 0; j < G; ++j)
        if (!std::isnan(x[j])) s.ss += (x[j] - s.mean) * (x[j] - s.mean);
      s.std = s.n >= 2 ? std::sqrt(s.ss / double(s.n - 1)) : 0.0;
      s.zero_std = s.n == 0 || lo == hi;
    }
  });

  double batch_std = 0.0;
  if (scale_mode == 1) {
    int64_t n = 0;
    double total = 0.0;
    for (const Group& s : groups) n += s.n, total += s.total;
    if (n >= 2) {
      const double mean = total / double(n);
      double ss = 0.0;
      for (const Group& s : groups) ss += s.ss + double(s.n) * (s.mean - mean) * (s.mean - mean);
      batch_std = std::sqrt(ss / double(n - 1));
    }
  }

  Tensor adv64 = at::empty({B}, r64.options());
  double* a = adv64.data_ptr<double>();
  at::parallel_for(0, num_groups, 256, [&](int64_t b, int64_t e) {
    for (int64_t g = b; g < e; ++g) {
      const Group& s = groups[g];
      const double denom = scale_mode == 0 ? s.std + eps : (scale_mode == 1 ? batch_std + eps : 1.0);
      for (int64_t j = g * G; j < (g + 1) * G; ++j) {
        if (std::isnan(r[j]) || s.zero_std) {
          a[j] = 0.0;
          continue;
        }
        double centred;
        if (leave_one_out)  // baseline: mean of the other scorable samples of the group
          centred = s.n >= 2 ? r[j] - (s.total - r[j]) / double(s.n - 1) : 0.0;
        else
          centred = r[j] - s.mean;
        a[j] = centred / denom;
      }
    }
  });

  Tensor mean = at::empty({num_groups}, r64.options()), std = at::empty({num_groups}, r64.options());
  Tensor zero_std = at::empty({num_groups}, r64.options().dtype(at::kBool));
  double *mp = mean.data_ptr<double>(), *sp = std.data_ptr<double>();
  bool* zp = zero_std.data_ptr<bool>();
  for (int64_t g = 0; g < num_groups; ++g) {
    mp[g] = groups[g].mean;
    sp[g] = groups[g].std;
    zp[g] = groups[g].zero_std;
  }
  const auto dt = rewards.scalar_type();
  return {adv64.to(dt), mean.to(dt), std.to(dt), zero_std};
}

}  // namespace
}  // namespace r1

TORCH_LIBRARY_IMPL(r1kernels, CPU, m) { m.impl("group_advantages", &r1::group_advantages_cpu); }
