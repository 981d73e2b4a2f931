// Conversions of the NCCL communicator's half-precision wire (the bit-level
// functions of core/util/half_round.h, compiled as device code, as the CPU's
// core/parallel/half.cpp uses them: round to nearest even, overflow to
// infinity, NaN sign and payload kept alike) and the stream-stall test hook.
#include <algorithm>

#include "cuda/check.h"
#include "cuda/kernels/kernels.h"

namespace m6::cuda {
namespace {

constexpr int kThreads = 256;

int blocks_for(size_t n) {
  return static_cast<int>(std::min<size_t>((n + kThreads - 1) / kThreads, 65535));
}

__global__ void f32_to_half_kernel(uint16_t* h, const float* x, size_t n, bool bf16, float scale) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float v = x[i] * scale;
    h[i] = bf16 ? f32_to_bf16(v) : f32_to_f16(v);
  }
}

__global__ void half_to_f32_kernel(float* x, const uint16_t* h, size_t n, bool bf16, float scale) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float v = bf16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]);
    x[i] = v * scale;
  }
}

__global__ void stall_kernel(unsigned long long ns) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

}  // namespace

void launch_f32_to_half(uint16_t* h, const float* x, size_t n, bool bf16, float scale,
                        cudaStream_t st) {
  if (n == 0) return;
  f32_to_half_kernel<<<blocks_for(n), kThreads, 0, st>>>(h, x, n, bf16, scale);
  M6_LAUNCH_CHECK();
}

void launch_half_to_f32(float* x, const uint16_t* h, size_t n, bool bf16, float scale,
                        cudaStream_t st) {
  if (n == 0) return;
  half_to_f32_kernel<<<blocks_for(n), kThreads, 0, st>>>(x, h, n, bf16, scale);
  M6_LAUNCH_CHECK();
}

void launch_stall(double seconds, cudaStream_t st) {
  stall_kernel<<<1, 1, 0, st>>>(static_cast<unsigned long long>(seconds * 1e9));
  M6_LAUNCH_CHECK();
}

}  // namespace m6::cuda
