// CUDA registrations of pit_sampler_native::sweep / ::unmask_table: checks (sweep_checks.h, shared with the
// CPU kernel), outputs, and the launchers of sweep_cuda.cu on the current stream. Compiled only in CUDA
// builds (PIT_SAMPLER_BUILD=cuda, or auto with a GPU target).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "sampling.h"
#include "sweep_checks.h"
#include "sweep_cuda.h"

namespace pit {
namespace cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sweep(const at::Tensor& logits, const at::Tensor& rows,
                                                                const at::Tensor& steps, const at::Tensor& x0,
                                                                const at::Tensor& prev, const at::Tensor& seeds,
                                                                const at::Tensor& cdf, const at::Tensor& rate,
                                                                int64_t mask_id, double temperature, int64_t rule,
                                                                bool score, bool argmax_final, bool with_counts) {
  const SweepSizes z = check_sweep(logits, rows, steps, x0, prev, seeds, cdf, rate, mask_id, temperature, rule);
  TORCH_CHECK(x0.is_cuda(), "x0 must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x0.device());
  const auto opts = x0.options();
  const int64_t W = z.W, B = z.B, L = z.L;
  at::Tensor states = at::empty({W, B, L}, opts);
  at::Tensor counts = with_counts ? at::zeros({W, B, L}, opts.dtype(at::kInt)) : at::empty({0}, opts.dtype(at::kInt));
  at::Tensor residual = at::zeros({z.P, B}, opts.dtype(at::kInt));
  at::Tensor invalid = at::zeros({W, B}, opts.dtype(at::kInt));
  at::Tensor missing = at::zeros({W, B}, opts.dtype(at::kInt));  // scratch: slices that read a missing row
  // logits are read in place through their strides (a padded-vocab view costs no copy)
  const at::Tensor rows_c = rows.contiguous(), steps_c = steps.contiguous(),
                   x0_c = x0.contiguous(), prev_c = prev.contiguous(), seeds_c = seeds.contiguous(),
                   cdf_c = cdf.contiguous(), rate_c = rate.contiguous();
  SweepArgs args{};
  args.logits = logits.const_data_ptr();
  args.rows = rows_c.const_data_ptr<int64_t>();
  args.steps = steps_c.const_data_ptr<int64_t>();
  args.x0 = x0_c.const_data_ptr<int64_t>();
  args.prev = prev_c.const_data_ptr<int64_t>();
  args.seeds = seeds_c.const_data_ptr<int64_t>();
  args.cdf = cdf_c.const_data_ptr<int64_t>();
  args.rate = rate_c.const_data_ptr<float>();
  args.states = states.data_ptr<int64_t>();
  args.counts = with_counts ? counts.data_ptr<int32_t>() : nullptr;
  args.residual = residual.data_ptr<int32_t>();
  args.invalid = invalid.data_ptr<int32_t>();
  args.missing = missing.data_ptr<int32_t>();
  args.W = W;
  args.B = B;
  args.L = L;
  args.V = z.V;
  args.M = z.M;
  args.P = z.P;
  args.N = z.N;
  args.K = z.K;
  args.mask_id = mask_id;
  args.rule = rule;
  args.stride_m = logits.stride(0);
  args.stride_v = logits.stride(1);
  args.greedy = temperature == 0;
  args.inv_t = args.greedy ? 1.0f : 1.0f / static_cast<float>(temperature);
  args.score = score;
  args.argmax_final = argmax_final;
  const auto dtype = logits.scalar_type();
  args.dtype = dtype == at::kFloat ? Dtype::kFloat32 : dtype == at::kBFloat16 ? Dtype::kBFloat16 : Dtype::kFloat16;
  C10_CUDA_CHECK(launch_sweep(args, c10::cuda::getCurrentCUDAStream()));
  return {states, counts, residual, invalid};
}

at::Tensor unmask_table(const at::Tensor& x, const at::Tensor& seeds, const at::Tensor& cdf, int64_t mask_id,
                        int64_t rule) {
  check_index_tensor(x, "x", 2);
  check_index_tensor(seeds, "seeds", 1);
  check_index_tensor(cdf, "cdf", 2);
  TORCH_CHECK(seeds.size(0) == x.size(0), "seeds must be [", x.size(0), "]");
  TORCH_CHECK(cdf.size(0) >= 1 && cdf.size(1) >= 1, "cdf must be [N + 1, K] with K >= 1");
  TORCH_CHECK(rule >= 0 && rule <= kRuleTweedie, "rule must be 0 (reject), 1 (first) or 2 (tweedie), got ", rule);
  TORCH_CHECK(seeds.device() == x.device() && cdf.device() == x.device(), "seeds and cdf must be on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor x_c = x.contiguous(), seeds_c = seeds.contiguous(), cdf_c = cdf.contiguous();
  at::Tensor table = at::empty(x.sizes(), x.options());
  C10_CUDA_CHECK(launch_unmask_table(x_c.const_data_ptr<int64_t>(), seeds_c.const_data_ptr<int64_t>(),
                                     cdf_c.const_data_ptr<int64_t>(), table.data_ptr<int64_t>(), x.size(0), x.size(1),
                                     cdf.size(0) - 1, cdf.size(1), mask_id, rule, c10::cuda::getCurrentCUDAStream()));
  return table;
}

}  // namespace
}  // namespace cuda
}  // namespace pit

TORCH_LIBRARY_IMPL(pit_sampler_native, CUDA, m) {
  m.impl("sweep", &pit::cuda::sweep);
  m.impl("unmask_table", &pit::cuda::unmask_table);
}
