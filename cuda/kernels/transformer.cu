// Transformer kernels of the CUDA backend (twins of core/backend/cpu/cpu_transformer.h):
// embedding, LayerNorm, GELU (tanh), cross-entropy. Plain first cut,
// correctness before speed: one block per row for the row ops with double
// reductions (reduce.cuh), two-pass column sums (colsum.cuh) for the weight
// gradients of LayerNorm, token buckets for the embedding's (rows in
// order, as the CPU). The attention is in attention.cu.
#include <cmath>

#include "cuda/check.h"
#include "cuda/kernels/colsum.cuh"
#include "cuda/kernels/embedding_bwd.cuh"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/reduce.cuh"

namespace m6::cuda {
namespace {

constexpr double kLayerNormEps = 1e-5;
constexpr double kGeluC = 0.7978845608028654;  // sqrt(2/pi)
constexpr double kGeluA = 0.044715;
constexpr int kThreads = 256;

// ---- embedding ------------------------------------------------------------------
// x[r, j] = wte[tokens[r], j] + wpe[r % T, j]; block per row r
__global__ void embedding_fwd_kernel(float* x, const int32_t* tokens, const float* wte,
                                     const float* wpe, int T, int d) {
  const int r = blockIdx.x;
  const float* we = wte + static_cast<int64_t>(tokens[r]) * d;
  const float* pe = wpe + static_cast<int64_t>(r % T) * d;
  float* out = x + static_cast<int64_t>(r) * d;
  for (int j = threadIdx.x; j < d; j += blockDim.x) out[j] = we[j] + pe[j];
}

// dwte: embedding_bwd.cuh (rows in order per token, spread by token buckets)

// dwpe[t, j] += sum_b dx[b, t, j] (double); thread per (t, j)
__global__ void embedding_bwd_wpe_kernel(float* dwpe, const float* dx, int B, int T, int d) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(T) * d) return;
  const int t = static_cast<int>(i / d), j = static_cast<int>(i % d);
  double acc = 0.0;
  for (int b = 0; b < B; b++) acc += dx[(static_cast<int64_t>(b) * T + t) * d + j];
  dwpe[i] += static_cast<float>(acc);
}

// ---- layernorm --------------------------------------------------------------------
__global__ void layernorm_fwd_kernel(float* y, float* mean, float* rstd, const float* x,
                                     const float* w, const float* b, int d) {
  const int r = blockIdx.x;
  const float* xr = x + static_cast<int64_t>(r) * d;
  double s = 0.0;
  for (int j = threadIdx.x; j < d; j += blockDim.x) s += xr[j];
  const double mu = block_sum(s) / d;
  double ss = 0.0;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    const double c = xr[j] - mu;
    ss += c * c;
  }
  const double rs = 1.0 / sqrt(block_sum(ss) / d + kLayerNormEps);
  float* yr = y + static_cast<int64_t>(r) * d;
  for (int j = threadIdx.x; j < d; j += blockDim.x)
    yr[j] = static_cast<float>((xr[j] - mu) * rs * w[j] + b[j]);
  if (threadIdx.x == 0) {
    mean[r] = static_cast<float>(mu);
    rstd[r] = static_cast<float>(rs);
  }
}

// The residual add fused with the LayerNorm after it: xo = x + delta, then the
// LayerNorm of xo exactly as layernorm_fwd_kernel (each thread reads back the
// elements it wrote, so the sums are the same, bit for bit).
// kHalf (Backend::add_layernorm_fwd_half): the sum and y rounded to t.
template <bool kHalf>
__global__ void add_layernorm_fwd_kernel(float* xo, float* y, float* mean, float* rstd,
                                         const float* x, const float* delta, const float* w,
                                         const float* b, int d, HalfType t) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * d;
  double s = 0.0;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    float v = x[o + j] + delta[o + j];
    if (kHalf) v = round_half(v, t);
    xo[o + j] = v;
    s += v;
  }
  const double mu = block_sum(s) / d;
  double ss = 0.0;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    const double c = xo[o + j] - mu;
    ss += c * c;
  }
  const double rs = 1.0 / sqrt(block_sum(ss) / d + kLayerNormEps);
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    const float v = static_cast<float>((xo[o + j] - mu) * rs * w[j] + b[j]);
    y[o + j] = kHalf ? round_half(v, t) : v;
  }
  if (threadIdx.x == 0) {
    mean[blockIdx.x] = static_cast<float>(mu);
    rstd[blockIdx.x] = static_cast<float>(rs);
  }
}

// dx[r,:] += rstd * (g - mean(g) - xhat * mean(g*xhat)), g = dy*w; block per row
__global__ void layernorm_bwd_dx_kernel(float* dx, const float* dy, const float* x,
                                        const float* mean, const float* rstd, const float* w,
                                        int d) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * d;
  const double mu = mean[blockIdx.x], rs = rstd[blockIdx.x];
  double sg = 0.0, sgx = 0.0;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    const double g = static_cast<double>(dy[o + j]) * w[j];
    sg += g;
    sgx += g * ((x[o + j] - mu) * rs);
  }
  sg = block_sum(sg) / d;
  sgx = block_sum(sgx) / d;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    const double g = static_cast<double>(dy[o + j]) * w[j];
    const double xhat = (x[o + j] - mu) * rs;
    dx[o + j] += static_cast<float>(rs * (g - sg - xhat * sgx));
  }
}

// dw[j] += sum_rows dy*xhat, db[j] += sum_rows dy (colsum.cuh: two passes,
// double; acc[0] the weight's sum, acc[1] the bias's)
struct LayernormGradTerm {
  const float *dy, *x, *mean, *rstd;
  int d;
  __device__ void operator()(int r, int j, double* acc) const {
    const int64_t o = static_cast<int64_t>(r) * d + j;
    const double mu = mean[r], rs = rstd[r];
    acc[0] += static_cast<double>(dy[o]) * ((x[o] - mu) * rs);
    acc[1] += dy[o];
  }
};

// ---- gelu -------------------------------------------------------------------------
__device__ __forceinline__ float gelu_value(float x) {
  const double v = x;
  return static_cast<float>(0.5 * v * (1.0 + tanh(kGeluC * (v + kGeluA * v * v * v))));
}
// gelu'(x) * dy, rounded to fp32 once
__device__ __forceinline__ float gelu_grad_times(float x, float dy) {
  const double v = x;
  const double th = tanh(kGeluC * (v + kGeluA * v * v * v));
  const double du = kGeluC * (1.0 + 3.0 * kGeluA * v * v);
  const double grad = 0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * du;
  return static_cast<float>(grad * dy);
}

__global__ void gelu_fwd_kernel(float* y, const float* x, size_t n) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    y[i] = gelu_value(x[i]);
}

// dx = gelu'(x) * dy (dx may alias dy: each element read then written by one thread)
__global__ void gelu_bwd_kernel(float* dx, const float* x, const float* dy, size_t n) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    dx[i] = gelu_grad_times(x[i], dy[i]);
}

// Backend::gelu_fwd_half in one pass: x rounded in place, y = round(gelu(x)).
__global__ void gelu_fwd_half_kernel(float* y, float* x, size_t n, HalfType t) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float v = round_half(x[i], t);
    x[i] = v;
    y[i] = round_half(gelu_value(v), t);
  }
}

// Backend::gelu_bwd_half in one pass: dy rounded in place, dx = round(gelu'(x)
// dy) (dx may alias dy).
__global__ void gelu_bwd_half_kernel(float* dx, const float* x, float* dy, size_t n, HalfType t) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float g = round_half(dy[i], t);
    dy[i] = g;
    dx[i] = round_half(gelu_grad_times(x[i], g), t);
  }
}

// ---- cross-entropy -------------------------------------------------------------------
// Block per row, two passes over the logits: one read computing the max and
// the sum of exponentials together (online softmax, block_max_sum), then
// probs = exp(l - max) / sum. probs may alias logits: every read of the
// row's logits before the write pass (statistics, target) is separated from
// it by a barrier. The gradient cannot be written here: its scale comes with
// crossentropy_bwd (one read and one write of the row, in place).
__global__ void crossentropy_fwd_kernel(float* loss, float* probs, const float* logits,
                                        const int32_t* targets, int V, BadSink bad) {
  const int r = blockIdx.x;
  const float* l = logits + static_cast<int64_t>(r) * V;
  MaxSum ms{-DBL_MAX, 0.0};
  for (int j = threadIdx.x; j < V; j += blockDim.x) ms = max_sum_add(ms, l[j]);
  ms = block_max_sum(ms);  // ends with a barrier
  const double mx = ms.m, z = ms.s;
  const int tgt = targets[r];
  if (threadIdx.x == 0) {
    if (tgt >= V) record_bad(bad, tgt, r, V, 1, 0);
    loss[r] = (tgt < 0 || tgt >= V) ? 0.0f : static_cast<float>(log(z) + mx - l[tgt]);
  }
  __syncthreads();  // the target logit is read before probs (maybe = logits) is written
  float* p = probs + static_cast<int64_t>(r) * V;
  const double inv = 1.0 / z;
  for (int j = threadIdx.x; j < V; j += blockDim.x) p[j] = static_cast<float>(exp(l[j] - mx) * inv);
}

// dlogits = (probs - onehot) * dscale, rows with target < 0 zero; may alias probs
__global__ void crossentropy_bwd_kernel(float* dlogits, const float* probs,
                                        const int32_t* targets, float dscale, int V,
                                        BadSink bad) {
  __shared__ float pt;
  const int r = blockIdx.x;
  const float* p = probs + static_cast<int64_t>(r) * V;
  float* gr = dlogits + static_cast<int64_t>(r) * V;
  const int tgt = targets[r];
  if (tgt >= V) {
    if (threadIdx.x == 0) record_bad(bad, tgt, r, V, 1, 0);
    return;
  }
  if (tgt < 0) {
    for (int j = threadIdx.x; j < V; j += blockDim.x) gr[j] = 0.0f;
    return;
  }
  if (threadIdx.x == 0) pt = p[tgt];
  __syncthreads();  // pt read before gr (maybe = p) is written
  for (int j = threadIdx.x; j < V; j += blockDim.x) gr[j] = p[j] * dscale;
  __syncthreads();
  if (threadIdx.x == 0) gr[tgt] = (pt - 1.0f) * dscale;
}

}  // namespace

void launch_embedding_fwd(float* x, const int32_t* tokens, const float* wte, const float* wpe,
                          int B, int T, int d, cudaStream_t st) {
  if (B * T == 0 || d == 0) return;
  embedding_fwd_kernel<<<B * T, kThreads, 0, st>>>(x, tokens, wte, wpe, T, d);
  M6_LAUNCH_CHECK();
}

void launch_embedding_bwd(float* dwte, float* dwpe, const float* dx, const int32_t* tokens, int B,
                          int T, int d, cudaStream_t st) {
  if (B * T == 0 || d == 0) return;
  const dim3 wte_grid((d + kWteThreads - 1) / kWteThreads, kWteBuckets);
  embedding_bwd_wte_bucket_kernel<<<wte_grid, kWteThreads, 0, st>>>(dwte, dx, tokens, B * T, d);
  M6_LAUNCH_CHECK();
  const int64_t td = static_cast<int64_t>(T) * d;
  embedding_bwd_wpe_kernel<<<static_cast<unsigned>((td + kThreads - 1) / kThreads), kThreads, 0,
                             st>>>(dwpe, dx, B, T, d);
  M6_LAUNCH_CHECK();
}

void launch_layernorm_fwd(float* y, float* mean, float* rstd, const float* x, const float* w,
                          const float* b, int N, int d, cudaStream_t st) {
  if (N == 0) return;
  layernorm_fwd_kernel<<<N, kRowThreads, 0, st>>>(y, mean, rstd, x, w, b, d);
  M6_LAUNCH_CHECK();
}

void launch_add_layernorm_fwd(float* xo, float* y, float* mean, float* rstd, const float* x,
                              const float* delta, const float* w, const float* b, int N, int d,
                              cudaStream_t st) {
  if (N == 0) return;
  add_layernorm_fwd_kernel<false>
      <<<N, kRowThreads, 0, st>>>(xo, y, mean, rstd, x, delta, w, b, d, HalfType::BF16);
  M6_LAUNCH_CHECK();
}

void launch_add_layernorm_fwd_half(float* xo, float* y, float* mean, float* rstd, const float* x,
                                   const float* delta, const float* w, const float* b, int N,
                                   int d, HalfType t, cudaStream_t st) {
  if (N == 0) return;
  add_layernorm_fwd_kernel<true>
      <<<N, kRowThreads, 0, st>>>(xo, y, mean, rstd, x, delta, w, b, d, t);
  M6_LAUNCH_CHECK();
}

void launch_layernorm_bwd(float* dx, float* dw, float* db, const float* dy, const float* x,
                          const float* mean, const float* rstd, const float* w, int N, int d,
                          double* partial, cudaStream_t st) {
  if (N == 0 || d == 0) return;
  layernorm_bwd_dx_kernel<<<N, kRowThreads, 0, st>>>(dx, dy, x, mean, rstd, w, d);
  M6_LAUNCH_CHECK();
  launch_colsum<2>(dw, db, partial, LayernormGradTerm{dy, x, mean, rstd, d}, N, d, st);
}

void launch_gelu_fwd(float* y, const float* x, size_t n, cudaStream_t st) {
  if (n == 0) return;
  gelu_fwd_kernel<<<grid_1d(n, kThreads), kThreads, 0, st>>>(y, x, n);
  M6_LAUNCH_CHECK();
}

void launch_gelu_bwd(float* dx, const float* x, const float* dy, size_t n, cudaStream_t st) {
  if (n == 0) return;
  gelu_bwd_kernel<<<grid_1d(n, kThreads), kThreads, 0, st>>>(dx, x, dy, n);
  M6_LAUNCH_CHECK();
}

void launch_gelu_fwd_half(float* y, float* x, size_t n, HalfType t, cudaStream_t st) {
  if (n == 0) return;
  gelu_fwd_half_kernel<<<grid_1d(n, kThreads), kThreads, 0, st>>>(y, x, n, t);
  M6_LAUNCH_CHECK();
}

void launch_gelu_bwd_half(float* dx, const float* x, float* dy, size_t n, HalfType t,
                          cudaStream_t st) {
  if (n == 0) return;
  gelu_bwd_half_kernel<<<grid_1d(n, kThreads), kThreads, 0, st>>>(dx, x, dy, n, t);
  M6_LAUNCH_CHECK();
}

void launch_crossentropy_fwd(float* loss, float* probs, const float* logits,
                             const int32_t* targets, int N, int V, BadSink bad,
                             cudaStream_t st) {
  if (N == 0) return;
  crossentropy_fwd_kernel<<<N, kRowThreads, 0, st>>>(loss, probs, logits, targets, V, bad);
  M6_LAUNCH_CHECK();
}

void launch_crossentropy_bwd(float* dlogits, const float* probs, const int32_t* targets,
                             float dscale, int N, int V, BadSink bad, cudaStream_t st) {
  if (N == 0) return;
  crossentropy_bwd_kernel<<<N, kRowThreads, 0, st>>>(dlogits, probs, targets, dscale, V, bad);
  M6_LAUNCH_CHECK();
}

}  // namespace m6::cuda
