// Launchers of the CUDA kernels of the backend: raw device pointers + stream,
// no shape checks (the entry points in backend_cuda.cu check shapes and throw
// with the values). Each launcher is named after its CPU twin in
// core/backend/cpu/ and has the same semantics; shapes as in backend.h.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/util/half_round.h"

namespace m6::cuda {

// Device-side record of the first bad index an op kind met (a token id >=
// vocab, an expert id outside [0,E)), kept until Backend::check_errors (or
// sync) reads it back and throws the CPU reference's message. "First" as on
// the CPU: the earliest launch that met one (`epoch`, a number the host gives
// each launch; later launches leave the record alone), and in it the
// smallest key in the CPU's order (the row for cross-entropy, slot-major
// s * N + n for moe_assign), whatever order the threads ran in: `first`
// packs (~key << 32 | value) and an atomicMax keeps the smallest key (0:
// none). limit (V or E), width (S for moe_assign, 1 otherwise) and n (N
// tokens) are the launch's, the same from each of its threads.
struct BadIndex {
  unsigned long long first;
  int epoch, limit, width, n;
};
// What a launch that can meet bad indices is given: its record and epoch (> 0).
struct BadSink {
  BadIndex* rec;
  int epoch;
};
#if defined(__CUDACC__)
__device__ inline void record_bad(BadSink s, int value, int key, int limit, int width, int n) {
  const int prev = atomicCAS(&s.rec->epoch, 0, s.epoch);
  if (prev != 0 && prev != s.epoch) return;  // an earlier launch's error is kept
  const unsigned long long packed =
      (static_cast<unsigned long long>(~static_cast<uint32_t>(key)) << 32) |
      static_cast<uint32_t>(value);
  atomicMax(&s.rec->first, packed);
  s.rec->limit = limit;
  s.rec->width = width;
  s.rec->n = n;
}
#endif

// ---- dense (dense.cu) ---------------------------------------------------------
// C[m,n] (row-major, ldc, stride_c, batch) = beta * C, with beta == 0 writing 0:
// the k == 0 case of gemm, which cuBLAS is not asked to handle.
void launch_gemm_scale_c(float* c, int ldc, int64_t stride_c, int m, int n, int batch, float beta,
                         cudaStream_t st);
void launch_add_bias(float* y, const float* b, int n, int c, cudaStream_t st);
// partial: colsum_scratch(n, c, 1) doubles of scratch (colsum.cuh)
void launch_bias_grad(float* db, const float* dy, int n, int c, double* partial, cudaStream_t st);
void launch_add(float* y, const float* a, const float* b, size_t n, cudaStream_t st);
void launch_axpy(float* y, float alpha, const float* x, size_t n, cudaStream_t st);
void launch_scale(float* x, float s, size_t n, cudaStream_t st);
// out[0] = sum x (squares: sum x^2) in double; partial[] holds
// reduce_partials(n) doubles of scratch. Deterministic (fixed block order).
size_t reduce_partials(size_t n);
void launch_sum(double* out, double* partial, const float* x, size_t n, bool squares,
                cudaStream_t st);
// Sums of squares of many tensors in one pass (the gradient norm over every
// chunk: one launch pair and one copy back instead of one per tensor).
// Tensor t is ts[t].x[0..n), cut into pieces of kSumPiece elements: piece c
// is elements [piece_start[c], +kSumPiece) of tensor piece_tensor[c], a
// tensor's pieces consecutive, tensor t's being [first_piece[t],
// first_piece[t+1]). out[t] = the sum in order of its pieces' partial sums
// (double; partial: [pieces] scratch). Deterministic.
struct SumTensorDev {
  const float* x;
  int64_t n;
};
constexpr int64_t kSumPiece = 4096;
void launch_sum_squares_multi(double* out, double* partial, const SumTensorDev* ts,
                              const int32_t* piece_tensor, const int64_t* piece_start,
                              const int64_t* first_piece, int64_t pieces, int64_t count,
                              cudaStream_t st);

// *bad = 1 if some element is NaN or +-Inf (bad must be zeroed before)
void launch_all_finite(int* bad, const float* x, size_t n, cudaStream_t st);

// x[i] = round_half(x[i], t) (core/util/half_round.h): bf16/fp16 RNE in place
void launch_round_half(float* x, size_t n, HalfType t, cudaStream_t st);

// Bias (and GELU) of grouped linear layers (linear_fwd_grouped): group i
// covers rows [row[i], row[i] + prefix[i+1] - prefix[i]) of y[., out]; y +=
// bias[i] (null: none), then act = gelu_tanh(y) when act is not null.
// prefix[count] = the total rows.
void launch_grouped_bias_act(float* y, float* act, const float* const* bias,
                             const int64_t* row, const int64_t* prefix, int count,
                             int64_t total_rows, int out, cudaStream_t st);

// Bias gradients of grouped linear layers (linear_bwd_grouped): db[i][c] +=
// the sum over group i's rows [row[i], row[i] + rows[i]) of dy[., c] (db[i]
// null: skipped). One launch for every group; each column summed in row order
// in double, as bias_grad (deterministic).
// The bias gradients of `count` groups (colsum.cuh, grouped): max_rows the
// most rows of a group; partial: colsum_scratch(max_rows, c, count) doubles.
void launch_grouped_bias_grad(float* const* db, const float* dy, const int64_t* row,
                              const int64_t* rows, int count, int c, int max_rows,
                              double* partial, cudaStream_t st);

// ---- optimizer (adamw.cu) -------------------------------------------------------
void launch_adamw(float* p, const float* g, float* m, float* v, size_t n, double lr, double b1,
                  double b2, double eps, double wd, double grad_scale, double bc1, double bc2,
                  cudaStream_t st);

// Multi-tensor AdamW: one launch for a table of tensors (device memory), cut
// into chunks of kAdamChunk elements; chunk c is elements
// [chunk_start[c], +kAdamChunk) of tensor chunk_tensor[c]. Same arithmetic as
// launch_adamw, weight decay per tensor.
struct AdamTensorDev {
  float* p;
  const float* g;
  float* m;
  float* v;
  size_t n;
  double weight_decay;
};
constexpr int64_t kAdamChunk = 16384;
void launch_adamw_multi(const AdamTensorDev* ts, const int32_t* chunk_tensor,
                        const int64_t* chunk_start, int64_t chunks, double lr, double b1,
                        double b2, double eps, double grad_scale, double bc1, double bc2,
                        cudaStream_t st);

// ---- transformer (transformer.cu) ----------------------------------------------
void launch_embedding_fwd(float* x, const int32_t* tokens, const float* wte, const float* wpe,
                          int B, int T, int d, cudaStream_t st);
void launch_embedding_bwd(float* dwte, float* dwpe, const float* dx, const int32_t* tokens, int B,
                          int T, int d, cudaStream_t st);
void launch_layernorm_fwd(float* y, float* mean, float* rstd, const float* x, const float* w,
                          const float* b, int N, int d, cudaStream_t st);
// xo = x + delta, then layernorm_fwd of xo (one pass per row)
void launch_add_layernorm_fwd(float* xo, float* y, float* mean, float* rstd, const float* x,
                              const float* delta, const float* w, const float* b, int N, int d,
                              cudaStream_t st);
// Backend::add_layernorm_fwd_half: the same with the sum and y rounded to t.
void launch_add_layernorm_fwd_half(float* xo, float* y, float* mean, float* rstd, const float* x,
                                   const float* delta, const float* w, const float* b, int N,
                                   int d, HalfType t, cudaStream_t st);
// partial: colsum_scratch(N, d, 2) doubles of scratch (colsum.cuh)
void launch_layernorm_bwd(float* dx, float* dw, float* db, const float* dy, const float* x,
                          const float* mean, const float* rstd, const float* w, int N, int d,
                          double* partial, cudaStream_t st);
void launch_gelu_fwd(float* y, const float* x, size_t n, cudaStream_t st);
void launch_gelu_bwd(float* dx, const float* x, const float* dy, size_t n, cudaStream_t st);
// Backend::gelu_fwd_half / gelu_bwd_half: the rounding and the GELU in one pass.
void launch_gelu_fwd_half(float* y, float* x, size_t n, HalfType t, cudaStream_t st);
void launch_gelu_bwd_half(float* dx, const float* x, float* dy, size_t n, HalfType t,
                          cudaStream_t st);
void launch_crossentropy_fwd(float* loss, float* probs, const float* logits,
                             const int32_t* targets, int N, int V, BadSink bad,
                             cudaStream_t st);
void launch_crossentropy_bwd(float* dlogits, const float* probs, const int32_t* targets,
                             float dscale, int N, int V, BadSink bad, cudaStream_t st);

// ---- fused causal attention (attention.cu) ---------------------------------------
// Flash-style: tiled, online softmax, no [T,T] buffer. Forward writes out[B,T,d]
// and lse[B,H,T] (log-sum-exp of each query row's scaled scores); backward
// writes every element of dqkv[B,T,3d] from dout, qkv, out and lse, with
// delta[B,H,T] as scratch (D = rowsum(dout * out)); deterministic (no atomics).
// Head size dh = d/H <= kFlashMaxHeadDim; any T.
constexpr int kFlashMaxHeadDim = 256;
void launch_flash_attention_fwd(float* out, float* lse, const float* qkv, int B, int T, int H,
                                int d, cudaStream_t st);
void launch_flash_attention_bwd(float* dqkv, float* delta, const float* dout, const float* qkv,
                                const float* out, const float* lse, int B, int T, int H, int d,
                                cudaStream_t st);
// The same on bf16 tensor cores (attention_tc_kernels.cuh; sm_80+): same
// buffers and semantics; q, k, v, dout converted to bf16 (exact when they hold
// bf16 values, as under precision.compute bf16), P and dS rounded to bf16 as
// operands of the products, everything else fp32. flash_attention_tc_supported:
// dh a multiple of 16, <= 128, and the current device sm_80+ with the shared
// memory the kernels need.
bool flash_attention_tc_supported(int dh);
void launch_flash_attention_tc_fwd(float* out, float* lse, const float* qkv, int B, int T, int H,
                                   int d, cudaStream_t st);
void launch_flash_attention_tc_bwd(float* dqkv, float* delta, const float* dout, const float* qkv,
                                   const float* out, const float* lse, int B, int T, int H, int d,
                                   cudaStream_t st);

// ---- mixture of experts (moe.cu) ------------------------------------------------
void launch_router_fwd(float* probs, float* lse, int32_t* expert, float* gate,
                       const float* logits, int N, int E, int G, int K, bool normalize,
                       cudaStream_t st);
void launch_moe_assign(int32_t* pos, int32_t* count, int32_t* demand, const int32_t* expert,
                       int N, int S, int E, int capacity, BadSink bad, cudaStream_t st);
void launch_moe_permute(float* xp, const float* x, const int32_t* expert, const int32_t* pos,
                        const int32_t* offset, int N, int S, int d, cudaStream_t st);
void launch_moe_permute_bwd(float* dx, const float* dxp, const int32_t* expert,
                            const int32_t* pos, const int32_t* offset, int N, int S, int d,
                            cudaStream_t st);
void launch_moe_unpermute(float* y, const float* yp, const float* gate, const int32_t* expert,
                          const int32_t* pos, const int32_t* offset, int N, int S, int d,
                          cudaStream_t st);
void launch_moe_unpermute_bwd(float* dyp, float* dgate, const float* dy, const float* yp,
                              const float* gate, const int32_t* expert, const int32_t* pos,
                              const int32_t* offset, int N, int S, int d, cudaStream_t st);
// *dst = the wrapping sum over slots i < total of routing_slot_hash(i,
// expert[i], pos[i] >= 0) (core/util/splitmix.h): zeroed, then one atomic add
// per warp; integer addition mod 2^64 is order-free, so the bits are those of
// the CPU's sequential sum.
void launch_routing_hash(uint64_t* dst, const int32_t* expert, const int32_t* pos, int64_t total,
                         cudaStream_t st);
// pe[E] = sum_n probs[n,e] and zsum[0] = sum lse^2, both in double
void launch_router_aux_sums(double* pe, double* zsum, const float* probs, const float* lse, int N,
                            int E, int G, cudaStream_t st);
void launch_router_bwd(float* dlogits, const float* dgate, const float* probs, const float* lse,
                       const int32_t* expert, const float* gate, const int32_t* demand,
                       float aux_coef, float z_coef, int N, int E, int G, int K, bool normalize,
                       cudaStream_t st);

// ---- communication helpers (convert.cu) ------------------------------------------
// Half-precision wire of the NCCL communicator: h[i] = half(x[i] * scale),
// rounded to nearest even (bf16 when `bf16`, else IEEE fp16), as
// core/parallel/half.h does on the host; and back, x[i] = float(h[i]) * scale.
void launch_f32_to_half(uint16_t* h, const float* x, size_t n, bool bf16, float scale,
                        cudaStream_t st);
void launch_half_to_f32(float* x, const uint16_t* h, size_t n, bool bf16, float scale,
                        cudaStream_t st);
// Test hook: one thread spinning on the GPU clock for `seconds`, which stalls
// the stream (the timeout test of the NCCL communicator).
void launch_stall(double seconds, cudaStream_t st);

}  // namespace m6::cuda
