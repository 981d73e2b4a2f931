// Block-wide reductions in double used by the row kernels (one block per row):
// every thread passes its partial, every thread gets the block's total. The
// combination order is fixed (warp shuffles, then warp 0), so results are
// deterministic run to run.
#pragma once
#include <cuda_runtime.h>

#include <cfloat>

namespace m6::cuda {

constexpr int kRowThreads = 256;  // block size of the one-block-per-row kernels

__device__ inline double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline double warp_max(double v) {
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_down_sync(0xffffffffu, v, o));
  return v;
}

// blockDim.x must be a multiple of 32 and <= 1024. Contains __syncthreads():
// every thread of the block must call it.
__device__ inline double block_sum(double v) {
  __shared__ double warp_part[32];
  __shared__ double total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) warp_part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double w = lane < warps ? warp_part[lane] : 0.0;
    w = warp_sum(w);
    if (lane == 0) total = w;
  }
  __syncthreads();
  const double r = total;
  __syncthreads();  // warp_part/total may be reused by the next call
  return r;
}

__device__ inline double block_max(double v) {
  __shared__ double warp_part[32];
  __shared__ double total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  if (lane == 0) warp_part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double w = lane < warps ? warp_part[lane] : -DBL_MAX;
    w = warp_max(w);
    if (lane == 0) total = w;
  }
  __syncthreads();
  const double r = total;
  __syncthreads();
  return r;
}

// Online softmax statistics of a set of values: their max m and
// s = sum exp(x - m), in double. Start from {-DBL_MAX, 0}; -inf values add 0.
struct MaxSum {
  double m, s;
};
__device__ inline MaxSum max_sum_add(MaxSum a, double x) {
  if (x > a.m) return {x, a.s * exp(a.m - x) + 1.0};
  return {a.m, a.s + exp(x - a.m)};
}
__device__ inline MaxSum max_sum_combine(MaxSum a, MaxSum b) {
  const double m = fmax(a.m, b.m);
  return {m, a.s * exp(a.m - m) + b.s * exp(b.m - m)};
}
__device__ inline MaxSum warp_max_sum(MaxSum v) {
  for (int o = 16; o > 0; o >>= 1) {
    const MaxSum w{__shfl_down_sync(0xffffffffu, v.m, o), __shfl_down_sync(0xffffffffu, v.s, o)};
    v = max_sum_combine(v, w);
  }
  return v;
}
// As block_sum: every thread passes its partial and gets the block's; fixed
// combination order; contains __syncthreads().
__device__ inline MaxSum block_max_sum(MaxSum v) {
  __shared__ double part_m[32], part_s[32];
  __shared__ MaxSum total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max_sum(v);
  if (lane == 0) part_m[warp] = v.m, part_s[warp] = v.s;
  __syncthreads();
  if (warp == 0) {
    MaxSum w = lane < warps ? MaxSum{part_m[lane], part_s[lane]} : MaxSum{-DBL_MAX, 0.0};
    w = warp_max_sum(w);
    if (lane == 0) total = w;
  }
  __syncthreads();
  const MaxSum r = total;
  __syncthreads();
  return r;
}

inline unsigned grid_1d(size_t n, int threads) {
  const size_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535u * 32u ? 65535u * 32u : blocks));
}

}  // namespace m6::cuda
