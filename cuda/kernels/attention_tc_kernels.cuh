// The fused causal attention on bf16 tensor cores (nvcuda::wmma, 16x16x16
// bf16 fragments, fp32 accumulators; sm_80+): the same algorithm, buffers
// and semantics as the fp32 kernels of attention_kernels.cuh (which explain
// the flash-attention scheme: online softmax, lse[B,H,T] saved, D =
// rowsum(dO * O) in the scratch, deterministic backward in two kernels that
// each own their output rows), with the matrix products on tensor cores.
//
// Used when the backend's GEMMs run on bf16 tensor cores (precision.compute
// bf16: q, k, v, out and dout hold bf16 values already, so converting them
// to bf16 is exact) and the head size dh is a multiple of 16, <= 128.
// Precision, as FlashAttention: scores, softmax statistics (max, sum, lse),
// D and every accumulation in fp32; the probabilities P (forward: the
// unnormalised exp(s - m) <= 1; backward: P^T of dV = P^T dO) and dS are
// rounded to bf16 only as operands of the tensor-core products. The row
// sum l adds the fp32 values.
//
// Tiling (all three kernels): a block of kThreads = 128 threads (4 warps)
// owns a tile of kTile = 64 rows (queries, or keys for dK/dV); warp w owns
// rows 16w..16w+15 and computes its 16 x 64 score tile against the other
// operand's tile of 64 as 4 x (dh/16) fragment products, then the 16 x dh
// product of P (or dS) with the 64 x dh tile. Lane l of the warp handles
// row l/2 of the warp's 16 and the columns (l%2) + 2j of the fp32 tiles:
// softmax, masking and the fp32 accumulators of out / dK, dV / dQ live in
// its registers (o[DM/2] etc.), never inside a fragment (the fragments'
// element layout is unspecified: all element access goes through shared
// memory). Tiles on the diagonal skip the 16-column blocks that the causal
// mask empties for the warp.
//
// Shared memory (dynamic, carved from one float array; every wmma pointer
// 32-byte aligned, ldm a multiple of 8 bf16 / 4 floats):
//   bf16 tiles  [kTile][DM + 8]  Q, K, V (forward); K, V, Q, dO (dK/dV);
//                                Q, dO, K, V (dQ); rows outside [0,T) zero,
//                                the +8 padding shifts rows across banks
//   fp32 scratch per warp [16][max(kTile, DM) + 4]: scores, dP, and the
//                                16 x dh products before they are added up
//                                (1 per warp forward, 2 backward)
//   bf16 P / dS per warp  [16][kTile + 8]  (forward P; dK/dV P^T and dS^T;
//                                dQ dS)
//   fp32 lse, D [kTile]          (dK/dV: of the query tile)
// A wmma store is followed by __syncwarp() before any lane reads the tile,
// and lanes' reads by __syncwarp() (or the loop's __syncthreads()) before
// the next store into it; lanes' writes of P / dS by __syncwarp() before the
// fragment loads.
//
// Device code only: attention.cu includes it after <mma.h> and <cuda_bf16.h>;
// tests/cuda/emulated runs the same source on the host (cuda_emulation.h and
// wmma_emulation.h define the built-ins, __nv_bfloat16 and nvcuda::wmma).
#pragma once
#include "cuda/kernels/attention_kernels.cuh"

// wmma pointers must be 32-byte aligned: the carving below keeps every
// region's offset a multiple of 32 bytes from this base.
#ifndef M6_FLASH_TC_SHARED
#define M6_FLASH_TC_SHARED(name) extern __shared__ __align__(128) float name[]
#endif

namespace m6::cuda::flash_tc {

using flash::block_pos;
using flash::BlockPos;
using flash::FlashParams;
using flash::stage_row_stats;
using bf16 = __nv_bfloat16;
namespace wmma = nvcuda::wmma;

constexpr int kTile = 64;  // rows per block tile, columns per step
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kF = 16;            // wmma fragment edge
constexpr int kLdP = kTile + 8;   // bf16 P / dS rows
constexpr int kMaxHeadDim = 128;  // dh multiple of 16, <= 128
constexpr int kCols = kTile / 2;  // columns per lane of a 64-wide tile

// Row lengths (elements) of the bf16 tiles and the fp32 scratch; the
// variables for device code (constexpr host functions are not callable there).
constexpr int ld_tile(int dm) { return dm + 8; }
constexpr int ld_scratch(int dm) { return (dm > kTile ? dm : kTile) + 4; }
template <int DM>
constexpr int kLdTile = ld_tile(DM);
template <int DM>
constexpr int kLdScratch = ld_scratch(DM);

using FragA = wmma::fragment<wmma::matrix_a, kF, kF, kF, bf16, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, kF, kF, kF, bf16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, kF, kF, kF, bf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, kF, kF, kF, float>;

// A row of output blocks: C_n[16][16] = A[16][16 ks] . B_n for n in [n0, n1)
// (NMAX >= n1), C_n at C + 16 n (fp32, row-major, ldc). A row-major (lda),
// each of its 16-column slices loaded once for all n. BT false: B row-major
// [16 ks][16 NMAX] (ldb), B_n its columns 16n..; BT true: B given as its
// transpose Bt[16 NMAX][16 ks] row-major (ldb), B_n = (rows 16n.. of Bt)^T,
// i.e. C_n = A . Bt_n^T. Accumulators: one fragment per n, in registers.
template <bool BT, int NMAX>
__device__ inline void mma_row(float* C, int ldc, const bf16* A, int lda, const bf16* B, int ldb,
                               int n0, int n1, int ks) {
  FragC acc[NMAX];
#pragma unroll
  for (int n = 0; n < NMAX; n++) wmma::fill_fragment(acc[n], 0.0f);
  for (int k = 0; k < ks; k++) {
    FragA a;
    wmma::load_matrix_sync(a, A + k * kF, lda);
#pragma unroll
    for (int n = 0; n < NMAX; n++) {
      if (n < n0 || n >= n1) continue;
      if constexpr (BT) {
        FragBCol b;
        wmma::load_matrix_sync(b, B + n * kF * ldb + k * kF, ldb);
        wmma::mma_sync(acc[n], a, b, acc[n]);
      } else {
        FragBRow b;
        wmma::load_matrix_sync(b, B + k * kF * ldb + n * kF, ldb);
        wmma::mma_sync(acc[n], a, b, acc[n]);
      }
    }
  }
#pragma unroll
  for (int n = 0; n < NMAX; n++)
    if (n >= n0 && n < n1) wmma::store_matrix_sync(C + n * kF, acc[n], ldc, wmma::mem_row_major);
}

// dst[kTile][DM+8] (bf16) <- rows t0.. of src (stride, dh columns); rows
// outside [0,T) zero. Columns dh..DM are never read (products stop at dh).
template <int DM>
__device__ inline void load_tile(bf16* dst, const float* src, int64_t stride, int t0, int T,
                                 int dh) {
  for (int e = threadIdx.x; e < kTile * dh; e += kThreads) {
    const int r = e / dh, i = e % dh, t = t0 + r;
    dst[r * kLdTile<DM> + i] =
        __float2bfloat16(t < T ? src[static_cast<int64_t>(t) * stride + i] : 0.0f);
  }
}

// Carving of the shared array: n bf16 (or floats) from `at`, advancing it.
struct Carve {
  float* at;
  __device__ bf16* bf(int n) {
    bf16* r = reinterpret_cast<bf16*>(at);
    at += n / 2;  // n even
    return r;
  }
  __device__ float* f(int n) {
    float* r = at;
    at += n;
    return r;
  }
};

// ---- forward ---------------------------------------------------------------------
// Block per (query tile, b, h). Shared: Q, K, V tiles; per warp one fp32
// scratch (scores, then P V) and one bf16 P.
template <int DM>
__global__ void __launch_bounds__(kThreads) flash_tc_fwd_kernel(FlashParams p) {
  constexpr int LD = kLdTile<DM>, LS = kLdScratch<DM>;
  M6_FLASH_TC_SHARED(sm);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  Carve cv{sm};
  bf16* Qs = cv.bf(kTile * LD);
  bf16* Ks = cv.bf(kTile * LD);
  bf16* Vs = cv.bf(kTile * LD);
  float* Sw = cv.f(kWarps * kF * LS) + warp * kF * LS;
  bf16* Pw = cv.bf(kWarps * kF * kLdP) + warp * kF * kLdP;
  const BlockPos bp = block_pos(p);
  const int kd = p.dh / kF;
  const int r = lane / 2, half = lane % 2;  // the lane's row of the warp's 16, its columns
  const int q0 = bp.tile * kTile, qw = q0 + warp * kF, q = qw + r;
  const int qlim = min(q, p.T - 1);  // rows past T compute row T-1's keys, never stored
  const int64_t tok0 = static_cast<int64_t>(bp.b) * p.T;
  const float* qkv = p.qkv + tok0 * p.row + bp.h * p.dh;
  load_tile<DM>(Qs, qkv, p.row, q0, p.T, p.dh);

  float o[DM / 2];
#pragma unroll
  for (int j = 0; j < DM / 2; j++) o[j] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  const int key_end = min(q0 + kTile, p.T);
  for (int k0 = 0; k0 < key_end; k0 += kTile) {
    __syncthreads();  // previous tile's K, V fully used (and Q loaded)
    load_tile<DM>(Ks, qkv + p.d, p.row, k0, p.T, p.dh);
    load_tile<DM>(Vs, qkv + 2 * p.d, p.row, k0, p.T, p.dh);
    __syncthreads();
    // key blocks of 16 that any of the warp's rows sees (diagonal: up to its own)
    const int nb = k0 == q0 ? warp + 1 : kTile / kF;
    mma_row<true, kTile / kF>(Sw, LS, Qs + warp * kF * LD, LD, Ks, LD, 0, nb, kd);  // S
    __syncwarp();  // S visible to every lane
    float s[kCols];
    float mt = -INFINITY;
#pragma unroll
    for (int j = 0; j < kCols; j++) {
      const int c = half + 2 * j;
      s[j] = k0 + c <= qlim ? Sw[r * LS + c] * p.scale : -INFINITY;
      mt = fmaxf(mt, s[j]);
    }
    const float mn = fmaxf(m, fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1)));
    const float alpha = expf(m - mn);  // 0 on the first tile (m = -inf); mn finite (key 0)
    float lt = 0.0f;
#pragma unroll
    for (int j = 0; j < kCols; j++) {
      const float e = expf(s[j] - mn);  // masked: 0
      Pw[r * kLdP + half + 2 * j] = __float2bfloat16(e);
      lt += e;
    }
    l = l * alpha + lt + __shfl_xor_sync(0xffffffffu, lt, 1);
    m = mn;
    __syncwarp();  // P visible, S read: the scratch takes P V
    mma_row<false, DM / kF>(Sw, LS, Pw, kLdP, Vs, LD, 0, kd, nb);  // P V
    __syncwarp();
#pragma unroll
    for (int j = 0; j < DM / 2; j++)
      if (j < kd * kF / 2) o[j] = o[j] * alpha + Sw[r * LS + half + 2 * j];
  }
  if (q < p.T) {
    const float inv = 1.0f / l;
    float* out = p.o + (tok0 + q) * p.d + bp.h * p.dh;
#pragma unroll
    for (int j = 0; j < DM / 2; j++)
      if (j < kd * kF / 2) out[half + 2 * j] = o[j] * inv;
    if (half == 0) p.lse_out[(static_cast<int64_t>(bp.b) * p.H + bp.h) * p.T + q] = m + logf(l);
  }
}

// ---- backward ----------------------------------------------------------------------
// D = rowsum(dO * O): flash::flash_bwd_delta_kernel (fp32, CUDA cores).

// dK, dV of one key tile: block per (key tile, b, h), looping over the query
// tiles from the diagonal on; warp w owns keys 16w.. of the tile. Per query
// tile: S^T = K_w Q^T and dP^T = V_w dO^T (scratch 1, 2), P^T = exp(scale
// S^T - lse), dS^T = P^T (dP^T - D) (bf16), then dV_w += P^T dO (scratch 1)
// and dK_w += dS^T Q (scratch 2) into the lanes' registers.
// Shared: K, V, Q, dO tiles; per warp 2 fp32 scratch, bf16 P^T and dS^T;
// lse, D of the query tile.
template <int DM>
__global__ void __launch_bounds__(kThreads) flash_tc_bwd_dkdv_kernel(FlashParams p) {
  constexpr int LD = kLdTile<DM>, LS = kLdScratch<DM>;
  M6_FLASH_TC_SHARED(sm);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  Carve cv{sm};
  bf16* Ks = cv.bf(kTile * LD);
  bf16* Vs = cv.bf(kTile * LD);
  bf16* Qs = cv.bf(kTile * LD);
  bf16* dOs = cv.bf(kTile * LD);
  float* S1 = cv.f(kWarps * kF * LS) + warp * kF * LS;
  float* S2 = cv.f(kWarps * kF * LS) + warp * kF * LS;
  bf16* Pw = cv.bf(kWarps * kF * kLdP) + warp * kF * kLdP;
  bf16* dSw = cv.bf(kWarps * kF * kLdP) + warp * kF * kLdP;
  float* Ls = cv.f(kTile);
  float* Ds = cv.f(kTile);
  const BlockPos bp = block_pos(p);
  const int kd = p.dh / kF;
  const int r = lane / 2, half = lane % 2;
  const int k0 = bp.tile * kTile, kc = k0 + warp * kF + r;  // the lane's key
  const int64_t tok0 = static_cast<int64_t>(bp.b) * p.T;
  const int64_t bh = static_cast<int64_t>(bp.b) * p.H + bp.h;
  const float* qkv = p.qkv + tok0 * p.row + bp.h * p.dh;
  const float* dout = p.dout + tok0 * p.d + bp.h * p.dh;
  load_tile<DM>(Ks, qkv + p.d, p.row, k0, p.T, p.dh);
  load_tile<DM>(Vs, qkv + 2 * p.d, p.row, k0, p.T, p.dh);
  const bf16* Kw = Ks + warp * kF * LD;
  const bf16* Vw = Vs + warp * kF * LD;

  float dk[DM / 2], dv[DM / 2];
#pragma unroll
  for (int j = 0; j < DM / 2; j++) dk[j] = dv[j] = 0.0f;
  for (int q0 = k0; q0 < p.T; q0 += kTile) {
    __syncthreads();  // previous query tile fully used (and K, V loaded)
    load_tile<DM>(Qs, qkv, p.row, q0, p.T, p.dh);
    load_tile<DM>(dOs, dout, p.d, q0, p.T, p.dh);
    stage_row_stats(Ls, Ds, p, bh, q0, kTile);
    __syncthreads();
    // query blocks of 16 that see any of the warp's keys (diagonal: from its own on)
    const int n0 = q0 == k0 ? warp : 0, ks = kTile / kF - n0;
    mma_row<true, kTile / kF>(S1, LS, Kw, LD, Qs, LD, n0, kTile / kF, kd);   // S^T
    mma_row<true, kTile / kF>(S2, LS, Vw, LD, dOs, LD, n0, kTile / kF, kd);  // dP^T
    __syncwarp();
#pragma unroll
    for (int j = 0; j < kCols; j++) {
      const int c = half + 2 * j, t = q0 + c;  // column c: query t
      float pr = 0.0f, ds = 0.0f;
      if (t < p.T && kc <= t) {
        pr = expf(S1[r * LS + c] * p.scale - Ls[c]);
        ds = pr * (S2[r * LS + c] - Ds[c]);
      }
      Pw[r * kLdP + c] = __float2bfloat16(pr);
      dSw[r * kLdP + c] = __float2bfloat16(ds);
    }
    __syncwarp();  // P^T, dS^T visible; S^T, dP^T read
    mma_row<false, DM / kF>(S1, LS, Pw + n0 * kF, kLdP, dOs + n0 * kF * LD, LD, 0, kd, ks);  // dV
    mma_row<false, DM / kF>(S2, LS, dSw + n0 * kF, kLdP, Qs + n0 * kF * LD, LD, 0, kd, ks);  // dK
    __syncwarp();
#pragma unroll
    for (int j = 0; j < DM / 2; j++) {
      if (j < kd * kF / 2) {
        dv[j] += S1[r * LS + half + 2 * j];
        dk[j] += S2[r * LS + half + 2 * j];
      }
    }
  }
  if (kc < p.T) {
    float* dst = p.dqkv + (tok0 + kc) * p.row + bp.h * p.dh;
#pragma unroll
    for (int j = 0; j < DM / 2; j++) {
      if (j < kd * kF / 2) {
        dst[p.d + half + 2 * j] = dk[j] * p.scale;
        dst[2 * p.d + half + 2 * j] = dv[j];
      }
    }
  }
}

// dQ of one query tile: block per (query tile, b, h), looping over the key
// tiles up to the diagonal; warp w owns queries 16w.. of the tile. Per key
// tile: S = Q_w K^T, dP = dO_w V^T (scratch 1, 2), dS = P (dP - D) (bf16),
// then dQ_w += dS K (scratch 1) into the lanes' registers.
// Shared: Q, dO, K, V tiles; per warp 2 fp32 scratch and bf16 dS.
template <int DM>
__global__ void __launch_bounds__(kThreads) flash_tc_bwd_dq_kernel(FlashParams p) {
  constexpr int LD = kLdTile<DM>, LS = kLdScratch<DM>;
  M6_FLASH_TC_SHARED(sm);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  Carve cv{sm};
  bf16* Qs = cv.bf(kTile * LD);
  bf16* dOs = cv.bf(kTile * LD);
  bf16* Ks = cv.bf(kTile * LD);
  bf16* Vs = cv.bf(kTile * LD);
  float* S1 = cv.f(kWarps * kF * LS) + warp * kF * LS;
  float* S2 = cv.f(kWarps * kF * LS) + warp * kF * LS;
  bf16* dSw = cv.bf(kWarps * kF * kLdP) + warp * kF * kLdP;
  const BlockPos bp = block_pos(p);
  const int kd = p.dh / kF;
  const int r = lane / 2, half = lane % 2;
  const int q0 = bp.tile * kTile, q = q0 + warp * kF + r;
  const int64_t tok0 = static_cast<int64_t>(bp.b) * p.T;
  const int64_t bh = static_cast<int64_t>(bp.b) * p.H + bp.h;
  const float* qkv = p.qkv + tok0 * p.row + bp.h * p.dh;
  load_tile<DM>(Qs, qkv, p.row, q0, p.T, p.dh);
  load_tile<DM>(dOs, p.dout + tok0 * p.d + bp.h * p.dh, p.d, q0, p.T, p.dh);
  const float lse = q < p.T ? p.lse[bh * p.T + q] : 0.0f;
  const float D = q < p.T ? p.delta[bh * p.T + q] : 0.0f;
  const bf16* Qw = Qs + warp * kF * LD;
  const bf16* dOw = dOs + warp * kF * LD;

  float dq[DM / 2];
#pragma unroll
  for (int j = 0; j < DM / 2; j++) dq[j] = 0.0f;
  const int key_end = min(q0 + kTile, p.T);
  for (int k0 = 0; k0 < key_end; k0 += kTile) {
    __syncthreads();  // previous key tile fully used (and Q, dO loaded)
    load_tile<DM>(Ks, qkv + p.d, p.row, k0, p.T, p.dh);
    load_tile<DM>(Vs, qkv + 2 * p.d, p.row, k0, p.T, p.dh);
    __syncthreads();
    const int nb = k0 == q0 ? warp + 1 : kTile / kF;
    mma_row<true, kTile / kF>(S1, LS, Qw, LD, Ks, LD, 0, nb, kd);   // S
    mma_row<true, kTile / kF>(S2, LS, dOw, LD, Vs, LD, 0, nb, kd);  // dP
    __syncwarp();
#pragma unroll
    for (int j = 0; j < kCols; j++) {
      const int c = half + 2 * j;
      float ds = 0.0f;
      if (q < p.T && k0 + c <= q) {
        const float pr = expf(S1[r * LS + c] * p.scale - lse);
        ds = pr * (S2[r * LS + c] - D);
      }
      dSw[r * kLdP + c] = __float2bfloat16(ds);
    }
    __syncwarp();
    mma_row<false, DM / kF>(S1, LS, dSw, kLdP, Ks, LD, 0, kd, nb);  // dS K
    __syncwarp();
#pragma unroll
    for (int j = 0; j < DM / 2; j++)
      if (j < kd * kF / 2) dq[j] += S1[r * LS + half + 2 * j];
  }
  if (q < p.T) {
    float* dst = p.dqkv + (tok0 + q) * p.row + bp.h * p.dh;
#pragma unroll
    for (int j = 0; j < DM / 2; j++)
      if (j < kd * kF / 2) dst[half + 2 * j] = dq[j] * p.scale;
  }
}

// ---- sizes -----------------------------------------------------------------------------
constexpr size_t tile_bf16(int dm) { return static_cast<size_t>(kTile) * ld_tile(dm); }
constexpr size_t scratch_floats(int dm) {
  return static_cast<size_t>(kWarps) * kF * ld_scratch(dm);
}
constexpr size_t pw_bf16() { return static_cast<size_t>(kWarps) * kF * kLdP; }

// Dynamic shared memory of each kernel, in floats (bf16 counted two to a float).
constexpr size_t fwd_shared_floats(int dm) {
  return (3 * tile_bf16(dm) + pw_bf16()) / 2 + scratch_floats(dm);
}
constexpr size_t dkdv_shared_floats(int dm) {
  return (4 * tile_bf16(dm) + 2 * pw_bf16()) / 2 + 2 * scratch_floats(dm) + 2 * kTile;
}
constexpr size_t dq_shared_floats(int dm) {
  return (4 * tile_bf16(dm) + pw_bf16()) / 2 + 2 * scratch_floats(dm);
}

// Whether the tensor-core kernels take head size dh.
constexpr bool supports(int dh) { return dh > 0 && dh % kF == 0 && dh <= kMaxHeadDim; }

// FlashParams with this file's tiles.
inline FlashParams make_params(int B, int T, int H, int d) {
  FlashParams p = flash::make_params(B, T, H, d);
  p.tiles = (T + kTile - 1) / kTile;
  return p;
}

// The instantiation for head size dh (supports(dh)): the smallest DM >= dh.
template <class F32, class F64, class F128>
void dispatch(int dh, F32 f32, F64 f64, F128 f128) {
  if (dh <= 32)
    f32();
  else if (dh <= 64)
    f64();
  else
    f128();
}

}  // namespace m6::cuda::flash_tc
