// Runs CUDA kernel source on the host, for the kernels written against a
// small subset of CUDA (cuda/kernels/attention_kernels.cuh): each block's
// threads are OS threads, __syncthreads a barrier of the block, __syncwarp
// and __shfl_xor_sync barriers of the 32 threads of a warp, dynamic shared
// memory a buffer per block (M6_FLASH_SHARED; 128-byte aligned, NaN until
// written). Blocks run one after another. wmma_emulation.h adds bf16 and the
// warp-matrix subset the tensor-core kernels use.
// Slow (every barrier is a rendezvous of OS threads), so for small shapes
// only; it checks the kernels' indexing, tiling, masking and synchronisation
// on a machine without a GPU. What it cannot check: the compiler's device
// code, races that a barrier on the host hides but the GPU would expose
// (every shared-memory write here is ordered by a real barrier or by the
// thread itself), bank conflicts and speed.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <new>
#include <thread>
#include <vector>

struct Dim3Emu {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local Dim3Emu threadIdx, blockIdx, blockDim, gridDim;

namespace m6::cuda_emu {

struct Warp {
  explicit Warp(int n) : bar(n) {}
  std::barrier<> bar;
  float vals[32] = {};
};

struct Block {
  Block(int threads, size_t shared_floats)
      : bar(threads), shared(new (std::align_val_t(128)) float[shared_floats + 1]) {
    // NaN until written: a kernel reading shared memory it never wrote
    // poisons its outputs and fails the comparison
    std::fill_n(shared.get(), shared_floats + 1, std::numeric_limits<float>::quiet_NaN());
    for (int w = 0; w < (threads + 31) / 32; ++w)
      warps.push_back(std::make_unique<Warp>(std::min(32, threads - 32 * w)));
  }
  std::barrier<> bar;
  // dynamic shared memory, 128-byte aligned as on the GPU (wmma pointers
  // must be 32-byte aligned: wmma_emulation.h checks them)
  struct AlignedDelete {
    void operator()(float* p) const { ::operator delete[](p, std::align_val_t(128)); }
  };
  std::unique_ptr<float[], AlignedDelete> shared;
  std::vector<std::unique_ptr<Warp>> warps;
};
inline thread_local Block* t_block = nullptr;

inline Warp& my_warp() { return *t_block->warps[threadIdx.x / 32]; }

// Launches kernel(args...) on a grid of `blocks` x `threads` host threads.
template <class F>
void launch(unsigned blocks, unsigned threads, size_t shared_floats, F kernel) {
  for (unsigned b = 0; b < blocks; ++b) {
    Block blk(static_cast<int>(threads), shared_floats);
    std::vector<std::thread> ts;
    ts.reserve(threads);
    for (unsigned t = 0; t < threads; ++t)
      ts.emplace_back([&, b, t] {
        threadIdx = {t, 0, 0};
        blockIdx = {b, 0, 0};
        blockDim = {threads, 1, 1};
        t_block = &blk;
        kernel();
      });
    for (auto& th : ts) th.join();
  }
}

// Launches kernel() on a 2-D grid of blocks of `threads` host threads (with
// __syncthreads; static __shared__ arrays, as blocks run one at a time).
template <class F>
void launch_grid(Dim3Emu grid, unsigned threads, F kernel) {
  const unsigned gy = grid.y ? grid.y : 1;
  for (unsigned by = 0; by < gy; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      Block blk(static_cast<int>(threads), 0);
      std::vector<std::thread> ts;
      ts.reserve(threads);
      for (unsigned t = 0; t < threads; ++t)
        ts.emplace_back([&, bx, by, t] {
          threadIdx = {t, 0, 0};
          blockIdx = {bx, by, 0};
          blockDim = {threads, 1, 1};
          gridDim = {grid.x, gy, 1};
          t_block = &blk;
          kernel();
        });
      for (auto& th : ts) th.join();
    }
}

// Launches a kernel without barriers or shared memory (colsum.cuh) on a 3-D
// grid (a 0 in grid.y or grid.z counts as 1), every thread in turn on the
// calling thread.
template <class F>
void launch_serial(Dim3Emu grid, unsigned threads, F kernel) {
  const unsigned gy = grid.y ? grid.y : 1, gz = grid.z ? grid.z : 1;
  for (unsigned bz = 0; bz < gz; ++bz)
    for (unsigned by = 0; by < gy; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx)
        for (unsigned t = 0; t < threads; ++t) {
          threadIdx = {t, 0, 0};
          blockIdx = {bx, by, bz};
          blockDim = {threads, 1, 1};
          gridDim = {grid.x, gy, gz};
          kernel();
        }
}

}  // namespace m6::cuda_emu

// The CUDA built-ins the kernels use.
#define __global__
#define __device__
#define __launch_bounds__(n)
// a static __shared__ array: one per kernel instance, and blocks run one at a time
#define __shared__ static
#define M6_FLASH_SHARED(name) float* name = ::m6::cuda_emu::t_block->shared.get()
inline int min(int a, int b) { return a < b ? a : b; }
inline void __syncthreads() { m6::cuda_emu::t_block->bar.arrive_and_wait(); }
inline void __syncwarp() { m6::cuda_emu::my_warp().bar.arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned /*mask*/, float v, int lane_mask) {
  m6::cuda_emu::Warp& w = m6::cuda_emu::my_warp();
  const int lane = static_cast<int>(threadIdx.x % 32);
  w.vals[lane] = v;
  w.bar.arrive_and_wait();
  const float r = w.vals[lane ^ lane_mask];
  w.bar.arrive_and_wait();
  return r;
}
