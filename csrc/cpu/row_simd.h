// What the row-math files of the loss ops (grpo_row_math.cpp, distill_row_math.cpp) share: the
// per-ISA clone attribute and a branch-free exp their vocabulary loops vectorise over.
//
// The names live in r1::row (not r1) because attention_common.h has its own r1::fast_exp, tuned for
// x <= 0 with a different reduction: one name with two bodies would break the one-definition rule.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

// the extension is built for the baseline ISA, so the loops are compiled once per x86 level
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define R1_VEC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define R1_VEC_CLONES
#endif

namespace r1 {
namespace row {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(x) as 2^n * exp(r), n = round(x / ln 2), |r| <= ln 2 / 2, with Cephes' degree-6 polynomial
// for exp(r) (relative error about 2e-7, below fp32 rounding of the sums it feeds). Branch-free
// so the loops vectorise (libm's expf does not); NaN stays NaN (the comparisons keep it), and x
// below -87.3 gives the smallest normal float instead of a denormal, which is 0 for every sum here.
inline float fast_exp(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.3f ? 88.3f : x;
  const float t = x * 1.44269504088896341f + 12582912.f;  // 1.5 * 2^23: rounds x / ln 2 to an integer
  const float n = t - 12582912.f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

}  // namespace row
}  // namespace r1
