// Column sums over many rows (bias and LayerNorm weight gradients): out[j] +=
// sum over rows r of term(r, j), in double, in two passes so that the rows
// are spread over the GPU instead of one thread walking all of them:
//   1. grid (columns / 256, chunks): each thread sums its column over one
//      chunk of consecutive rows (reads coalesced across the warp) and
//      writes the partial to partial[k][chunk][j];
//   2. one thread per column adds its chunks' partials in chunk order.
// Deterministic (fixed chunks, fixed order; no atomics). Against the CPU's
// single pass in row order only the association of the double sums differs
// (relative 1e-16 before the rounding to float).
#pragma once
#include <cstddef>
#include <cstdint>

#ifdef __CUDACC__
#include <cuda_runtime.h>

#include "cuda/check.h"
#endif

namespace m6::cuda {

constexpr int kColThreads = 256;
constexpr int kColMinRows = 64;     // rows per chunk at least
constexpr int kColMaxChunks = 128;  // partials per column at most

// The chunks n rows are cut into, and the doubles of scratch K sums of c
// columns need.
inline int colsum_chunks(int n) {
  const int c = (n + kColMinRows - 1) / kColMinRows;
  return c < 1 ? 1 : c > kColMaxChunks ? kColMaxChunks : c;
}
inline size_t colsum_scratch(int n, int c, int k) {
  return static_cast<size_t>(k) * colsum_chunks(n) * static_cast<size_t>(c);
}
// The launch geometry of n rows by c columns: the chunks (grid y), the rows
// per chunk (the last chunks may be short or empty) and the column blocks
// (grid x, kColThreads threads each).
struct ColsumGrid {
  int chunks, per_chunk, col_blocks;
};
inline ColsumGrid colsum_grid(int n, int c) {
  const int chunks = colsum_chunks(n);
  return {chunks, (n + chunks - 1) / chunks, (c + kColThreads - 1) / kColThreads};
}

template <int K, class Term>
__global__ void colsum_partial_kernel(double* partial, Term term, int n, int c, int per_chunk) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= c) return;
  const int chunk = blockIdx.y;
  const int r0 = chunk * per_chunk;
  const int r1 = r0 + per_chunk < n ? r0 + per_chunk : n;
  double acc[K];
  for (int k = 0; k < K; ++k) acc[k] = 0.0;
  for (int r = r0; r < r1; ++r) term(r, j, acc);
  for (int k = 0; k < K; ++k)
    partial[(static_cast<size_t>(k) * gridDim.y + chunk) * c + j] = acc[k];
}

template <int K>
__global__ void colsum_final_kernel(float* out0, float* out1, const double* partial, int chunks,
                                    int c) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= c) return;
  for (int k = 0; k < K; ++k) {
    double s = 0.0;
    for (int ch = 0; ch < chunks; ++ch) s += partial[(static_cast<size_t>(k) * chunks + ch) * c + j];
    float* out = k == 0 ? out0 : out1;
    out[j] += static_cast<float>(s);
  }
}

// Grouped (the experts' bias gradients): group g sums its rows [row[g],
// row[g] + rows[g]) of dy [*, c] into db[g] (skipped when null), cut into
// `chunks` chunks of its own size. partial: [group][chunk][c].
// Grid (column blocks, chunks, groups). (static: one copy per .cu that
// includes this header, as for the templates above)
static __global__ void grouped_colsum_partial_kernel(double* partial, float* const* db, const float* dy,
                                              const int64_t* row, const int64_t* rows, int c,
                                              int chunks) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int g = blockIdx.z, chunk = blockIdx.y;
  if (j >= c || db[g] == nullptr) return;
  const int64_t n = rows[g];
  const int64_t per = (n + chunks - 1) / chunks;
  const int64_t r0 = chunk * per;
  const int64_t r1 = r0 + per < n ? r0 + per : n;
  const float* base = dy + static_cast<size_t>(row[g]) * c + j;
  double acc = 0.0;
  for (int64_t r = r0; r < r1; ++r) acc += base[static_cast<size_t>(r) * c];
  partial[(static_cast<size_t>(g) * chunks + chunk) * c + j] = acc;
}
// Grid (column blocks, groups).
static __global__ void grouped_colsum_final_kernel(float* const* db, const double* partial, int chunks,
                                            int c) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int g = blockIdx.y;
  if (j >= c || db[g] == nullptr) return;
  double s = 0.0;
  for (int ch = 0; ch < chunks; ++ch) s += partial[(static_cast<size_t>(g) * chunks + ch) * c + j];
  db[g][j] += static_cast<float>(s);
}

#ifdef __CUDACC__  // the kernels above also compile on the host (tests/cuda/emulated)
// out0[j] (+ out1[j] when K = 2) += the column sums of term over n rows;
// `partial` holds colsum_scratch(n, c, K) doubles. n >= 0, c > 0.
template <int K, class Term>
void launch_colsum(float* out0, float* out1, double* partial, Term term, int n, int c,
                   cudaStream_t st) {
  static_assert(K == 1 || K == 2, "one or two sums per column");
  if (c <= 0 || n <= 0) return;
  const ColsumGrid gr = colsum_grid(n, c);
  colsum_partial_kernel<K><<<dim3(gr.col_blocks, gr.chunks), kColThreads, 0, st>>>(
      partial, term, n, c, gr.per_chunk);
  M6_LAUNCH_CHECK();
  colsum_final_kernel<K><<<gr.col_blocks, kColThreads, 0, st>>>(out0, out1, partial, gr.chunks, c);
  M6_LAUNCH_CHECK();
}
#endif

}  // namespace m6::cuda
