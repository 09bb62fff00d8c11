// CPU kernel of pit_sampler_native::maskgit_sweep (semantics: pit_sampler/maskgit_reference.py).
//
// One Picard sweep of the k-per-step (MaskGIT / LLaDA) sampler over W slices:
//   A. per candidate (slice w, sample b, position l masked in x0 and inside the slice's block), in
//      parallel: one logits row, converted to float32 once; pass 1 finds validity (NaN, +inf, all -inf),
//      the top two logits and the Gumbel-max token (greedy argmax at temperature 0); pass 2 the
//      fixed-point sums S (and T for the entropy order) that give the score, then the int64 key
//      s31 << 32 | (2^32 - 1 - l) (invalid rows: -2).
//   B. per sample, in parallel: the slices in order; slice w selects the kcount[w, b] largest keys among
//      the candidates still masked in the running state (keys are unique, so nth_element decides), then
//      writes states[w] and the residual against prev.
// Every float operation of the scores repeats the reference's, in its order, with IEEE-exact operations
// only (built with -ffp-contract=off: no fused multiply-add), so keys are identical on every backend.
// The token draw uses the Gumbel transform of philox.h (logf, as the tau-leaping kernels).
// Index values (the reference's contract): any negative step passes through; a live slice whose row lies
// outside [0, R) reads nothing, has no candidate and reports invalid = -1; kcount is clamped to
// [0, eligible]; tokens, blocks and seeds are only compared or hashed, never used as an index; the step
// enters Philox as its low 32 bits. No value of an index tensor reads or writes out of bounds.
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
#include <cstring>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

#include "philox.h"
#include "sweep_checks.h"

namespace pit {
namespace maskgit {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int64_t kNotCandidate = -1, kInvalidRow = -2;
constexpr int64_t kConfidence = 0, kMargin = 1, kEntropy = 2, kRandom = 3;
constexpr uint32_t kStreamOrder = 3;
constexpr int kFixedBits = 30;
constexpr float kLog2e = 1.4426950216293335f;
// float32(ln2^k / k!), k = 0..8
constexpr float kExp2[9] = {1.0f, 0.6931471824645996f, 0.24022650718688965f, 0.05550410971045494f,
                            0.009618128649890423f, 0.0013333557872101665f, 0.0001540352968731895f,
                            1.5252733646775596e-05f, 1.3215486660556053e-06f};
// float32(1 / k), k = 13, 11, ..., 3
constexpr float kAtanh[6] = {0.07692307978868484f, 0.09090909361839294f, 0.1111111119389534f,
                             0.1428571492433548f, 0.20000000298023224f, 0.3333333432674408f};

float bits_to_float(int32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

int32_t float_to_bits(float f) {
  int32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

// q(x) = trunc(P(f) 2^(30 + n)), n = floor(x), f = x - n; 0 below -30 (and for -inf / NaN).
int64_t fixed_exp2(float x) {
  if (!(x >= -static_cast<float>(kFixedBits))) return 0;
  const float n = std::floor(x);
  const float f = x - n;
  float p = kExp2[8];
  for (int k = 7; k >= 0; --k) p = p * f + kExp2[k];
  return static_cast<int64_t>(p * bits_to_float((static_cast<int32_t>(n) + kFixedBits + 127) << 23));
}

// lg2(y) of a positive normal float32 by its exponent and the atanh series of its mantissa.
float log2_f32(float y) {
  const int32_t bits = float_to_bits(y);
  const float e = static_cast<float>((bits >> 23) - 127);
  const float mant = bits_to_float((bits & 0x7FFFFF) | 0x3F800000);
  const float s = (mant - 1.0f) / (mant + 1.0f);
  const float s2 = s * s;
  float t = kAtanh[0];
  for (int k = 1; k < 6; ++k) t = t * s2 + kAtanh[k];
  t = t * s2 + 1.0f;
  return e + ((s + s) * t) * kLog2e;
}

struct Candidate {
  int64_t token;
  int64_t key;
};

// Token and key of one float32 row y[0, V) (y[mask_id] already -inf).
Candidate row_candidate(const float* y, int64_t V, int64_t mask_id, uint32_t k0, uint32_t k1, uint32_t j,
                        uint32_t l, float temperature, int64_t order) {
  // pass 1: validity, the two largest logits, the token
  bool nan_or_inf = false;
  float top1 = -kInf, top2 = -kInf;
  int64_t greedy = 0;
  for (int64_t v = 0; v < V; ++v) {
    const float s = y[v];
    nan_or_inf |= std::isnan(s) || s == kInf;
    if (s > top1) {
      top2 = top1;
      top1 = s;
      greedy = v;
    } else if (s > top2) {
      top2 = s;
    }
  }
  if (nan_or_inf || top1 == -kInf) return {mask_id, kInvalidRow};
  int64_t token = greedy;
  if (temperature != 0.0) {
    const float inv_t = 1.0f / static_cast<float>(temperature);
    float best = -kInf;
    for (int64_t v0 = 0; v0 < V; v0 += 4) {
      const Philox4 words = philox4x32(static_cast<uint32_t>(v0 >> 2), l, j, kStreamGumbel, k0, k1);
      for (int64_t v = v0; v < std::min(V, v0 + 4); ++v) {
        const float s = y[v] * inv_t;
        if (!(s + kGumbelMax > best)) continue;  // cannot win: skip the logs
        const float g = s + gumbel_from_bits(words.c[v - v0]);
        if (g > best) {
          best = g;
          token = v;
        }
      }
    }
  }
  const int64_t tail = static_cast<int64_t>(0xFFFFFFFFu - l);
  if (order == kRandom) {
    const uint32_t r = philox4x32(0u, l, j, kStreamOrder, k0, k1).c[0];
    return {token, (static_cast<int64_t>(r >> 1) << 32) | tail};
  }
  // pass 2: fixed-point sums
  int64_t S = 0, T = 0, q_tok = 0;
  for (int64_t v = 0; v < V; ++v) {
    const float x = (y[v] - top1) * kLog2e;
    const int64_t q = fixed_exp2(x);
    S += q;
    if (v == token) q_tok = q;
    if (order == kEntropy && q > 0) T += (q >> 10) * static_cast<int64_t>(std::floor(-x * 256.0f));
  }
  const float sf = static_cast<float>(S);
  int32_t s31;
  if (order == kConfidence) {
    s31 = float_to_bits(static_cast<float>(q_tok) / sf);
  } else if (order == kMargin) {
    const int64_t q2 = fixed_exp2((top2 - top1) * kLog2e);
    s31 = float_to_bits(static_cast<float>((int64_t{1} << kFixedBits) - q2) / sf);
  } else {
    float h = (static_cast<float>(T) * 4.0f) / sf + (log2_f32(sf) - static_cast<float>(kFixedBits));
    if (h < 0.0f) h = 0.0f;
    s31 = 0x7FFFFFFF - float_to_bits(h);
  }
  return {token, (static_cast<int64_t>(s31) << 32) | tail};
}

int64_t grain(int64_t cost) { return std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, cost)); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> maskgit_sweep(
    const at::Tensor& logits, const at::Tensor& rows, const at::Tensor& steps, const at::Tensor& x0,
    const at::Tensor& prev, const at::Tensor& seeds, const at::Tensor& kcount, const at::Tensor& slice_block,
    const at::Tensor& pos_block, int64_t mask_id, double temperature, int64_t order) {
  // shapes, dtypes, devices and scalars (the Python op checks them first; these guard direct calls of
  // torch.ops.pit_sampler_native.maskgit_sweep): every index below stays inside these shapes
  check_logits(logits, 3, "[R, L, V]");
  const std::pair<const at::Tensor*, const char*> per_slice[] = {
      {&steps, "steps"}, {&rows, "rows"}, {&kcount, "kcount"}, {&slice_block, "slice_block"}};
  for (const auto& [t, name] : per_slice) check_index_tensor(*t, name, 2);
  check_index_tensor(x0, "x0", 2);
  check_index_tensor(pos_block, "pos_block", 2);
  check_index_tensor(prev, "prev", 3);
  check_index_tensor(seeds, "seeds", 1);
  const int64_t R = logits.size(0), L = x0.size(1), V = logits.size(2), W = steps.size(0), B = steps.size(1);
  TORCH_CHECK(logits.size(1) == L && x0.size(0) == B, "logits must be [R, ", L, ", V] and x0 [", B, ", L], got ",
              logits.sizes(), " and ", x0.sizes());
  for (const at::Tensor* t : {&rows, &kcount, &slice_block})
    TORCH_CHECK(t->size(0) == W && t->size(1) == B, "rows, kcount and slice_block must be [", W, ", ", B, "], got ",
                t->sizes());
  TORCH_CHECK(prev.size(0) == W && prev.size(1) == B && prev.size(2) == L, "prev must be [", W, ", ", B, ", ", L,
              "], got ", prev.sizes());
  TORCH_CHECK(seeds.size(0) == B, "seeds must be [", B, "], got ", seeds.sizes());
  TORCH_CHECK(pos_block.size(0) == B && pos_block.size(1) == L, "pos_block must be [", B, ", ", L, "], got ",
              pos_block.sizes());
  TORCH_CHECK(mask_id >= 0 && mask_id < V, "mask_id = ", mask_id, " is out of range for V = ", V);
  TORCH_CHECK(order >= kConfidence && order <= kRandom, "order must be 0..3, got ", order);
  TORCH_CHECK(temperature >= 0, "temperature must be >= 0, got ", temperature);
  TORCH_CHECK(L <= std::numeric_limits<uint32_t>::max(), "L must fit the 32-bit Philox counter, got ", L);
  for (const at::Tensor* t : {&logits, &rows, &steps, &x0, &prev, &seeds, &kcount, &slice_block, &pos_block})
    TORCH_CHECK(t->device().is_cpu(), "maskgit_sweep (CPU kernel): every tensor must be on the CPU");
  const at::Tensor rows_c = rows.contiguous(), steps_c = steps.contiguous(), x0_c = x0.contiguous(),
                   prev_c = prev.contiguous(), seeds_c = seeds.contiguous(), k_c = kcount.contiguous(),
                   sb_c = slice_block.contiguous(), pb_c = pos_block.contiguous();
  const int64_t *rw = rows_c.const_data_ptr<int64_t>(), *st = steps_c.const_data_ptr<int64_t>(),
                *xs = x0_c.const_data_ptr<int64_t>(), *pv = prev_c.const_data_ptr<int64_t>(),
                *sd = seeds_c.const_data_ptr<int64_t>(), *kc = k_c.const_data_ptr<int64_t>(),
                *sb = sb_c.const_data_ptr<int64_t>(), *pb = pb_c.const_data_ptr<int64_t>();

  // the candidates (w, b, l), in (w, b, l) order; live slices with a missing row have none
  std::vector<int64_t> cand;
  std::vector<char> missing(W * B, 0);
  for (int64_t w = 0; w < W; ++w)
    for (int64_t b = 0; b < B; ++b) {
      if (st[w * B + b] < 0) continue;
      if (rw[w * B + b] < 0 || rw[w * B + b] >= R) {
        missing[w * B + b] = 1;
        continue;
      }
      for (int64_t l = 0; l < L; ++l)
        if (xs[b * L + l] == mask_id && pb[b * L + l] == sb[w * B + b]) cand.push_back((w * B + b) * L + l);
    }
  std::vector<Candidate> out(W * B * L, Candidate{mask_id, kNotCandidate});
  const int64_t n = static_cast<int64_t>(cand.size());
  AT_DISPATCH_V2(logits.scalar_type(), "maskgit_sweep", AT_WRAP([&] {
    const scalar_t* lg = logits.const_data_ptr<scalar_t>();
    const int64_t s0 = logits.stride(0), s1 = logits.stride(1), s2 = logits.stride(2);
    at::parallel_for(0, n, grain(V), [&](int64_t lo, int64_t hi) {
      std::vector<float> y(V);
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t c = cand[i], l = c % L, wb = c / L, b = wb % B;
        const scalar_t* row = lg + rw[wb] * s0 + l * s1;
        for (int64_t v = 0; v < V; ++v) y[v] = static_cast<float>(row[v * s2]);
        y[mask_id] = -kInf;
        out[c] = row_candidate(y.data(), V, mask_id, seed_lo(sd[b]), seed_hi(sd[b]),
                               static_cast<uint32_t>(st[wb]), static_cast<uint32_t>(l), static_cast<float>(temperature),
                               order);
      }
    });
  }), at::kFloat, at::kBFloat16, at::kHalf);

  at::Tensor states = at::empty({W, B, L}, x0.options());
  at::Tensor residual = at::zeros({W, B}, x0.options().dtype(at::kInt));
  at::Tensor invalid = at::zeros({W, B}, x0.options().dtype(at::kInt));
  int64_t* so = states.data_ptr<int64_t>();
  int32_t *ro = residual.data_ptr<int32_t>(), *io = invalid.data_ptr<int32_t>();
  at::parallel_for(0, B, grain(W * L), [&](int64_t lo, int64_t hi) {
    std::vector<int64_t> cur(L);
    std::vector<std::pair<int64_t, int64_t>> eligible;  // (key, l)
    for (int64_t b = lo; b < hi; ++b) {
      std::copy(xs + b * L, xs + (b + 1) * L, cur.begin());
      for (int64_t w = 0; w < W; ++w) {
        const int64_t wb = w * B + b;
        eligible.clear();
        int32_t bad = 0;
        for (int64_t l = 0; l < L; ++l) {
          if (cur[l] != mask_id) continue;
          const Candidate& c = out[wb * L + l];
          bad += c.key == kInvalidRow;
          if (c.key >= 0) eligible.emplace_back(c.key, l);
        }
        const int64_t k = std::min<int64_t>(std::max<int64_t>(kc[wb], 0), static_cast<int64_t>(eligible.size()));
        std::nth_element(eligible.begin(), eligible.begin() + k, eligible.end(), std::greater<>());
        for (int64_t i = 0; i < k; ++i) cur[eligible[i].second] = out[wb * L + eligible[i].second].token;
        int32_t changed = 0;
        for (int64_t l = 0; l < L; ++l) {
          so[wb * L + l] = cur[l];
          changed += cur[l] != pv[wb * L + l];
        }
        ro[wb] = changed;
        io[wb] = missing[wb] ? -1 : bad;
      }
    }
  });
  return {states, residual, invalid};
}

}  // namespace maskgit
}  // namespace pit

TORCH_LIBRARY_FRAGMENT(pit_sampler_native, m) {
  m.def(
      "maskgit_sweep(Tensor logits, Tensor rows, Tensor steps, Tensor x0, Tensor prev, Tensor seeds, Tensor kcount, "
      "Tensor slice_block, Tensor pos_block, SymInt mask_id, float temperature, SymInt order) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pit_sampler_native, CPU, m) { m.impl("maskgit_sweep", &pit::maskgit::maskgit_sweep); }
