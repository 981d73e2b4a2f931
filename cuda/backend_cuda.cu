// CudaBackend's construction and its ops: dense algebra, the transformer ops
// and the optimizer, each checking its shapes and then calling its launcher
// in kernels/ (the mixture-of-experts ops: backend_moe.cu); and the factory functions
// (core/backend/cuda_factory.h, cuda/backend_cuda.h). The class is in
// backend_cuda_impl.h.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "core/backend/backend.h"
#include "core/backend/cuda_factory.h"
#include "core/util/error.h"
#include "core/util/log.h"
#include "cuda/backend_cuda.h"
#include "cuda/backend_cuda_impl.h"
#include "cuda/check.h"
#include "cuda/gemm_lt.h"
#include "cuda/kernels/colsum.cuh"
#include "cuda/kernels/kernels.h"
#include "cuda/staging_ring.h"

namespace m6 {
namespace cuda_impl {
namespace {

// cuBLAS's workspace, set once so that no GEMM allocates one (nor may inside
// a graph capture): 32 MiB, the cuBLAS documentation's recommendation for
// Hopper (4 MiB before it).
constexpr size_t kCublasWorkspaceBytes = 32u << 20;
// Initial reduction scratch (partials of sum / sum_to): enough for 2^28
// elements, so that a captured sum_to never needs to grow it.
constexpr size_t kInitialPartials = 1u << 16;

cublasOperation_t cublas_op(Trans t) { return t == Trans::Yes ? CUBLAS_OP_T : CUBLAS_OP_N; }

}  // namespace

CudaBackend::CudaBackend(int device, const CudaBackendOptions& opt)
    : device_(device), bf16_(opt.bf16_tensor_cores) {
  M6_CUDA_CHECK(cudaSetDevice(device));
  // Non-blocking: no implicit ordering with the legacy default stream (no
  // op here uses it), which a capture of a blocking stream would leave
  // unusable for every other user in the process until the capture ends.
  M6_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  // Offload copies (weight prefetch, optimizer staging) between pinned host
  // memory and the device on their own stream, overlapping the kernels.
  M6_CUDA_CHECK(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking));
  M6_CUDA_CHECK(cudaEventCreateWithFlags(&copy_after_, cudaEventDisableTiming));
  for (cudaEvent_t& e : slot_done_) M6_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  M6_CUBLAS_CHECK(cublasCreate(&blas_));
  M6_CUBLAS_CHECK(cublasSetStream(blas_, stream_));
  // After cublasSetStream, which resets the handle to its default workspace.
  M6_CUDA_CHECK(cudaMalloc(&blas_workspace_, kCublasWorkspaceBytes));
  M6_CUBLAS_CHECK(cublasSetWorkspace(blas_, blas_workspace_, kCublasWorkspaceBytes));
  // fp32: plain fp32 GEMMs (no TF32), compared with the CPU reference at
  // fp32 tolerances. bf16: tensor cores on operands rounded to bf16, fp32
  // accumulation (CUBLAS_COMPUTE_32F_FAST_16BF).
  M6_CUBLAS_CHECK(cublasSetMathMode(blas_, bf16_ ? CUBLAS_DEFAULT_MATH : CUBLAS_PEDANTIC_MATH));
  lt_ = std::make_unique<cuda::LtLinear>(opt.deterministic);
  M6_CUDA_CHECK(cudaMalloc(&bad_, kBadKinds * sizeof(BadIndex)));
  M6_CUDA_CHECK(cudaMemsetAsync(bad_, 0, kBadKinds * sizeof(BadIndex), stream_));
  M6_CUDA_CHECK(cudaMalloc(&scalars_, 2 * sizeof(double)));
  M6_CUDA_CHECK(cudaMalloc(&flag_, sizeof(int)));
  M6_CUDA_CHECK(cudaMalloc(&partial_, kInitialPartials * sizeof(double)));
  partial_cap_ = kInitialPartials;
  staging_ = std::make_unique<cuda::StagingRing>(kStagingBytes, kStagingCopies);
  cudaDeviceProp prop{};
  M6_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  name_ = fmt("cuda(", device, ": ", prop.name, bf16_ ? ", bf16 tensor cores" : "", ")");
}

CudaBackend::~CudaBackend() {
  // Destructors must not throw: errors here are ignored.
  if (capturing_) {  // a capture abandoned by an exception
    cudaGraph_t g = nullptr;
    if (cudaStreamEndCapture(stream_, &g) == cudaSuccess && g != nullptr) cudaGraphDestroy(g);
    (void)cudaGetLastError();
  }
  cudaStreamSynchronize(stream_);
  staging_.reset();
  for (void* p : retired_) cudaFree(p);
  for (cudaEvent_t e : marks_) cudaEventDestroy(e);
  cudaFree(aux_sums_);
  cudaFree(partial_);
  cudaFree(adam_table_);
  cudaFree(sumsq_table_);
  cudaFree(group_table_);
  lt_.reset();
  cudaFree(flag_);
  cudaFree(scalars_);
  cudaFree(bad_);
  cublasDestroy(blas_);
  cudaFree(blas_workspace_);
  for (cudaEvent_t e : slot_done_) cudaEventDestroy(e);
  cudaEventDestroy(copy_after_);
  cudaStreamDestroy(copy_stream_);
  cudaStreamDestroy(stream_);
}

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLAS gets
// B first, then A, with m and n swapped; the leading dimensions are the
// row-major ones unchanged.
void CudaBackend::gemm(const GemmArgs& g) {
  if (g.m < 0 || g.n < 0 || g.k < 0 || g.batch < 0)
    fail(fmt("gemm: negative size m=", g.m, " n=", g.n, " k=", g.k, " batch=", g.batch));
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  const int lda = resolve_ld(g.lda, g.trans_a == Trans::No ? g.k : g.m, "lda");
  const int ldb = resolve_ld(g.ldb, g.trans_b == Trans::No ? g.n : g.k, "ldb");
  const int ldc = resolve_ld(g.ldc, g.n, "ldc");
  if (g.k == 0) {  // empty product: C = beta C (beta 0 writes 0), as the CPU
    cuda::launch_gemm_scale_c(g.c, ldc, g.stride_c, g.m, g.n, g.batch, g.beta, stream_);
    return;
  }
  const float alpha = g.alpha, beta = g.beta;
  if (half_gemms()) {
    M6_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        blas_, cublas_op(g.trans_b), cublas_op(g.trans_a), g.n, g.m, g.k, &alpha, g.b,
        CUDA_R_32F, ldb, g.stride_b, g.a, CUDA_R_32F, lda, g.stride_a, &beta, g.c, CUDA_R_32F,
        ldc, g.stride_c, g.batch, CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT));
    return;
  }
  M6_CUBLAS_CHECK(cublasSgemmStridedBatched(
      blas_, cublas_op(g.trans_b), cublas_op(g.trans_a), g.n, g.m, g.k, &alpha, g.b, ldb,
      g.stride_b, g.a, lda, g.stride_a, &beta, g.c, ldc, g.stride_c, g.batch));
}

// The linear layer on cuBLASLt with the bias (and GELU) as epilogues; the
// reference sequence (gemm, add_bias, gelu_fwd) where cuBLASLt has no
// algorithm for the shape.
void CudaBackend::linear_fwd(float* y, float* act, const float* x, const float* w, const float* b,
                             int n, int in, int out) {
  check_nonneg("linear_fwd", n, in, out);
  if (n > 0 && in > 0 && out > 0 &&
      lt_->run(y, act, x, w, b, n, in, out, half_gemms(), stream_))
    return;
  Backend::linear_fwd(y, act, x, w, b, n, in, out);
}

// Every group's GEMM in one cublasGemmGroupedBatchedEx call (the
// pointer arrays go to the device each call: the experts' row counts change
// every step), then one kernel for the biases and the GELU.
void CudaBackend::linear_fwd_grouped(float* y, float* act, const float* x, const LinearGroup* g,
                                     int count, int in, int out) {
  check_nonneg("linear_fwd_grouped", count, in, out);
  std::vector<const void*> a, b;
  std::vector<void*> c;
  std::vector<const float*> bias;
  std::vector<int64_t> row, prefix = {0};
  for (int i = 0; i < count; ++i) {
    if (g[i].rows < 0 || g[i].row < 0)
      fail(fmt("linear_fwd_grouped: group ", i, " has rows ", g[i].rows, " at row ", g[i].row));
    if (g[i].rows == 0) continue;
    const size_t o = static_cast<size_t>(g[i].row);
    a.push_back(g[i].w);
    b.push_back(x + o * in);
    c.push_back(y + o * out);
    bias.push_back(g[i].b);
    row.push_back(g[i].row);
    prefix.push_back(prefix.back() + g[i].rows);
  }
  const int G = static_cast<int>(a.size());
  if (G == 0 || out == 0) return;
  if (in == 0 || !grouped_ok()) return Backend::linear_fwd_grouped(y, act, x, g, count, in, out);
  // Device table: [A][B][C][bias] pointers, [row][prefix] int64 (room for
  // all `count` groups, so that a later step with more non-empty ones does
  // not reallocate it).
  const size_t pb = static_cast<size_t>(G) * sizeof(void*);
  upload_group_table({{a.data(), pb}, {b.data(), pb}, {c.data(), pb}, {bias.data(), pb},
                      {row.data(), G * sizeof(int64_t)}, {prefix.data(), (G + 1) * sizeof(int64_t)}},
                     (4 * sizeof(void*) + 2 * sizeof(int64_t)) * count + sizeof(int64_t));
  // Row-major y_i[rows,out] = x_i[rows,in] w_i^T is column-major
  // Y^T[out,rows] = W[out,in] X^T: A = w (op T, ld in), B = x (op N, ld in).
  std::vector<cublasOperation_t> ta(G, CUBLAS_OP_T), tb(G, CUBLAS_OP_N);
  std::vector<int> m(G, out), n(G), k(G, in), lda(G, in), ldb(G, in), ldc(G, out), size(G, 1);
  for (int i = 0; i < G; ++i) n[i] = static_cast<int>(prefix[i + 1] - prefix[i]);
  std::vector<float> alpha(G, 1.0f), beta(G, 0.0f);
  const cublasStatus_t st = cublasGemmGroupedBatchedEx(
      blas_, ta.data(), tb.data(), m.data(), n.data(), k.data(), alpha.data(),
      reinterpret_cast<const void* const*>(group_table_), CUDA_R_32F, lda.data(),
      reinterpret_cast<const void* const*>(group_table_ + pb), CUDA_R_32F, ldb.data(),
      beta.data(), reinterpret_cast<void* const*>(group_table_ + 2 * pb), CUDA_R_32F, ldc.data(),
      G, size.data(), half_gemms() ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F);
  if (grouped_refused(st)) return Backend::linear_fwd_grouped(y, act, x, g, count, in, out);
  M6_CUBLAS_CHECK(st);
  cuda::launch_grouped_bias_act(y, act, reinterpret_cast<const float* const*>(group_table_ + 3 * pb),
                                reinterpret_cast<const int64_t*>(group_table_ + 4 * pb),
                                reinterpret_cast<const int64_t*>(group_table_ + 4 * pb + G * 8),
                                G, prefix.back(), out, stream_);
}

// Every group's dx GEMM in one cublasGemmGroupedBatchedEx call, every dw
// GEMM in another, then one kernel for the bias gradients (one thread per
// group and column, as bias_grad).
void CudaBackend::linear_bwd_grouped(float* dx, const float* dy, const float* x,
                                     const LinearGradGroup* g, int count, int in, int out) {
  check_nonneg("linear_bwd_grouped", count, in, out);
  std::vector<const void*> w, dyp, xp;
  std::vector<void*> dxp, dwp;
  std::vector<float*> db;
  std::vector<int64_t> row, rows;
  for (int i = 0; i < count; ++i) {
    if (g[i].rows < 0 || g[i].row < 0)
      fail(fmt("linear_bwd_grouped: group ", i, " has rows ", g[i].rows, " at row ", g[i].row));
    if (g[i].rows == 0) continue;
    const size_t o = static_cast<size_t>(g[i].row);
    w.push_back(g[i].w);
    dyp.push_back(dy + o * out);
    xp.push_back(x + o * in);
    dxp.push_back(dx + o * in);
    dwp.push_back(g[i].dw);
    db.push_back(g[i].db);
    row.push_back(g[i].row);
    rows.push_back(g[i].rows);
  }
  const int G = static_cast<int>(w.size());
  if (G == 0) return;
  if (in == 0 || out == 0 || !grouped_ok())
    return Backend::linear_bwd_grouped(dx, dy, x, g, count, in, out);
  // Device table: [W][DY][DX][X][DW][DB] pointers, [row][rows] int64.
  const size_t pb = static_cast<size_t>(G) * sizeof(void*);
  upload_group_table({{w.data(), pb}, {dyp.data(), pb}, {dxp.data(), pb}, {xp.data(), pb},
                      {dwp.data(), pb}, {db.data(), pb}, {row.data(), G * sizeof(int64_t)},
                      {rows.data(), G * sizeof(int64_t)}},
                     (6 * sizeof(void*) + 2 * sizeof(int64_t)) * count);
  auto ptrs = [&](int p) { return reinterpret_cast<const void* const*>(group_table_ + p * pb); };
  auto outs = [&](int p) { return reinterpret_cast<void* const*>(group_table_ + p * pb); };
  const cublasComputeType_t compute =
      half_gemms() ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
  std::vector<int> size(G, 1), n(G);
  for (int i = 0; i < G; ++i) n[i] = static_cast<int>(rows[i]);
  // dx_i[rows,in] = dy_i[rows,out] w_i[out,in], column-major DX^T[in,rows] =
  // W^T DY^T: A = w (op N, ld in), B = dy (op N, ld out); overwrite.
  std::vector<cublasOperation_t> opn(G, CUBLAS_OP_N), opt(G, CUBLAS_OP_T);
  std::vector<int> m_in(G, in), k_out(G, out), ld_in(G, in), ld_out(G, out);
  std::vector<float> one(G, 1.0f), zero(G, 0.0f);
  cublasStatus_t st = cublasGemmGroupedBatchedEx(
      blas_, opn.data(), opn.data(), m_in.data(), n.data(), k_out.data(), one.data(), ptrs(0),
      CUDA_R_32F, ld_in.data(), ptrs(1), CUDA_R_32F, ld_out.data(), zero.data(), outs(2),
      CUDA_R_32F, ld_in.data(), G, size.data(), compute);
  if (grouped_refused(st)) return Backend::linear_bwd_grouped(dx, dy, x, g, count, in, out);
  M6_CUBLAS_CHECK(st);
  // dw_i[out,in] += dy_i^T x_i, column-major DW^T[in,out] += X^T[in,rows]
  // DY[rows,out]: A = x (op N, ld in), B = dy (op T, ld out), k = rows.
  M6_CUBLAS_CHECK(cublasGemmGroupedBatchedEx(
      blas_, opn.data(), opt.data(), m_in.data(), k_out.data(), n.data(), one.data(), ptrs(3),
      CUDA_R_32F, ld_in.data(), ptrs(1), CUDA_R_32F, ld_out.data(), one.data(), outs(4),
      CUDA_R_32F, ld_in.data(), G, size.data(), compute));
  const int max_rows = static_cast<int>(*std::max_element(rows.begin(), rows.end()));
  cuda::launch_grouped_bias_grad(reinterpret_cast<float* const*>(group_table_ + 5 * pb), dy,
                                 reinterpret_cast<const int64_t*>(group_table_ + 6 * pb),
                                 reinterpret_cast<const int64_t*>(group_table_ + 6 * pb + G * 8),
                                 G, out, max_rows, partials(cuda::colsum_scratch(max_rows, out, G)),
                                 stream_);
}

void CudaBackend::add_bias(float* y, const float* b, int n, int c) {
  check_nonneg("add_bias", n, c);
  cuda::launch_add_bias(y, b, n, c, stream_);
}

void CudaBackend::bias_grad(float* db, const float* dy, int n, int c) {
  check_nonneg("bias_grad", n, c);
  cuda::launch_bias_grad(db, dy, n, c, partials(cuda::colsum_scratch(n, c, 1)), stream_);
}

void CudaBackend::add(float* y, const float* a, const float* b, size_t n) {
  cuda::launch_add(y, a, b, n, stream_);
}

void CudaBackend::axpy(float* y, float alpha, const float* x, size_t n) {
  cuda::launch_axpy(y, alpha, x, n, stream_);
}

// One piece table per tensor list (cached: the gradient chunks are the same
// every step), two launches, one copy back.
void CudaBackend::sum_squares_multi(double* out, const float* const* xs, const size_t* ns,
                                    size_t count) {
  if (count == 0) return;
  std::vector<cuda::SumTensorDev> ts(count);
  for (size_t i = 0; i < count; ++i) ts[i] = {xs[i], static_cast<int64_t>(ns[i])};
  const size_t tb = count * sizeof(cuda::SumTensorDev);
  if (tb != sumsq_host_.size() ||
      std::memcmp(sumsq_host_.data(), ts.data(), tb) != 0) {
    std::vector<int64_t> start, first(count + 1, 0);
    std::vector<int32_t> tensor;
    for (size_t i = 0; i < count; ++i) {
      first[i] = static_cast<int64_t>(start.size());
      for (int64_t at = 0; at < ts[i].n; at += cuda::kSumPiece) {
        start.push_back(at);
        tensor.push_back(static_cast<int32_t>(i));
      }
    }
    first[count] = static_cast<int64_t>(start.size());
    sumsq_pieces_ = static_cast<int64_t>(start.size());
    // Layout: [int64 piece starts][int64 first pieces][double out][double
    // partials][tensors][int32 piece tensors], each part 8-byte aligned.
    const size_t P = start.size(), bytes = 8 * (P + (count + 1) + count + P) + tb + 4 * P + 8;
    if (bytes > sumsq_bytes_) {
      if (sumsq_table_ != nullptr) release(sumsq_table_);
      sumsq_table_ = static_cast<char*>(alloc(bytes));
      sumsq_bytes_ = bytes;
    }
    char* at = sumsq_table_;
    to_device(at, start.data(), 8 * P);
    to_device(at + 8 * P, first.data(), 8 * (count + 1));
    to_device(at + 8 * (P + count + 1 + count + P), ts.data(), tb);
    to_device(at + 8 * (P + count + 1 + count + P) + tb, tensor.data(), 4 * P);
    sumsq_host_.assign(reinterpret_cast<const char*>(ts.data()),
                       reinterpret_cast<const char*>(ts.data()) + tb);
  }
  const size_t P = static_cast<size_t>(sumsq_pieces_);
  char* at = sumsq_table_;
  double* dev_out = reinterpret_cast<double*>(at + 8 * (P + count + 1));
  double* partial = dev_out + count;
  cuda::launch_sum_squares_multi(
      dev_out, partial,
      reinterpret_cast<const cuda::SumTensorDev*>(at + 8 * (P + count + 1 + count + P)),
      reinterpret_cast<const int32_t*>(at + 8 * (P + count + 1 + count + P) + tb),
      reinterpret_cast<const int64_t*>(at), reinterpret_cast<const int64_t*>(at + 8 * P),
      static_cast<int64_t>(P), static_cast<int64_t>(count), stream_);
  to_host(out, dev_out, count * sizeof(double));
}

bool CudaBackend::all_finite(const float* x, size_t n) {
  if (n == 0) return true;
  M6_CUDA_CHECK(cudaMemsetAsync(flag_, 0, sizeof(int), stream_));
  cuda::launch_all_finite(flag_, x, n, stream_);
  int bad = 0;
  to_host(&bad, flag_, sizeof(int));
  return bad == 0;
}

// The kernels of sum writing into device memory, no readback: may be
// captured into a graph (as router_aux_sums and routing_hash, backend_moe.cu).
void CudaBackend::sum_to(double* dst, const float* x, size_t n) {
  ensure_partials(n);
  cuda::launch_sum(dst, partial_, x, n, false, stream_);
}

bool CudaBackend::set_fp32_gemms(bool on) {
  const bool prev = fp32_gemms_;
  if (bf16_ && on != prev)  // fp32 GEMMs as in fp32 mode (no TF32, no reduced-precision sums)
    M6_CUBLAS_CHECK(cublasSetMathMode(blas_, on ? CUBLAS_PEDANTIC_MATH : CUBLAS_DEFAULT_MATH));
  fp32_gemms_ = on;
  return prev;
}

void CudaBackend::round_half(float* x, size_t n, HalfType t) {
  cuda::launch_round_half(x, n, t, stream_);
}

void CudaBackend::embedding_fwd(float* x, const int32_t* tokens, const float* wte, const float* wpe,
                                int B, int T, int d) {
  check_nonneg("embedding_fwd", B, T, d);
  cuda::launch_embedding_fwd(x, tokens, wte, wpe, B, T, d, stream_);
}

void CudaBackend::embedding_bwd(float* dwte, float* dwpe, const float* dx, const int32_t* tokens,
                                int B, int T, int d) {
  check_nonneg("embedding_bwd", B, T, d);
  cuda::launch_embedding_bwd(dwte, dwpe, dx, tokens, B, T, d, stream_);
}

void CudaBackend::layernorm_fwd(float* y, float* mean, float* rstd, const float* x, const float* w,
                                const float* b, int N, int d) {
  check_nonneg("layernorm_fwd", N, d);
  if (d == 0 && N > 0) fail(fmt("layernorm_fwd: width d (", d, ") must be > 0"));
  cuda::launch_layernorm_fwd(y, mean, rstd, x, w, b, N, d, stream_);
}

void CudaBackend::add_layernorm_fwd(float* x_out, float* y, float* mean, float* rstd,
                                    const float* x, const float* delta, const float* w,
                                    const float* b, int N, int d) {
  check_nonneg("add_layernorm_fwd", N, d);
  if (d == 0 && N > 0) fail(fmt("add_layernorm_fwd: width d (", d, ") must be > 0"));
  cuda::launch_add_layernorm_fwd(x_out, y, mean, rstd, x, delta, w, b, N, d, stream_);
}

void CudaBackend::add_layernorm_fwd_half(float* x_out, float* y, float* mean, float* rstd,
                                         const float* x, const float* delta, const float* w,
                                         const float* b, int N, int d, HalfType t) {
  check_nonneg("add_layernorm_fwd_half", N, d);
  if (d == 0 && N > 0) fail(fmt("add_layernorm_fwd_half: width d (", d, ") must be > 0"));
  cuda::launch_add_layernorm_fwd_half(x_out, y, mean, rstd, x, delta, w, b, N, d, t, stream_);
}

void CudaBackend::layernorm_bwd(float* dx, float* dw, float* db, const float* dy, const float* x,
                                const float* mean, const float* rstd, const float* w, int N,
                                int d) {
  check_nonneg("layernorm_bwd", N, d);
  cuda::launch_layernorm_bwd(dx, dw, db, dy, x, mean, rstd, w, N, d,
                             partials(cuda::colsum_scratch(N, d, 2)), stream_);
}

void CudaBackend::gelu_fwd(float* y, const float* x, size_t n) {
  cuda::launch_gelu_fwd(y, x, n, stream_);
}

void CudaBackend::gelu_bwd(float* dx, const float* x, const float* dy, size_t n) {
  cuda::launch_gelu_bwd(dx, x, dy, n, stream_);
}

void CudaBackend::gelu_fwd_half(float* y, float* x, size_t n, HalfType t) {
  cuda::launch_gelu_fwd_half(y, x, n, t, stream_);
}

void CudaBackend::gelu_bwd_half(float* dx, const float* x, float* dy, size_t n, HalfType t) {
  cuda::launch_gelu_bwd_half(dx, x, dy, n, t, stream_);
}

// Fused (flash-style) attention, kernels/attention.cu: att is the
// log-sum-exp [B,H,T], datt the scratch D [B,H,T].
Backend::AttentionBuffers CudaBackend::attention_buffers(int B, int T, int H) const {
  return flash_attention_buffers(B, T, H);
}

// On bf16 tensor cores when the GEMMs are (the model then holds qkv, out
// and dout as bf16 values) and the head size allows; else fp32.
bool CudaBackend::attention_on_tensor_cores(int H, int d) const {
  return half_gemms() && cuda::flash_attention_tc_supported(d / H);
}

void CudaBackend::attention_fwd(float* out, float* att, const float* qkv, int B, int T, int H,
                                int d) {
  check_attention(B, T, H, d);
  if (attention_on_tensor_cores(H, d))
    cuda::launch_flash_attention_tc_fwd(out, att, qkv, B, T, H, d, stream_);
  else
    cuda::launch_flash_attention_fwd(out, att, qkv, B, T, H, d, stream_);
}

void CudaBackend::attention_bwd(float* dqkv, float* datt, const float* dout, const float* qkv,
                                const float* out, const float* att, int B, int T, int H, int d) {
  check_attention(B, T, H, d);
  if (attention_on_tensor_cores(H, d))
    cuda::launch_flash_attention_tc_bwd(dqkv, datt, dout, qkv, out, att, B, T, H, d, stream_);
  else
    cuda::launch_flash_attention_bwd(dqkv, datt, dout, qkv, out, att, B, T, H, d, stream_);
}

void CudaBackend::crossentropy_fwd(float* loss, float* probs, const float* logits,
                                   const int32_t* targets, int N, int V) {
  check_nonneg("crossentropy_fwd", N, V);
  cuda::launch_crossentropy_fwd(loss, probs, logits, targets, N, V, bad_sink(kBadCrossentropyFwd),
                                stream_);
}

void CudaBackend::crossentropy_bwd(float* dlogits, const float* probs, const int32_t* targets,
                                   float dscale, int N, int V) {
  check_nonneg("crossentropy_bwd", N, V);
  cuda::launch_crossentropy_bwd(dlogits, probs, targets, dscale, N, V, bad_sink(kBadCrossentropyBwd),
                                stream_);
}

void CudaBackend::adamw(float* p, const float* g, float* m, float* v, size_t n, const AdamArgs& a) {
  if (a.t < 1) fail(fmt("adamw: step t (", a.t, ") must be >= 1"));
  const double bc1 = 1.0 - std::pow(static_cast<double>(a.beta1), static_cast<double>(a.t));
  const double bc2 = 1.0 - std::pow(static_cast<double>(a.beta2), static_cast<double>(a.t));
  cuda::launch_adamw(p, g, m, v, n, a.lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.grad_scale,
                     bc1, bc2, stream_);
}

// One launch for every tensor. The table (pointers, sizes, chunks) is the
// same every step: it is uploaded again only when it changes, so a step
// allocates and copies nothing here. A graph reads the table it was
// captured with at every launch: a changed table after a capture goes to
// a new buffer, the old one retired.
void CudaBackend::adamw_multi(const AdamTensor* ts, size_t count, const AdamArgs& a) {
  if (a.t < 1) fail(fmt("adamw: step t (", a.t, ") must be >= 1"));
  std::vector<cuda::AdamTensorDev> table(count);
  std::vector<int32_t> chunk_tensor;
  std::vector<int64_t> chunk_start;
  for (size_t i = 0; i < count; ++i) {
    table[i] = {ts[i].p, ts[i].g, ts[i].m, ts[i].v, ts[i].n,
                static_cast<double>(ts[i].weight_decay)};
    for (size_t at = 0; at < ts[i].n; at += cuda::kAdamChunk) {
      chunk_tensor.push_back(static_cast<int32_t>(i));
      chunk_start.push_back(static_cast<int64_t>(at));
    }
  }
  const size_t tb = count * sizeof(cuda::AdamTensorDev);
  const size_t cb = chunk_tensor.size() * (sizeof(int32_t) + sizeof(int64_t));
  const bool same = tb == adam_table_host_.size() && cb + tb <= adam_table_bytes_ &&
                    std::memcmp(adam_table_host_.data(), table.data(), tb) == 0 &&
                    adam_chunks_ == static_cast<int64_t>(chunk_tensor.size());
  if (!same) {
    if (tb + cb + 16 > adam_table_bytes_ || adam_table_captured_) {
      char* fresh = static_cast<char*>(alloc(tb + cb + 16));
      retire(adam_table_);
      adam_table_ = fresh;
      adam_table_bytes_ = tb + cb + 16;
      adam_table_captured_ = false;
    }
    // Layout: [int64 starts][table][int32 tensors], each 8-byte aligned.
    const size_t sb = chunk_start.size() * sizeof(int64_t);
    to_device(adam_table_, chunk_start.data(), sb);
    to_device(adam_table_ + sb, table.data(), tb);
    to_device(adam_table_ + sb + tb, chunk_tensor.data(), chunk_tensor.size() * sizeof(int32_t));
    adam_table_host_.assign(reinterpret_cast<const char*>(table.data()),
                            reinterpret_cast<const char*>(table.data()) + tb);
    adam_chunks_ = static_cast<int64_t>(chunk_tensor.size());
  }
  const size_t sb = static_cast<size_t>(adam_chunks_) * sizeof(int64_t);
  const double bc1 = 1.0 - std::pow(static_cast<double>(a.beta1), static_cast<double>(a.t));
  const double bc2 = 1.0 - std::pow(static_cast<double>(a.beta2), static_cast<double>(a.t));
  cuda::launch_adamw_multi(reinterpret_cast<const cuda::AdamTensorDev*>(adam_table_ + sb),
                           reinterpret_cast<const int32_t*>(adam_table_ + sb + tb),
                           reinterpret_cast<const int64_t*>(adam_table_), adam_chunks_, a.lr,
                           a.beta1, a.beta2, a.eps, a.grad_scale, bc1, bc2, stream_);
  if (capturing_) adam_table_captured_ = true;
}

// Leading dimension of a stored row-major matrix: 0 -> its width (as cpu_dense.h).
int CudaBackend::resolve_ld(int ld, int width, const char* what) {
  if (ld == 0) return std::max(width, 1);
  if (ld < width)
    fail(fmt("gemm: ", what, " (", ld, ") is smaller than the stored row width (", width, ")"));
  return ld;
}

void CudaBackend::check_attention(int B, int T, int H, int d) {
  if (H <= 0 || d % H != 0) fail(fmt("attention: d (", d, ") must be divisible by H (", H, ")"));
  if (B < 0 || T < 0) fail(fmt("attention: negative shape B=", B, " T=", T));
  if (d / H > cuda::kFlashMaxHeadDim)
    fail(fmt("attention (cuda): head size d/H (", d, "/", H, " = ", d / H,
             ") is above the fused kernel's ", cuda::kFlashMaxHeadDim,
             "; use more heads (model.n_heads)"));
}

double CudaBackend::reduce(const float* x, size_t n, bool squares) {
  ensure_partials(n);
  cuda::launch_sum(scalars_, partial_, x, n, squares, stream_);
  double out = 0.0;
  to_host(&out, scalars_, sizeof(double));
  return out;
}

bool CudaBackend::grouped_refused(cublasStatus_t st) {
  if (st != CUBLAS_STATUS_NOT_SUPPORTED && st != CUBLAS_STATUS_INVALID_VALUE) return false;
  (half_gemms() ? grouped_half_refused_ : grouped_fp32_refused_) = true;
  log_warn(fmt("cuda backend: cublasGemmGroupedBatchedEx refused ",
               half_gemms() ? "the bf16 tensor-core compute type" : "fp32", " (",
               cublasGetStatusName(st), "); grouped expert GEMMs run one GEMM per expert"));
  return true;
}

}  // namespace cuda_impl

using cuda_impl::CudaBackend;

int cuda_device_count() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return 0;
  }
  return n;
}

std::string cuda_device_uuid(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return "";
  }
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 16; ++i) {
    const auto b = static_cast<unsigned char>(prop.uuid.bytes[i]);
    s += hex[b >> 4];
    s += hex[b & 15];
  }
  return s;
}

namespace {
// The CUDA backend under any wrappers (the op profiler, the recording twin).
CudaBackend* unwrap_cuda(Backend& be) {
  Backend* b = &be;
  while (Backend* w = b->wrapped()) b = w;
  return dynamic_cast<CudaBackend*>(b);
}
}  // namespace

cudaStream_t cuda_backend_stream(Backend& be) {
  auto* c = unwrap_cuda(be);
  if (c == nullptr)
    throw Error(fmt("expected the CUDA backend, got ", be.name(), " (a device communicator needs "
                    "the CUDA backend's stream)"));
  return c->stream();
}

void cuda_stall_stream(Backend& be, double seconds) {
  cuda::launch_stall(seconds, cuda_backend_stream(be));
}

int cuda_backend_device(Backend& be) {
  auto* c = unwrap_cuda(be);
  if (c == nullptr) throw Error(fmt("expected the CUDA backend, got ", be.name()));
  return c->device();
}

std::unique_ptr<Backend> make_cuda_backend(int device, const CudaBackendOptions& opt) {
  const int n = cuda_device_count();
  if (device < 0 || device >= n)
    throw Error(fmt("cuda backend: device ", device, " is not visible (", n,
                    " CUDA device(s) found; check CUDA_VISIBLE_DEVICES and the driver)"));
  return std::make_unique<CudaBackend>(device, opt);
}

}  // namespace m6
