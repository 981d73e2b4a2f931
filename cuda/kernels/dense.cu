// Dense-algebra kernels of the CUDA backend (twins of core/backend/cpu/cpu_dense.h):
// bias add/grad, elementwise add/axpy/scale, deterministic reductions, and the
// beta-scaling of C for the k == 0 GEMM. Grid-stride loops; column sums run one
// thread per column over the rows in order, in double, as the CPU does.
#include <cmath>

#include "cuda/check.h"
#include "cuda/kernels/colsum.cuh"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/reduce.cuh"

namespace m6::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kReduceBlock = 4096;  // elements per partial (as cpu_dense.h)

#define M6_GRID_STRIDE(i, n)                                                         \
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<size_t>(gridDim.x) * blockDim.x)

__global__ void gemm_scale_c_kernel(float* c, int ldc, int64_t stride_c, int m, int n, int batch,
                                    float beta) {
  const size_t total = static_cast<size_t>(m) * n * batch;
  M6_GRID_STRIDE(i, total) {
    const int col = static_cast<int>(i % n);
    const int row = static_cast<int>((i / n) % m);
    const int b = static_cast<int>(i / (static_cast<size_t>(m) * n));
    float& y = c[b * stride_c + static_cast<int64_t>(row) * ldc + col];
    y = beta == 0.0f ? 0.0f : beta * y;
  }
}

// y[n,c] += b[c]
__global__ void add_bias_kernel(float* y, const float* b, int n, int c) {
  const size_t total = static_cast<size_t>(n) * c;
  M6_GRID_STRIDE(i, total) y[i] += b[i % c];
}

// db[c] += sum_rows dy[n,c] (colsum.cuh: two passes, double)
struct BiasGradTerm {
  const float* dy;
  int c;
  __device__ void operator()(int r, int j, double* acc) const {
    acc[0] += dy[static_cast<int64_t>(r) * c + j];
  }
};

__global__ void add_kernel(float* y, const float* a, const float* b, size_t n) {
  M6_GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}
__global__ void axpy_kernel(float* y, float alpha, const float* x, size_t n) {
  M6_GRID_STRIDE(i, n) y[i] += alpha * x[i];
}
__global__ void scale_kernel(float* x, float s, size_t n) { M6_GRID_STRIDE(i, n) x[i] *= s; }

// partial[blk] = sum of block blk's kReduceBlock elements (one CUDA block each)
__global__ void sum_partial_kernel(double* partial, const float* x, size_t n, bool squares) {
  const size_t lo = static_cast<size_t>(blockIdx.x) * kReduceBlock;
  const size_t hi = lo + kReduceBlock < n ? lo + kReduceBlock : n;
  double acc = 0.0;
  for (size_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const double v = x[i];
    acc += squares ? v * v : v;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// out[0] = sum of partial[0..blocks) in order (one thread: blocks is small)
__global__ void sum_final_kernel(double* out, const double* partial, size_t blocks) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  double total = 0.0;
  for (size_t b = 0; b < blocks; b++) total += partial[b];
  out[0] = total;
}

__global__ void sum_squares_piece_kernel(double* partial, const SumTensorDev* ts,
                                         const int32_t* piece_tensor, const int64_t* piece_start) {
  const int64_t c = blockIdx.x;
  const SumTensorDev t = ts[piece_tensor[c]];
  const int64_t lo = piece_start[c], hi = lo + kSumPiece < t.n ? lo + kSumPiece : t.n;
  double acc = 0.0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const double v = t.x[i];
    acc += v * v;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[c] = acc;
}

__global__ void sum_pieces_kernel(double* out, const double* partial, const int64_t* first_piece,
                                  int64_t count) {
  M6_GRID_STRIDE(t, static_cast<size_t>(count)) {
    double total = 0.0;
    for (int64_t c = first_piece[t]; c < first_piece[t + 1]; c++) total += partial[c];
    out[t] = total;
  }
}

__global__ void all_finite_kernel(int* bad, const float* x, size_t n) {
  M6_GRID_STRIDE(i, n) if (!isfinite(x[i])) *bad = 1;
}

// The mixed-precision rounding epilogue: the same bit-level RNE as the CPU
// reference (core/util/half_round.h compiled as device code).
__global__ void round_half_kernel(float* x, size_t n, HalfType t) {
  M6_GRID_STRIDE(i, n) x[i] = round_half(x[i], t);
}

}  // namespace

void launch_gemm_scale_c(float* c, int ldc, int64_t stride_c, int m, int n, int batch, float beta,
                         cudaStream_t st) {
  const size_t total = static_cast<size_t>(m) * n * batch;
  if (total == 0) return;
  gemm_scale_c_kernel<<<grid_1d(total, kThreads), kThreads, 0, st>>>(c, ldc, stride_c, m, n,
                                                                      batch, beta);
  M6_LAUNCH_CHECK();
}

void launch_add_bias(float* y, const float* b, int n, int c, cudaStream_t st) {
  const size_t total = static_cast<size_t>(n) * c;
  if (total == 0) return;
  add_bias_kernel<<<grid_1d(total, kThreads), kThreads, 0, st>>>(y, b, n, c);
  M6_LAUNCH_CHECK();
}

void launch_bias_grad(float* db, const float* dy, int n, int c, double* partial,
                      cudaStream_t st) {
  launch_colsum<1>(db, nullptr, partial, BiasGradTerm{dy, c}, n, c, st);
}

void launch_add(float* y, const float* a, const float* b, size_t n, cudaStream_t st) {
  if (n == 0) return;
  add_kernel<<<grid_1d(n, kThreads), kThreads, 0, st>>>(y, a, b, n);
  M6_LAUNCH_CHECK();
}

void launch_axpy(float* y, float alpha, const float* x, size_t n, cudaStream_t st) {
  if (n == 0) return;
  axpy_kernel<<<grid_1d(n, kThreads), kThreads, 0, st>>>(y, alpha, x, n);
  M6_LAUNCH_CHECK();
}

void launch_scale(float* x, float s, size_t n, cudaStream_t st) {
  if (n == 0) return;
  scale_kernel<<<grid_1d(n, kThreads), kThreads, 0, st>>>(x, s, n);
  M6_LAUNCH_CHECK();
}

size_t reduce_partials(size_t n) { return n == 0 ? 1 : (n + kReduceBlock - 1) / kReduceBlock; }

void launch_sum(double* out, double* partial, const float* x, size_t n, bool squares,
                cudaStream_t st) {
  const size_t blocks = n == 0 ? 0 : reduce_partials(n);
  if (blocks > 0) {
    sum_partial_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, st>>>(partial, x, n,
                                                                            squares);
    M6_LAUNCH_CHECK();
  }
  sum_final_kernel<<<1, 1, 0, st>>>(out, partial, blocks);
  M6_LAUNCH_CHECK();
}

void launch_sum_squares_multi(double* out, double* partial, const SumTensorDev* ts,
                              const int32_t* piece_tensor, const int64_t* piece_start,
                              const int64_t* first_piece, int64_t pieces, int64_t count,
                              cudaStream_t st) {
  if (count == 0) return;
  if (pieces > 0) {
    sum_squares_piece_kernel<<<static_cast<unsigned>(pieces), kThreads, 0, st>>>(
        partial, ts, piece_tensor, piece_start);
    M6_LAUNCH_CHECK();
  }
  sum_pieces_kernel<<<grid_1d(static_cast<size_t>(count), kThreads), kThreads, 0, st>>>(
      out, partial, first_piece, count);
  M6_LAUNCH_CHECK();
}

void launch_round_half(float* x, size_t n, HalfType t, cudaStream_t st) {
  if (n == 0) return;
  round_half_kernel<<<grid_1d(n, kThreads), kThreads, 0, st>>>(x, n, t);
  M6_LAUNCH_CHECK();
}

void launch_all_finite(int* bad, const float* x, size_t n, cudaStream_t st) {
  if (n == 0) return;
  all_finite_kernel<<<grid_1d(n, kThreads), kThreads, 0, st>>>(bad, x, n);
  M6_LAUNCH_CHECK();
}

namespace {

__device__ inline float gelu_tanh_dev(float x) {
  // as gelu_fwd_kernel (transformer.cu) and the CPU twin: in double
  const double v = x;
  return static_cast<float>(
      0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))));
}

__global__ void grouped_bias_act_kernel(float* y, float* act, const float* const* bias,
                                        const int64_t* row, const int64_t* prefix, int count,
                                        int64_t total_rows, int out) {
  const size_t total = static_cast<size_t>(total_rows) * out;
  M6_GRID_STRIDE(i, total) {
    const int64_t packed = static_cast<int64_t>(i / out);
    const int col = static_cast<int>(i % out);
    int lo = 0, hi = count - 1;  // the group whose [prefix[g], prefix[g+1]) holds `packed`
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (prefix[mid] <= packed) lo = mid; else hi = mid - 1;
    }
    const size_t at = static_cast<size_t>(row[lo] + (packed - prefix[lo])) * out + col;
    float v = y[at];
    if (bias[lo] != nullptr) v += bias[lo][col];
    y[at] = v;
    if (act != nullptr) act[at] = gelu_tanh_dev(v);
  }
}


}  // namespace

void launch_grouped_bias_grad(float* const* db, const float* dy, const int64_t* row,
                              const int64_t* rows, int count, int c, int max_rows,
                              double* partial, cudaStream_t st) {
  if (count == 0 || c == 0) return;
  const ColsumGrid gr = colsum_grid(max_rows, c);  // per_chunk: each group's own
  grouped_colsum_partial_kernel<<<dim3(gr.col_blocks, gr.chunks, count), kColThreads, 0, st>>>(
      partial, db, dy, row, rows, c, gr.chunks);
  M6_LAUNCH_CHECK();
  grouped_colsum_final_kernel<<<dim3(gr.col_blocks, count), kColThreads, 0, st>>>(db, partial,
                                                                                 gr.chunks, c);
  M6_LAUNCH_CHECK();
}

void launch_grouped_bias_act(float* y, float* act, const float* const* bias,
                             const int64_t* row, const int64_t* prefix, int count,
                             int64_t total_rows, int out, cudaStream_t st) {
  if (count == 0 || total_rows == 0 || out == 0) return;
  const size_t total = static_cast<size_t>(total_rows) * out;
  grouped_bias_act_kernel<<<grid_1d(total, kThreads), kThreads, 0, st>>>(
      y, act, bias, row, prefix, count, total_rows, out);
  M6_LAUNCH_CHECK();
}

}  // namespace m6::cuda
