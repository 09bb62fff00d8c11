// CUDA C++ kernels of pit_sampler_native::sweep and ::unmask_table (semantics: pit_sampler/reference.py).
// Needs only the CUDA toolkit (no torch headers): ops_cuda.cpp binds the launchers on CUDA builds.
//
// sweep: one block of 256 threads per position (b, l). The block walks the W slices in order (the
// absorbing scan); block-uniform control flow, so every block-wide reduction is reached by all threads.
// Logits are packed rows [M, V]: position l of slice w reads row rows[w, b, l] (int64 [W, B, L]), read
// only where the contract reads it (mean: at an unmask; score: at every live masked slice). At a slice
// where the masked position unmasks, the block reads that row once with 16-byte loads (4 fp32 or 8
// bf16/fp16 tokens per thread and step; rows that are not 16-byte aligned, as with odd V, or whose vocab
// stride is not 1, fall back to scalar loads through the stride) and draws
// argmax_{v != mask} x_v * (1/T) + G(seed, j, l, v) (T = 0: greedy, the plain argmax of x_v) as a running
// (max, argmax) per thread, then a block reduction (first index on ties). Philox runs per 4 tokens in
// the loop; the exact shortcuts of the CPU kernel skip tokens that cannot beat the thread's best
// (s + 23 <= best: no Philox; s + gumbel_upper_bound(bits) <= best: no logs). The row check (NaN/+inf,
// or only -inf, among the scaled values of non-mask tokens) is fused into the same pass; a bad row leaves
// the position masked and counts in `invalid`. Score parametrization: each live masked slice reads its
// row for the log-sum-exp (max pass, then sum of exp; lambda clamped to FLT_MAX in score_count), then
// draws as above when the position unmasks.
// Residual (first P slices) and invalid counts are accumulated with one atomic per changed position / bad
// row; counts are stored only when the caller wants them (non-null pointer).
// Slices: steps < 0 passes through; steps > N is a bad slice: it passes through too and reads nothing. A
// read whose row index lies outside [0, M) is a missing row: nothing is read (the address is never
// formed), the position stays masked (score: count 0) and the slice is flagged in `missing` (stores of
// the same value 1 from any block: no race with the atomic counts in `invalid`). A second kernel, ordered
// after the sweep on the stream, writes invalid = -1 for flagged and bad slices. So no index is ever out of
// bounds, with no host sync.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "philox.h"
#include "sampling.h"
#include "sweep_cuda.h"

namespace pit {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr long long kNoIndex = 0x7FFFFFFFFFFFFFFFLL;

template <typename T>
struct Elem;
template <>
struct Elem<float> {
  static constexpr int kPerLoad = 4;  // tokens per 16-byte load
  __device__ static float to_float(float x) { return x; }
};
template <>
struct Elem<__nv_bfloat16> {
  static constexpr int kPerLoad = 8;
  __device__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
};
template <>
struct Elem<__half> {
  static constexpr int kPerLoad = 8;
  __device__ static float to_float(__half x) { return __half2float(x); }
};

// A (value, index) candidate of the argmax; ties go to the smaller index.
struct Best {
  float value;
  long long index;
};

__device__ __forceinline__ bool better(float value, long long index, const Best& b) {
  return value > b.value || (value == b.value && index < b.index);
}

__device__ Best warp_best(Best b) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float value = __shfl_down_sync(0xFFFFFFFFu, b.value, offset);
    const long long index = __shfl_down_sync(0xFFFFFFFFu, b.index, offset);
    if (better(value, index, b)) b = Best{value, index};
  }
  return b;
}

// Block-wide argmax; every thread gets the result.
__device__ Best block_best(Best b, Best* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  b = warp_best(b);
  if (lane == 0) shared[warp] = b;
  __syncthreads();
  if (warp == 0) {
    b = lane < kWarps ? shared[lane] : Best{-INFINITY, kNoIndex};
    b = warp_best(b);
    if (lane == 0) shared[0] = b;
  }
  __syncthreads();
  const Best result = shared[0];
  __syncthreads();
  return result;
}

// Block-wide max (is_max) or sum of x; every thread gets the result.
__device__ float block_reduce(float x, bool is_max, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float y = __shfl_down_sync(0xFFFFFFFFu, x, offset);
    x = is_max ? fmaxf(x, y) : x + y;
  }
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  if (warp == 0) {
    x = lane < kWarps ? shared[lane] : (is_max ? -INFINITY : 0.0f);
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float y = __shfl_down_sync(0xFFFFFFFFu, x, offset);
      x = is_max ? fmaxf(x, y) : x + y;
    }
    if (lane == 0) shared[0] = x;
  }
  __syncthreads();
  const float result = shared[0];
  __syncthreads();
  return result;
}

// Tokens [v0, v0 + kPerLoad) of a row (elements `stride` apart) as float32: one 16-byte load when the row
// is contiguous and aligned and the group is whole, else scalar loads (entries past V are left at 0 and
// never used).
template <typename T>
__device__ __forceinline__ void load_group(const T* __restrict__ row, long long stride, long long v0, long long V,
                                           bool vector_ok, float (&x)[Elem<T>::kPerLoad]) {
  constexpr int n = Elem<T>::kPerLoad;
  if (vector_ok && v0 + n <= V) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(row + v0));
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int k = 0; k < n; ++k) x[k] = Elem<T>::to_float(e[k]);
  } else {
#pragma unroll
    for (int k = 0; k < n; ++k) x[k] = v0 + k < V ? Elem<T>::to_float(row[(v0 + k) * stride]) : 0.0f;
  }
}

struct Shared {
  Best best[kWarps];
  float value[kWarps];
};

// Block-wide pass over a row: whether it is bad (on the scores, NaN/+inf or none above -inf), and its
// token (Gumbel-max when `noise`, else argmax) of the scores x * inv_t (inv_t = float32(1) /
// float32(temperature), the contract's float32 multiply; 1 when greedy).
struct Draw {
  bool bad;
  long long token;
};

template <typename T>
__device__ Draw draw_row(const T* __restrict__ row, long long stride, long long V, long long mask_id, float inv_t,
                         bool noise, uint32_t k0, uint32_t k1, uint32_t l, uint32_t j, Shared& shared) {
  constexpr int n = Elem<T>::kPerLoad;
  const bool vector_ok = stride == 1 && reinterpret_cast<uintptr_t>(row) % 16 == 0;
  const long long groups = (V + n - 1) / n;
  bool nonfinite_hi = false, above_neg_inf = false;
  Best best{-INFINITY, kNoIndex};
  for (long long g = threadIdx.x; g < groups; g += kThreads) {
    const long long v0 = g * n;
    float x[n], s[n];
    load_group<T>(row, stride, v0, V, vector_ok, x);
    bool reachable = false;
#pragma unroll
    for (int k = 0; k < n; ++k) {
      const long long v = v0 + k;
      if (v < V && v != mask_id) {
        s[k] = inv_t == 1.0f ? x[k] : x[k] * inv_t;
        nonfinite_hi |= !(s[k] < INFINITY);
        above_neg_inf |= s[k] > -INFINITY;
      } else {
        s[k] = -INFINITY;
      }
      reachable |= s[k] + kGumbelMax > best.value;
    }
    if (!noise) {
#pragma unroll
      for (int k = 0; k < n; ++k) {
        if (s[k] > best.value) best = Best{s[k], v0 + k};
      }
      continue;
    }
    if (!reachable) continue;
#pragma unroll
    for (int q = 0; q < n / 4; ++q) {
      const Philox4 r = philox4x32(static_cast<uint32_t>((v0 >> 2) + q), l, j, kStreamGumbel, k0, k1);
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const int k = 4 * q + w;
        if (s[k] + gumbel_upper_bound(r.c[w]) > best.value) {
          const float value = s[k] + gumbel_from_bits(r.c[w]);
          if (value > best.value) best = Best{value, v0 + k};
        }
      }
    }
  }
  const bool bad = __syncthreads_or(nonfinite_hi) || !__syncthreads_or(above_neg_inf);
  best = block_best(best, shared.best);
  return Draw{bad, best.index == kNoIndex ? 0 : best.index};
}

// Calls f(x_v) for this thread's share of the tokens v != mask of a row (raw values, loaded in groups).
template <typename T, typename F>
__device__ void for_each_token(const T* __restrict__ row, long long stride, long long V, long long mask_id, F&& f) {
  constexpr int n = Elem<T>::kPerLoad;
  const bool vector_ok = stride == 1 && reinterpret_cast<uintptr_t>(row) % 16 == 0;
  const long long groups = (V + n - 1) / n;
  for (long long g = threadIdx.x; g < groups; g += kThreads) {
    float x[n];
    load_group<T>(row, stride, g * n, V, vector_ok, x);
#pragma unroll
    for (int k = 0; k < n; ++k) {
      const long long v = g * n + k;
      if (v < V && v != mask_id) f(x[k]);
    }
  }
}

// Block-wide row check (on the scaled values x * inv_t) and lambda = rate * sum_{v != mask} exp(x_v) (via
// the log-sum-exp of the raw values) of a score row.
template <typename T>
__device__ bool score_lambda(const T* __restrict__ row, long long stride, long long V, long long mask_id,
                             float inv_t, float rate, Shared& shared, float& lambda) {
  bool nonfinite_hi = false, above_neg_inf = false;
  float m = -INFINITY;
  for_each_token(row, stride, V, mask_id, [&](float x) {
    const float s = inv_t == 1.0f ? x : x * inv_t;
    nonfinite_hi |= !(s < INFINITY);
    above_neg_inf |= s > -INFINITY;
    m = fmaxf(m, x);
  });
  const bool bad = __syncthreads_or(nonfinite_hi) || !__syncthreads_or(above_neg_inf);
  if (bad) return true;
  m = block_reduce(m, true, shared.value);
  float sum = 0.0f;
  for_each_token(row, stride, V, mask_id, [&](float x) { sum += expf(x - m); });
  sum = block_reduce(sum, false, shared.value);
  lambda = rate * expf(logf(sum) + m);
  return false;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sweep_kernel(SweepArgs a) {
  __shared__ Shared shared;
  const long long p = blockIdx.x, b = p / a.L, l = p % a.L;
  const uint32_t k0 = seed_lo(a.seeds[b]), k1 = seed_hi(a.seeds[b]);
  const T* logits = static_cast<const T*>(a.logits);
  long long state = a.x0[p];
  for (long long w = 0; w < a.W; ++w) {
    const long long wb = w * a.B + b;
    const long long o = wb * a.L + l;
    const long long j = a.steps[wb];
    const bool live = j >= 0 && j <= a.N;  // j > N: a bad slice, passes through (flagged by finish_invalid)
    int32_t k = 0;
    if (live && state == a.mask_id) {
      // the row this read uses; its address is formed only once it is known to lie in [0, M)
      const long long r = a.rows[o];
      const bool have = r >= 0 && r < a.M;
      const T* row = have ? logits + r * a.stride_m : nullptr;
      const uint32_t jj = static_cast<uint32_t>(j), ll = static_cast<uint32_t>(l);
      bool bad = false, draw = false;
      if (a.score) {
        float lambda = 0.0f;
        if (have) bad = score_lambda<T>(row, a.stride_v, a.V, a.mask_id, a.inv_t, a.rate[j], shared, lambda);
        if (have && !bad) k = j == a.N ? 1 : score_count(jump_bits(k0, k1, jj, ll), lambda, a.rule);
        draw = have && !bad && unmasks(k, a.rule);
      } else {
        k = mean_count(jump_bits(k0, k1, jj, ll), a.cdf + j * a.K, a.K);
        draw = have && unmasks(k, a.rule);
      }
      if (draw) {
        const bool noise = !(a.greedy || (a.argmax_final && j == a.N));
        const Draw d = draw_row<T>(row, a.stride_v, a.V, a.mask_id, a.inv_t, noise, k0, k1, ll, jj, shared);
        bad = d.bad;
        if (!bad) state = d.token;
      }
      const bool read = a.score || unmasks(k, a.rule);  // whether the contract reads this row
      if (threadIdx.x == 0) {
        if (read && !have) a.missing[wb] = 1;  // a missing row (the same value from every block)
        if (bad) atomicAdd(&a.invalid[wb], 1);
      }
    }
    if (threadIdx.x == 0) {
      a.states[o] = state;
      if (a.counts != nullptr) a.counts[o] = k;
      if (w < a.P && state != a.prev[o]) atomicAdd(&a.residual[wb], 1);
    }
  }
}

// invalid[i] = -1 where slice-sample i is a bad slice (steps > N) or read a missing row, after every count
// landed (also when B * L = 0 and the sweep kernel did not run).
__global__ void finish_invalid_kernel(const int64_t* steps, const int32_t* missing, int32_t* invalid, long long N,
                                      long long n) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n && (steps[i] > N || missing[i] != 0)) invalid[i] = -1;
}

__global__ void unmask_table_kernel(const int64_t* x, const int64_t* seeds, const int64_t* cdf, int64_t* table,
                                    long long B, long long L, long long N, long long K, long long mask_id,
                                    long long rule) {
  const long long p = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= B * L) return;
  if (x[p] != mask_id) {
    table[p] = -1;
    return;
  }
  const long long b = p / L;
  const uint32_t k0 = seed_lo(seeds[b]), k1 = seed_hi(seeds[b]), l = static_cast<uint32_t>(p % L);
  long long j = 0;
  while (j < N && !unmasks(mean_count(jump_bits(k0, k1, static_cast<uint32_t>(j), l), cdf + j * K, K), rule)) ++j;
  table[p] = j;
}

}  // namespace

cudaError_t launch_sweep(const SweepArgs& args, cudaStream_t stream) {
  const long long n = args.W * args.B;
  if (n == 0) return cudaSuccess;
  const long long blocks = args.B * args.L;
  const long long finish_blocks = (n + kThreads - 1) / kThreads;
  if (blocks > 0x7FFFFFFFLL || finish_blocks > 0x7FFFFFFFLL) return cudaErrorInvalidConfiguration;
  if (blocks > 0) {
    switch (args.dtype) {
      case Dtype::kFloat32:
        sweep_kernel<float><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(args);
        break;
      case Dtype::kBFloat16:
        sweep_kernel<__nv_bfloat16><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(args);
        break;
      case Dtype::kFloat16:
        sweep_kernel<__half><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(args);
        break;
      default:
        return cudaErrorInvalidValue;
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  finish_invalid_kernel<<<static_cast<unsigned>(finish_blocks), kThreads, 0, stream>>>(args.steps, args.missing,
                                                                                       args.invalid, args.N, n);
  return cudaGetLastError();
}

cudaError_t launch_unmask_table(const int64_t* x, const int64_t* seeds, const int64_t* cdf, int64_t* table, int64_t B,
                                int64_t L, int64_t N, int64_t K, int64_t mask_id, int64_t rule, cudaStream_t stream) {
  const long long positions = B * L;
  if (positions == 0) return cudaSuccess;
  const long long blocks = (positions + kThreads - 1) / kThreads;
  if (blocks > 0x7FFFFFFFLL) return cudaErrorInvalidConfiguration;
  unmask_table_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(x, seeds, cdf, table, B, L, N, K,
                                                                                mask_id, rule);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace pit
