// Unmask rules and jump counts (pit_sampler/rules.py, pit_sampler/reference.py), shared by CPU and CUDA.
#pragma once

#include <cstdint>

#include "philox.h"

namespace pit {

// Rule ids, as pit_sampler.rules.RULES = ("reject", "first", "tweedie").
constexpr int64_t kRuleReject = 0;
constexpr int64_t kRuleFirst = 1;
constexpr int64_t kRuleTweedie = 2;
// Score parametrization: the float32 Poisson inverse CDF saturates at this count (rules.SCORE_MAX_JUMPS).
constexpr int kScoreMaxJumps = 64;
// The largest finite float32 (FLT_MAX, without <cfloat> for nvcc's device code).
constexpr float kFltMax = 3.40282346638528859811704183484516925e38f;

// Whether a masked position with jump count k unmasks: reject needs exactly one jump, first and tweedie
// at least one.
PIT_HD bool unmasks(int32_t k, int64_t rule) { return rule == kRuleReject ? k == 1 : k >= 1; }

// Mean parametrization: K = #{k : bits >= T[k]} over the step's integer thresholds T[0..width)
// (rows padded with the unreachable 2^32).
PIT_HD int32_t mean_count(uint32_t bits, const int64_t* thresholds, int64_t width) {
  int32_t k = 0;
  for (int64_t i = 0; i < width; ++i) k += static_cast<int64_t>(bits) >= thresholds[i];
  return k;
}

#if defined(__CUDA_ARCH__)
PIT_HD float pit_expf(float x) { return expf(x); }
#else
PIT_HD float pit_expf(float x) { return std::exp(x); }
#endif

// Score parametrization: the count K at the jump uniform U = (f32(bits) + 0.5) 2^-32 given the row's
// float32 lambda = rate[j] * sum_{v != mask} exp(s_v), first clamped to FLT_MAX (NaN stays NaN, as
// torch.clamp does), so that an overflowing or infinite lambda saturates (K = 64; tweedie p = 1) instead
// of turning the CDF into NaN (exp(-inf) * inf):
//   tweedie: K = [U > 1 - min(lambda, 1)] (NaN propagates through the min, as torch.clamp does);
//   reject / first: the inverse CDF of Poisson(lambda), K = #{i in 0..63 : U > F(i)} with
//   F(0) = p_0 = exp(-lambda), p_i = p_{i-1} lambda / i, F(i) = F(i - 1) + p_i, all in float32.
PIT_HD int32_t score_count(uint32_t bits, float lambda, int64_t rule) {
  lambda = lambda > kFltMax ? kFltMax : lambda;
  const float u = uniform_from_bits(bits);
  if (rule == kRuleTweedie) {
    const float p = lambda > 1.0f ? 1.0f : lambda;
    return u > 1.0f - p;
  }
  float p = pit_expf(-lambda);
  float f = p;
  int32_t k = 0;
  for (int i = 1; i <= kScoreMaxJumps; ++i) {
    k += u > f;
    p = p * lambda / static_cast<float>(i);
    f = f + p;
  }
  return k;
}

}  // namespace pit
