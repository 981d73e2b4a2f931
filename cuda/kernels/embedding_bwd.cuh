// The token embedding's gradient, dwte[tokens[r], j] += dx[r, j] for the rows
// r in order, in fp32 (the CPU reference's arithmetic, bit for bit): a token
// seen many times is accumulated by one thread in row order, so no atomics
// and no reordering. Spread over the GPU by token buckets: block (x, b)
// takes columns [256x, 256x + 256) and the tokens t with t % buckets == b;
// every thread walks the rows' tokens (staged in shared memory, a tile at a
// time) and updates only its bucket's rows. Tokens are valid (0 <= t < V;
// the data loader checks them).
#pragma once
#include <cstdint>

namespace m6::cuda {

constexpr int kWteThreads = 256;
constexpr int kWteBuckets = 64;
constexpr int kWteTile = 1024;  // tokens staged per pass

// Grid (column blocks, kWteBuckets). Every thread reaches every barrier.
template <int Tile = kWteTile>
__global__ void embedding_bwd_wte_bucket_kernel(float* dwte, const float* dx,
                                                const int32_t* tokens, int rows, int d) {
  __shared__ int32_t tile[Tile];
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const uint32_t bucket = blockIdx.y, buckets = gridDim.y;
  for (int base = 0; base < rows; base += Tile) {
    const int n = rows - base < Tile ? rows - base : Tile;
    __syncthreads();  // the previous tile is no longer read
    for (int i = threadIdx.x; i < n; i += blockDim.x) tile[i] = tokens[base + i];
    __syncthreads();
    if (j >= d) continue;
    for (int i = 0; i < n; ++i) {
      const uint32_t t = static_cast<uint32_t>(tile[i]);
      if (t % buckets != bucket) continue;
      dwte[static_cast<int64_t>(t) * d + j] += dx[static_cast<int64_t>(base + i) * d + j];
    }
  }
}

}  // namespace m6::cuda
