// The noise contract of pit_sampler/noise.py in C++, shared by the CPU (.cpp) and CUDA (.cu) kernels.
//
// Philox4x32-10 (Salmon et al. 2011, as in Random123 and Triton's tl.randint4x):
//   key     (k0, k1) = low and high 32 bits of the sample's int64 seed (two's complement bits);
//   counter (c0, c1, c2, c3) = (v >> 2, l, j, 1) for the Gumbel stream of token v (output word v & 3),
//           (0, l, j, 0) for the jump stream (output word 0);
//   round   hi0:lo0 = 0xD2511F53 * c0, hi1:lo1 = 0xCD9E8D57 * c2 (32 x 32 -> 64 bit products),
//           (c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0), then
//           k0 += 0x9E3779B9, k1 += 0xBB67AE85 (mod 2^32); ten rounds.
// Every backend produces the same integers; the float32 transforms below follow noise.py operation by
// operation (same operands, same order, no fused multiply-add), so floats agree up to the last-ulp
// differences of the platform's logf.
//
// This header needs nothing but the C++ standard library (and the CUDA runtime when compiled by nvcc).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define PIT_HD __host__ __device__ __forceinline__
#else
#define PIT_HD inline
#endif

namespace pit {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;
constexpr uint32_t kStreamJump = 0;
constexpr uint32_t kStreamGumbel = 1;

// 2^-32, the scale of the uint32 -> (0, 1) maps.
constexpr float kTwoPowM32 = 2.3283064365386963e-10f;

// Philox4x32 state: four counter words, updated in place into the four output words.
struct Philox4 {
  uint32_t c[4];
};

// One Philox round on (c0, c1, c2, c3) under key (k0, k1); the caller bumps the key between rounds.
PIT_HD void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0, uint32_t k1) {
  const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
  const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
  const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
  const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
  c1 = static_cast<uint32_t>(p1);
  c3 = static_cast<uint32_t>(p0);
  c0 = n0;
  c2 = n2;
}

// Philox4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1).
PIT_HD Philox4 philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < kPhiloxRounds; ++r) {
    philox_round(c0, c1, c2, c3, k0, k1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Key words of a sample's seed.
PIT_HD uint32_t seed_lo(int64_t seed) { return static_cast<uint32_t>(static_cast<uint64_t>(seed)); }
PIT_HD uint32_t seed_hi(int64_t seed) { return static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32); }

// uint32 of the jump stream at (seed, step j, position l): word 0 of counter (0, l, j, 0).
PIT_HD uint32_t jump_bits(uint32_t k0, uint32_t k1, uint32_t j, uint32_t l) {
  return philox4x32(0u, l, j, kStreamJump, k0, k1).c[0];
}

#if defined(__CUDA_ARCH__)
PIT_HD float pit_logf(float x) { return logf(x); }
#else
PIT_HD float pit_logf(float x) { return std::log(x); }
#endif

// float32 U = (f32(x) + 0.5) 2^-32 in (0, 1): the score parametrization's jump uniform.
PIT_HD float uniform_from_bits(uint32_t x) { return (static_cast<float>(x) + 0.5f) * kTwoPowM32; }

// Exponential variate E = -log(U) without cancellation (noise.py, exponential_from_bits):
//   x <  2^31: E = -log((f32(x) + 0.5) 2^-32);
//   x >= 2^31: e = (f32(2^32 - 1 - x) + 0.5) 2^-32 = 1 - U, u = 1 - e,
//              E = e if u == 1 else log(u) e / (u - 1)   (= -log1p(-e), Goldberg's trick).
PIT_HD float exponential_from_bits(uint32_t x) {
  if (x < 0x80000000u) {
    return -pit_logf((static_cast<float>(x) + 0.5f) * kTwoPowM32);
  }
  const float e = (static_cast<float>(0xFFFFFFFFu - x) + 0.5f) * kTwoPowM32;
  const float u = 1.0f - e;
  if (u == 1.0f) return e;
  const float num = pit_logf(u) * e;
  return num / (u - 1.0f);
}

// Tail-accurate Gumbel variate G = -log(E); its range is [-log(33 log 2), 33 log 2] = [-3.13, 22.87].
PIT_HD float gumbel_from_bits(uint32_t x) { return -pit_logf(exponential_from_bits(x)); }

// An upper bound of the largest Gumbel variate: no token whose score s satisfies s + kGumbelMax <= best
// can win a Gumbel-max race whose current best is `best`.
constexpr float kGumbelMax = 23.0f;

// A cheap upper bound of gumbel_from_bits(x), monotone-safe in float32, used to skip the two logs for
// tokens that cannot win. With y = 2^32 - 1 - x, 1 - U = (y + 0.5) 2^-32 and E = -log(U) >= 1 - U, so
// G = -log(E) <= -log(1 - U) < (32 - log2(y)) log 2. Writing m for the float exponent of y >> 8 (exact in
// float32 since y >> 8 < 2^24), y >= 2^(m + 8) and G < (24 - m) log 2; the biased exponent
// eb = m + 127 gives G < (151 - eb) log 2 (eb = 0 when y < 256: the bound 104 still holds). The 1e-3
// margin covers the float32 rounding of G and of the bound itself (both below 1e-5 absolute).
PIT_HD float gumbel_upper_bound(uint32_t x) {
  const float y = static_cast<float>(static_cast<int32_t>((0xFFFFFFFFu - x) >> 8));
  uint32_t ybits;
#if defined(__CUDA_ARCH__)
  ybits = __float_as_uint(y);
#else
  std::memcpy(&ybits, &y, sizeof(ybits));
#endif
  const int32_t biased = static_cast<int32_t>(ybits >> 23);
  return static_cast<float>(151 - biased) * 0.693147182f + 1e-3f;
}

}  // namespace pit
