// AdamW kernels of the CUDA backend (twin of cpu::adamw in cpu_dense.h): the
// update in double, stored as float; bias corrections computed on the host.
// adamw_multi updates every tensor of the optimizer step in one launch.
#include <cmath>

#include "cuda/check.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/reduce.cuh"

namespace m6::cuda {
namespace {

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, size_t n, double lr,
                             double b1, double b2, double eps, double wd, double gs, double bc1,
                             double bc2) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const double grad = static_cast<double>(g[i]) * gs;
    const double mi = b1 * static_cast<double>(m[i]) + (1.0 - b1) * grad;
    const double vi = b2 * static_cast<double>(v[i]) + (1.0 - b2) * grad * grad;
    const double mhat = mi / bc1, vhat = vi / bc2;
    const double pi = static_cast<double>(p[i]);
    m[i] = static_cast<float>(mi);
    v[i] = static_cast<float>(vi);
    p[i] = static_cast<float>(pi - lr * (mhat / (sqrt(vhat) + eps) + wd * pi));
  }
}

// One block per chunk of kChunk elements of one tensor: blockIdx.x indexes the
// chunk table (tensor, first element); the same arithmetic as adamw_kernel.
__global__ void adamw_multi_kernel(const AdamTensorDev* ts, const int32_t* chunk_tensor,
                                   const int64_t* chunk_start, double lr, double b1, double b2,
                                   double eps, double gs, double bc1, double bc2) {
  const AdamTensorDev t = ts[chunk_tensor[blockIdx.x]];
  const size_t begin = static_cast<size_t>(chunk_start[blockIdx.x]);
  const size_t end = min(t.n, begin + static_cast<size_t>(kAdamChunk));
  const double wd = t.weight_decay;
  for (size_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const double grad = static_cast<double>(t.g[i]) * gs;
    const double mi = b1 * static_cast<double>(t.m[i]) + (1.0 - b1) * grad;
    const double vi = b2 * static_cast<double>(t.v[i]) + (1.0 - b2) * grad * grad;
    const double mhat = mi / bc1, vhat = vi / bc2;
    const double pi = static_cast<double>(t.p[i]);
    t.m[i] = static_cast<float>(mi);
    t.v[i] = static_cast<float>(vi);
    t.p[i] = static_cast<float>(pi - lr * (mhat / (sqrt(vhat) + eps) + wd * pi));
  }
}

}  // namespace

void launch_adamw_multi(const AdamTensorDev* ts, const int32_t* chunk_tensor,
                        const int64_t* chunk_start, int64_t chunks, double lr, double b1,
                        double b2, double eps, double grad_scale, double bc1, double bc2,
                        cudaStream_t st) {
  if (chunks == 0) return;
  constexpr int kThreads = 256;
  adamw_multi_kernel<<<static_cast<unsigned>(chunks), kThreads, 0, st>>>(
      ts, chunk_tensor, chunk_start, lr, b1, b2, eps, grad_scale, bc1, bc2);
  M6_LAUNCH_CHECK();
}

void launch_adamw(float* p, const float* g, float* m, float* v, size_t n, double lr, double b1,
                  double b2, double eps, double wd, double grad_scale, double bc1, double bc2,
                  cudaStream_t st) {
  if (n == 0) return;
  constexpr int kThreads = 256;
  adamw_kernel<<<grid_1d(n, kThreads), kThreads, 0, st>>>(p, g, m, v, n, lr, b1, b2, eps, wd,
                                                           grad_scale, bc1, bc2);
  M6_LAUNCH_CHECK();
}

}  // namespace m6::cuda
