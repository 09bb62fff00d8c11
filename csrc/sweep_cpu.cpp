// CPU kernel of pit_sampler_native::sweep (semantics: pit_sampler/reference.py, `sweep`).
//
// Mean parametrization (the fast path). A masked position's unmask slice depends only on the jump
// noise, so the window is processed as events:
//   A. per position (parallel): scan the slices from the position's start, writing the jump counts,
//      up to the first slice whose count passes the rule (an "event");
//   B. per event (parallel, one vocabulary row each, so the work is balanced whatever the prompt
//      layout): check the row and draw the token by Gumbel-max;
//   a bad row (NaN/+inf, or only -inf, among the scaled values s_v = x_v * inv_t of non-mask tokens) is
//   counted in `invalid`; a missing row (rows[w, b, l] outside [0, M): never read) flags the slice; either
//   leaves the position masked and it resumes scanning at the next slice (A and B repeat, rarely).
//   C. per (slice, sample) row: write the states.
// Score parametrization: every live masked slice reads its row (lambda depends on it), so slices are
// processed in order, in parallel over the masked positions of each slice; a missing row gives count 0.
// Slices: steps < 0 passes through; a slice whose step exceeds N is a bad slice: it passes through too and
// reads nothing. Bad slices and slices with a missing row report invalid = -1 (a per-slice flag, applied
// after the counts of invalid rows), so no index is ever out of bounds whatever its value. Counts are
// written only when asked for; the residual covers the first P slices (those with a previous iterate).
// Logits [M, V] are read in place through their strides (no copy); rows with unit vocab stride take the
// vectorised conversion loop, others a strided one.
//
// Token draw: argmax_{v != mask} x_v * inv_t + G(seed, j, l, v) with inv_t = float32(1) / float32(T) (the
// contract: a float32 multiply, as CUDA evaluates a division by a scalar; T = 0 is greedy: the plain argmax
// of the raw logits at every step), first index on ties, as a running
// (max, argmax) in float32 over the row, generating Philox per 4 tokens in the loop (no noise tensor).
// Two exact shortcuts skip work for tokens that cannot beat the running best:
//   * a 64-token chunk is skipped without any Philox when every score s satisfies s + 23 <= best
//     (23 bounds every Gumbel variate);
//   * a token's two logs are skipped when s + gumbel_upper_bound(bits) <= best.
// Float32 addition is monotone, so a skipped token's s + G could not exceed best: the result is the
// argmax of the full computation.
#include <ATen/Dispatch_v2.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "philox.h"
#include "sampling.h"
#include "sweep_checks.h"

// The hot row loop is compiled for x86-64-v4 (AVX-512), AVX2 and the baseline ISA, and the loader picks
// the best one the CPU supports (GCC/Clang function multi-versioning on x86-64 ELF; no -march needed);
// other platforms build the baseline version.
#if defined(__x86_64__) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__INTEL_COMPILER)
#define PIT_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define PIT_CPU_CLONES
#endif

namespace pit {
namespace cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int kGroups = 16;          // Philox counters per chunk
constexpr int kChunk = 4 * kGroups;  // tokens per chunk (4 output words per counter)

int64_t padded_vocab(int64_t V) { return (V + kChunk - 1) / kChunk * kChunk; }

// Grain of at::parallel_for for items costing about `cost` elementary steps (a token, a Philox call, a
// compared state) each: loops under about 2^15 steps run inline, without a parallel region.
int64_t grain(int64_t cost) { return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, cost)); }

}  // namespace

// Gumbel-max over s[0, n) (n a multiple of kChunk; entries that must not win hold -inf):
// argmax_v s[v] + G(k0, k1, j, l, v) with the first index on ties (0 if every entry is -inf).
PIT_CPU_CLONES int64_t gumbel_argmax(const float* s, int64_t n, uint32_t k0, uint32_t k1, uint32_t l, uint32_t j) {
  float best = -kInf;
  int64_t best_v = 0;
  uint32_t bits[kChunk];
  for (int64_t v0 = 0; v0 < n; v0 += kChunk) {
    const float* sc = s + v0;
    int reachable = 0;
    for (int t = 0; t < kChunk; ++t) reachable |= sc[t] + kGumbelMax > best;
    if (!reachable) continue;
    // Gumbel words of counters (v0 / 4 + i, l, j, 1): token v0 + 4 i + w takes word w. One Philox per
    // lane, rounds unrolled, so the lane loop vectorizes.
    const uint32_t g0 = static_cast<uint32_t>(v0 >> 2);
    for (int i = 0; i < kGroups; ++i) {
      uint32_t c0 = g0 + static_cast<uint32_t>(i), c1 = l, c2 = j, c3 = kStreamGumbel, key0 = k0, key1 = k1;
#pragma GCC unroll 10
      for (int r = 0; r < kPhiloxRounds; ++r) {
        philox_round(c0, c1, c2, c3, key0, key1);
        key0 += kPhiloxW0;
        key1 += kPhiloxW1;
      }
      bits[4 * i + 0] = c0;
      bits[4 * i + 1] = c1;
      bits[4 * i + 2] = c2;
      bits[4 * i + 3] = c3;
    }
    int candidates = 0;
    for (int t = 0; t < kChunk; ++t) candidates |= sc[t] + gumbel_upper_bound(bits[t]) > best;
    if (!candidates) continue;
    for (int t = 0; t < kChunk; ++t) {
      if (!(sc[t] + gumbel_upper_bound(bits[t]) > best)) continue;
      const float value = sc[t] + gumbel_from_bits(bits[t]);
      if (value > best) {
        best = value;
        best_v = v0 + t;
      }
    }
  }
  return best_v;
}

namespace {

// Plain argmax over s[0, n), first index on ties (the final fill with argmax_final).
int64_t first_argmax(const float* s, int64_t n) {
  float best = -kInf;
  int64_t best_v = 0;
  for (int64_t v = 0; v < n; ++v) {
    if (s[v] > best) {
      best = s[v];
      best_v = v;
    }
  }
  return best_v;
}

// buf[v] = s_v = row[v * stride] as float32, times inv_t when kScale, for v in [lo, hi); ORs into
// `nonfinite_hi` whether an s_v is NaN or +inf and into `above_neg_inf` whether one is above -inf. The
// unit-stride instantiation (kUnit) is the vectorised path; the others read through the vocab stride.
template <bool kScale, bool kUnit, typename scalar_t>
void convert(const scalar_t* __restrict row, int64_t stride, float* __restrict buf, int64_t lo, int64_t hi,
             float inv_t, int& nonfinite_hi, int& above_neg_inf) {
  int nonfinite = 0, above = 0;
  for (int64_t v = lo; v < hi; ++v) {
    const float x = static_cast<float>(row[kUnit ? v : v * stride]);
    const float s = kScale ? x * inv_t : x;
    nonfinite |= !(s < kInf);
    above |= s > -kInf;
    buf[v] = s;
  }
  nonfinite_hi |= nonfinite;
  above_neg_inf |= above;
}

template <bool kScale, bool kUnit, typename scalar_t>
void convert_row(const scalar_t* row, int64_t stride, int64_t V, int64_t mask_id, float inv_t, float* buf,
                 int& nonfinite_hi, int& above_neg_inf) {
  convert<kScale, kUnit>(row, stride, buf, 0, mask_id, inv_t, nonfinite_hi, above_neg_inf);
  convert<kScale, kUnit>(row, stride, buf, mask_id + 1, V, inv_t, nonfinite_hi, above_neg_inf);
}

// Copies the row (V values, `stride` apart) as float32 into buf[0, padded_vocab(V)) with -inf at mask_id
// and in the padding, times inv_t unless it is 1 (x * 1 == x). Returns whether the row is bad on these
// (scaled) values: NaN or +inf on a non-mask token, or no non-mask token above -inf.
template <typename scalar_t>
bool load_row(const scalar_t* row, int64_t stride, int64_t V, int64_t mask_id, float inv_t, float* buf) {
  int nonfinite_hi = 0, above_neg_inf = 0;
  const bool unit = stride == 1;
  if (inv_t == 1.0f) {
    if (unit) {
      convert_row<false, true>(row, stride, V, mask_id, inv_t, buf, nonfinite_hi, above_neg_inf);
    } else {
      convert_row<false, false>(row, stride, V, mask_id, inv_t, buf, nonfinite_hi, above_neg_inf);
    }
  } else if (unit) {
    convert_row<true, true>(row, stride, V, mask_id, inv_t, buf, nonfinite_hi, above_neg_inf);
  } else {
    convert_row<true, false>(row, stride, V, mask_id, inv_t, buf, nonfinite_hi, above_neg_inf);
  }
  buf[mask_id] = -kInf;
  for (int64_t v = V; v < padded_vocab(V); ++v) buf[v] = -kInf;
  return nonfinite_hi || !above_neg_inf;
}

// The largest of buf[0, V) (-inf if all are).
float row_max(const float* buf, int64_t V) {
  float m = -kInf;
  for (int64_t v = 0; v < V; ++v) m = buf[v] > m ? buf[v] : m;
  return m;
}

// log-sum-exp of buf[0, V) (mask already -inf, m = row_max > -inf) as torch.logsumexp:
// m + log(sum exp(s - m)), with the sum accumulated in float64.
float logsumexp(const float* buf, int64_t V, float m) {
  double sum = 0.0;
  for (int64_t v = 0; v < V; ++v) sum += std::exp(buf[v] - m);
  return static_cast<float>(std::log(sum)) + m;
}

// Slice kinds, from steps alone (see the contract's "Slices").
constexpr uint8_t kPass = 0;  // steps < 0: not live
constexpr uint8_t kStep = 1;  // a step: 0 <= steps <= N
constexpr uint8_t kBad = 2;   // steps > N: passes through, reads nothing, invalid = -1

// Outcome of reading one row (the `status` of an event or of a score position).
constexpr uint8_t kRowOk = 0;
constexpr uint8_t kRowBad = 1;      // NaN/+inf, or nothing above -inf (scaled): counted in invalid
constexpr uint8_t kRowMissing = 2;  // rows[w, b, l] outside [0, M): the slice reports invalid = -1

// Everything one sweep call needs: raw pointers into contiguous index tensors and the logits' strides.
template <typename scalar_t>
struct Sweep {
  const scalar_t* logits;  // [M, V], elements (stride_m, stride_v) apart
  const int64_t* rows;     // [W, B, L]: the packed row each read uses
  const int64_t* steps;    // [W, B]
  const int64_t* x0;       // [B, L]
  const int64_t* seeds;    // [B]
  const int64_t* cdf;      // [N + 1, K]
  const float* rate;       // [N + 1]
  const uint8_t* kind;     // [W, B] slice kinds
  int64_t* states;         // [W, B, L]
  int32_t* counts;         // [W, B, L], or nullptr when the counts are not wanted
  int32_t* invalid;        // [W, B]: invalid rows read (the -1 of bad slices and missing rows comes later)
  uint8_t* missing;        // [W, B]: bad slice or a missing row
  int64_t W, B, L, V, M, N, K, mask_id, rule;
  int64_t stride_m, stride_v;
  float inv_t;  // float32(1) / float32(temperature) (1 when greedy): scores are logits * inv_t
  bool greedy, argmax_final;

  // Whether slice w performs a step for sample b (then steps is in range).
  bool live(int64_t w, int64_t b) const { return kind[w * B + b] == kStep; }
  int64_t step(int64_t w, int64_t b) const { return steps[w * B + b]; }

  // The logits row that (slice w, sample b, position l) reads, or nullptr for a missing row (the index is
  // compared with M before any address is formed).
  const scalar_t* row(int64_t w, int64_t b, int64_t l) const {
    const int64_t r = rows[(w * B + b) * L + l];
    return r >= 0 && r < M ? logits + r * stride_m : nullptr;
  }

  void count(int64_t w, int64_t b, int64_t l, int32_t k) const {
    if (counts != nullptr) counts[(w * B + b) * L + l] = k;
  }

  // Records a read's outcome for slice w of sample b (serial: called after each parallel pass).
  void report(int64_t w, int64_t b, uint8_t status) const {
    if (status == kRowBad) invalid[w * B + b] += 1;
    if (status == kRowMissing) missing[w * B + b] = 1;
  }

  // Token of a row already in buf (not bad): Gumbel-max, or plain argmax when greedy or at the final
  // step N with argmax_final.
  int64_t draw(const float* buf, int64_t b, int64_t l, int64_t j) const {
    if (greedy || (argmax_final && j == N)) return first_argmax(buf, V);
    const int64_t seed = seeds[b];
    return gumbel_argmax(buf, padded_vocab(V), seed_lo(seed), seed_hi(seed), static_cast<uint32_t>(l),
                         static_cast<uint32_t>(j));
  }

  void mean() const;
  void score() const;
};

template <typename scalar_t>
void Sweep<scalar_t>::mean() const {
  const int64_t P = B * L;
  std::vector<int64_t> start(P, 0);   // first slice still to scan
  std::vector<int64_t> event(P, -1);  // slice of the current event, -1 if none
  std::vector<int64_t> token(P, mask_id);
  std::vector<int64_t> settled(P, W);  // slice from which the position holds `token`
  std::vector<int64_t> todo;
  todo.reserve(P);
  for (int64_t p = 0; p < P; ++p) {
    if (x0[p] == mask_id) todo.push_back(p);
  }
  std::vector<int64_t> events;
  std::vector<uint8_t> status(P, kRowOk);
  while (!todo.empty()) {
    // A: scan slices until the first unmask decision.
    at::parallel_for(0, static_cast<int64_t>(todo.size()), grain(W), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t p = todo[i], b = p / L, l = p % L;
        const uint32_t k0 = seed_lo(seeds[b]), k1 = seed_hi(seeds[b]);
        event[p] = -1;
        for (int64_t w = start[p]; w < W; ++w) {
          if (!live(w, b)) continue;
          const int64_t j = step(w, b);
          const int32_t k = mean_count(jump_bits(k0, k1, static_cast<uint32_t>(j), static_cast<uint32_t>(l)),
                                       cdf + j * K, K);
          count(w, b, l, k);
          if (unmasks(k, rule)) {
            event[p] = w;
            break;
          }
        }
      }
    });
    events.clear();
    for (int64_t p : todo) {
      if (event[p] >= 0) events.push_back(p);
    }
    // B: one row per event (a missing row is not read).
    at::parallel_for(0, static_cast<int64_t>(events.size()), grain(V), [&](int64_t lo, int64_t hi) {
      std::vector<float> buf(padded_vocab(V));
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t p = events[i], b = p / L, l = p % L, w = event[p];
        const scalar_t* r = row(w, b, l);
        status[p] = r == nullptr ? kRowMissing
                    : load_row(r, stride_v, V, mask_id, inv_t, buf.data()) ? kRowBad
                                                                           : kRowOk;
        if (status[p] == kRowOk) {
          token[p] = draw(buf.data(), b, l, step(w, b));
          settled[p] = w;
        }
      }
    });
    // a bad or missing row leaves the position masked: it resumes scanning at the next slice
    todo.clear();
    for (int64_t p : events) {
      report(event[p], p / L, status[p]);
      if (status[p] != kRowOk) {
        start[p] = event[p] + 1;
        todo.push_back(p);
      }
    }
  }
  // C: states[w, b, l] = x0 before the settling slice, the drawn token from it on.
  at::parallel_for(0, W * B, grain(L), [&](int64_t lo, int64_t hi) {
    for (int64_t wb = lo; wb < hi; ++wb) {
      const int64_t w = wb / B, b = wb % B;
      for (int64_t l = 0; l < L; ++l) {
        const int64_t p = b * L + l;
        states[wb * L + l] = w >= settled[p] ? token[p] : x0[p];
      }
    }
  });
}

template <typename scalar_t>
void Sweep<scalar_t>::score() const {
  const int64_t P = B * L;
  std::vector<int64_t> cur(x0, x0 + P);
  std::vector<int64_t> live;
  live.reserve(P);
  std::vector<int64_t> next(P);
  std::vector<uint8_t> status(P, kRowOk);
  for (int64_t w = 0; w < W; ++w) {
    live.clear();
    for (int64_t p = 0; p < P; ++p) {
      if (cur[p] == mask_id && this->live(w, p / L)) live.push_back(p);
    }
    at::parallel_for(0, static_cast<int64_t>(live.size()), grain(V), [&](int64_t lo, int64_t hi) {
      std::vector<float> buf(padded_vocab(V));
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t p = live[i], b = p / L, l = p % L, j = step(w, b);
        next[p] = mask_id;
        const scalar_t* r = row(w, b, l);
        int32_t k = 0;  // a missing or bad row: count 0, the position stays masked
        if (r == nullptr) {
          status[p] = kRowMissing;
        } else {
          // raw values (the log-sum-exp needs them); the row is judged on the scaled ones: with the raw row
          // not bad, s_v = x_v * inv_t is monotone in x_v, so max_v s_v = m * inv_t shows an overflow to
          // +inf or a row that is all -inf after scaling
          bool bad = load_row(r, stride_v, V, mask_id, 1.0f, buf.data());
          const float m = bad ? -kInf : row_max(buf.data(), V);
          bad = bad || !(m * inv_t < kInf) || !(m * inv_t > -kInf);
          status[p] = bad ? kRowBad : kRowOk;
          if (!bad) {
            if (j == N) {
              k = 1;
            } else {
              const float lambda = rate[j] * std::exp(logsumexp(buf.data(), V, m));
              const uint32_t bits = jump_bits(seed_lo(seeds[b]), seed_hi(seeds[b]), static_cast<uint32_t>(j),
                                              static_cast<uint32_t>(l));
              k = score_count(bits, lambda, rule);
            }
          }
        }
        count(w, b, l, k);
        if (status[p] == kRowOk && unmasks(k, rule)) {
          if (inv_t != 1.0f) {
            for (int64_t v = 0; v < V; ++v) buf[v] = buf[v] * inv_t;
          }
          next[p] = draw(buf.data(), b, l, j);
        }
      }
    });
    for (int64_t p : live) {
      report(w, p / L, status[p]);
      cur[p] = next[p];
    }
    std::copy(cur.begin(), cur.end(), states + w * P);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sweep(const at::Tensor& logits, const at::Tensor& rows,
                                                                const at::Tensor& steps, const at::Tensor& x0,
                                                                const at::Tensor& prev, const at::Tensor& seeds,
                                                                const at::Tensor& cdf, const at::Tensor& rate,
                                                                int64_t mask_id, double temperature, int64_t rule,
                                                                bool score, bool argmax_final, bool with_counts) {
  const SweepSizes z = check_sweep(logits, rows, steps, x0, prev, seeds, cdf, rate, mask_id, temperature, rule);
  const int64_t W = z.W, B = z.B, L = z.L;
  // logits are read in place through their strides (a padded-vocab view costs no copy)
  const at::Tensor rows_c = rows.contiguous(), steps_c = steps.contiguous(), x0_c = x0.contiguous(),
                   prev_c = prev.contiguous(), seeds_c = seeds.contiguous(), cdf_c = cdf.contiguous(),
                   rate_c = rate.contiguous();
  const auto long_opts = x0.options().dtype(at::kLong);
  at::Tensor states = at::empty({W, B, L}, long_opts);
  at::Tensor counts = with_counts ? at::zeros({W, B, L}, long_opts.dtype(at::kInt)) : at::empty({0}, long_opts.dtype(at::kInt));
  at::Tensor invalid = at::zeros({W, B}, long_opts.dtype(at::kInt));
  at::Tensor residual = at::empty({z.P, B}, long_opts.dtype(at::kInt));
  // slice kinds; a bad slice is flagged like a missing row (and nothing reads or writes for it)
  const int64_t* step_ptr = steps_c.const_data_ptr<int64_t>();
  int32_t* inv = invalid.data_ptr<int32_t>();
  std::vector<uint8_t> kind(W * B), missing(W * B, 0);
  for (int64_t i = 0; i < W * B; ++i) {
    const int64_t j = step_ptr[i];
    kind[i] = j < 0 ? kPass : j <= z.N ? kStep : kBad;
    missing[i] = kind[i] == kBad;
  }
  const bool greedy = temperature == 0;
  AT_DISPATCH_V2(logits.scalar_type(), "pit_sampler_native::sweep", AT_WRAP([&] {
    const Sweep<scalar_t> s{logits.const_data_ptr<scalar_t>(),
                            rows_c.const_data_ptr<int64_t>(),
                            step_ptr,
                            x0_c.const_data_ptr<int64_t>(),
                            seeds_c.const_data_ptr<int64_t>(),
                            cdf_c.const_data_ptr<int64_t>(),
                            rate_c.const_data_ptr<float>(),
                            kind.data(),
                            states.data_ptr<int64_t>(),
                            with_counts ? counts.data_ptr<int32_t>() : nullptr,
                            inv,
                            missing.data(),
                            W,
                            B,
                            L,
                            z.V,
                            z.M,
                            z.N,
                            z.K,
                            mask_id,
                            rule,
                            logits.stride(0),
                            logits.stride(1),
                            greedy ? 1.0f : 1.0f / static_cast<float>(temperature),
                            greedy,
                            argmax_final};
    if (score) {
      s.score();
    } else {
      s.mean();
    }
  }), at::kFloat, at::kBFloat16, at::kHalf);
  for (int64_t i = 0; i < W * B; ++i) {
    if (missing[i]) inv[i] = -1;
  }
  // residual[w, b] = #{l : states[w, b, l] != prev[w, b, l]} for the first P slices
  const int64_t* st = states.const_data_ptr<int64_t>();
  const int64_t* pv = prev_c.const_data_ptr<int64_t>();
  int32_t* res = residual.data_ptr<int32_t>();
  at::parallel_for(0, z.P * B, grain(L), [&](int64_t lo, int64_t hi) {
    for (int64_t wb = lo; wb < hi; ++wb) {
      int32_t changed = 0;
      for (int64_t l = 0; l < L; ++l) changed += st[wb * L + l] != pv[wb * L + l];
      res[wb] = changed;
    }
  });
  return {states, counts, residual, invalid};
}

}  // namespace cpu
}  // namespace pit

TORCH_LIBRARY_IMPL(pit_sampler_native, CPU, m) { m.impl("sweep", &pit::cpu::sweep); }
