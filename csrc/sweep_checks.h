// Argument checks of pit_sampler_native::sweep, shared by the CPU kernel (sweep_cpu.cpp) and the CUDA
// binding (ops_cuda.cpp). The Python op (pit_sampler/ops.py, _check_sweep) checks the same things first
// with ValueError/TypeError; these guard direct calls of torch.ops.pit_sampler_native.sweep. Every message
// names the argument. Only shapes, dtypes, devices and scalars: index values (steps, rows) are the
// kernels' business (flagged in `invalid`, never read out of bounds).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

#include "sampling.h"

namespace pit {

// The sizes of a checked sweep: W slices, B samples, L positions, V tokens, M packed logits rows, P
// slices with a previous iterate, N + 1 steps in cdf/rate, K thresholds per step.
struct SweepSizes {
  int64_t W, B, L, V, M, P, N, K;
};

inline void check_index_tensor(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.scalar_type() == at::kLong && t.dim() == dim, name, " must be an int64 tensor with ", dim,
              " dimensions, got ", t.scalar_type(), " ", t.sizes());
}

// logits: float32, bfloat16 or float16 with `dim` dimensions (`shape`, e.g. "[M, V]", for the message)
inline void check_logits(const at::Tensor& logits, int64_t dim, const char* shape) {
  const auto dtype = logits.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "logits must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(logits.dim() == dim, "logits must be ", shape, ", got ", logits.sizes());
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& x0) {
  TORCH_CHECK(t.device() == x0.device(), name, " is on ", t.device(), " but x0 is on ", x0.device());
}

inline SweepSizes check_sweep(const at::Tensor& logits, const at::Tensor& rows, const at::Tensor& steps,
                              const at::Tensor& x0, const at::Tensor& prev, const at::Tensor& seeds,
                              const at::Tensor& cdf, const at::Tensor& rate, int64_t mask_id, double temperature,
                              int64_t rule) {
  check_logits(logits, 2, "[M, V] (packed rows)");
  check_index_tensor(x0, "x0", 2);
  check_index_tensor(steps, "steps", 2);
  check_index_tensor(rows, "rows", 3);
  check_index_tensor(prev, "prev", 3);
  check_index_tensor(seeds, "seeds", 1);
  check_index_tensor(cdf, "cdf", 2);
  const SweepSizes s{steps.size(0), x0.size(0), x0.size(1), logits.size(1), logits.size(0), prev.size(0),
                     cdf.size(0) - 1, cdf.size(1)};
  TORCH_CHECK(steps.size(1) == s.B, "steps must be [W, ", s.B, "], got ", steps.sizes());
  TORCH_CHECK(rows.size(0) == s.W && rows.size(1) == s.B && rows.size(2) == s.L, "rows must be [", s.W, ", ", s.B,
              ", ", s.L, "], got ", rows.sizes());
  TORCH_CHECK(s.P <= s.W && prev.size(1) == s.B && prev.size(2) == s.L, "prev must be [P, ", s.B, ", ", s.L,
              "] with P <= ", s.W, ", got ", prev.sizes());
  TORCH_CHECK(seeds.size(0) == s.B, "seeds must be [", s.B, "], got ", seeds.sizes());
  TORCH_CHECK(cdf.size(0) >= 1 && cdf.size(1) >= 1, "cdf must be [N + 1, K] with K >= 1, got ", cdf.sizes());
  TORCH_CHECK(rate.scalar_type() == at::kFloat && rate.dim() == 1 && rate.size(0) == cdf.size(0),
              "rate must be float32 [", cdf.size(0), "], got ", rate.scalar_type(), " ", rate.sizes());
  TORCH_CHECK(mask_id >= 0 && mask_id < s.V, "mask_id = ", mask_id, " is out of range for V = ", s.V);
  TORCH_CHECK(rule >= 0 && rule <= kRuleTweedie, "rule must be 0 (reject), 1 (first) or 2 (tweedie), got ", rule);
  TORCH_CHECK(temperature >= 0, "temperature must be >= 0, got ", temperature);
  TORCH_CHECK(s.L <= std::numeric_limits<uint32_t>::max(), "L must fit the 32-bit Philox counter, got ", s.L);
  check_same_device(logits, "logits", x0);
  check_same_device(rows, "rows", x0);
  check_same_device(steps, "steps", x0);
  check_same_device(prev, "prev", x0);
  check_same_device(seeds, "seeds", x0);
  check_same_device(cdf, "cdf", x0);
  check_same_device(rate, "rate", x0);
  return s;
}

}  // namespace pit
