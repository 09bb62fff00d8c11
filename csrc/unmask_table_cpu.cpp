// CPU kernel of pit_sampler_native::unmask_table (semantics: pit_sampler/reference.py, `unmask_table`):
// for each position masked in x, the first step j in 0..N-1 whose jump count K (from the jump noise
// and the integer thresholds cdf[j]) passes the rule, N if none does, and -1 for unmasked positions.
// Positions are independent: parallel over them, each scanning steps until its first unmask.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "philox.h"
#include "sampling.h"

namespace pit {
namespace cpu {

at::Tensor unmask_table(const at::Tensor& x, const at::Tensor& seeds, const at::Tensor& cdf, int64_t mask_id,
                        int64_t rule) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kLong, "x must be int64 [B, L], got ", x.scalar_type(), " ",
              x.sizes());
  const int64_t B = x.size(0), L = x.size(1);
  TORCH_CHECK(seeds.scalar_type() == at::kLong && seeds.dim() == 1 && seeds.size(0) == B, "seeds must be int64 [", B,
              "]");
  TORCH_CHECK(cdf.scalar_type() == at::kLong && cdf.dim() == 2 && cdf.size(0) >= 1 && cdf.size(1) >= 1,
              "cdf must be int64 [N + 1, K]");
  TORCH_CHECK(rule >= 0 && rule <= kRuleTweedie, "rule must be 0 (reject), 1 (first) or 2 (tweedie), got ", rule);
  TORCH_CHECK(L <= std::numeric_limits<uint32_t>::max(), "L must fit the 32-bit Philox counter");
  const int64_t N = cdf.size(0) - 1, K = cdf.size(1);
  const at::Tensor x_c = x.contiguous(), seeds_c = seeds.contiguous(), cdf_c = cdf.contiguous();
  at::Tensor table = at::empty({B, L}, x.options());
  const int64_t* xs = x_c.const_data_ptr<int64_t>();
  const int64_t* sd = seeds_c.const_data_ptr<int64_t>();
  const int64_t* thresholds = cdf_c.const_data_ptr<int64_t>();
  int64_t* out = table.data_ptr<int64_t>();
  // a position costs up to N Philox calls; small tables run inline, without a parallel region
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, N));
  at::parallel_for(0, B * L, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; ++p) {
      if (xs[p] != mask_id) {
        out[p] = -1;
        continue;
      }
      const int64_t b = p / L;
      const uint32_t k0 = seed_lo(sd[b]), k1 = seed_hi(sd[b]), l = static_cast<uint32_t>(p % L);
      int64_t j = 0;
      while (j < N && !unmasks(mean_count(jump_bits(k0, k1, static_cast<uint32_t>(j), l), thresholds + j * K, K), rule))
        ++j;
      out[p] = j;
    }
  });
  return table;
}

}  // namespace cpu
}  // namespace pit

TORCH_LIBRARY_IMPL(pit_sampler_native, CPU, m) { m.impl("unmask_table", &pit::cpu::unmask_table); }
