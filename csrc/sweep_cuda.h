// Launchers of the CUDA C++ kernels (sweep_cuda.cu). Plain pointers and sizes only, so the kernels compile
// with nvcc alone (no torch headers); ops_cuda.cpp binds them to pit_sampler_native on CUDA builds.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace pit {
namespace cuda {

// Element type of the logits.
enum class Dtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// One sweep (semantics: pit_sampler/reference.py, `sweep`). All pointers are device pointers to
// contiguous tensors except logits, read through its element strides (nullptr allowed when M = 0);
// counts (nullptr: not written), residual, invalid and missing must be zero on entry.
struct SweepArgs {
  const void* logits;    // [M, V] of `dtype` (packed rows), elements (stride_m, stride_v) apart
  const int64_t* rows;   // [W, B, L]: the packed row each (slice, sample, position) reads
  const int64_t* steps;  // [W, B]
  const int64_t* x0;     // [B, L]
  const int64_t* prev;   // [P, B, L]
  const int64_t* seeds;  // [B]
  const int64_t* cdf;    // [N + 1, K]
  const float* rate;     // [N + 1]
  int64_t* states;       // [W, B, L]
  int32_t* counts;       // [W, B, L]
  int32_t* residual;     // [P, B]
  int32_t* invalid;      // [W, B]
  int32_t* missing;      // [W, B] scratch: 1 where the slice read a missing row
  int64_t W, B, L, V, M, P, N, K, mask_id, rule;
  int64_t stride_m, stride_v;
  float inv_t;  // float32(1) / float32(temperature) (1 when greedy): scores are logits * inv_t
  bool score, argmax_final, greedy;
  Dtype dtype;
};

cudaError_t launch_sweep(const SweepArgs& args, cudaStream_t stream);

// unmask_table (semantics: pit_sampler/reference.py, `unmask_table`): table[B, L] from x[B, L].
cudaError_t launch_unmask_table(const int64_t* x, const int64_t* seeds, const int64_t* cdf, int64_t* table, int64_t B,
                                int64_t L, int64_t N, int64_t K, int64_t mask_id, int64_t rule, cudaStream_t stream);

}  // namespace cuda
}  // namespace pit
