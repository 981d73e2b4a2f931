// The kernels of the CUDA backend's fused causal attention, flash-attention
// style (twin of attention_fwd / attention_bwd in core/backend/cpu/cpu_transformer.h):
// tiled over query and key blocks with an online softmax, so no [T,T] buffer
// exists. Forward saves only the output and the log-sum-exp of each query
// row's scaled scores, lse[B,H,T]; backward recomputes the probabilities
// tile by tile from q, k and lse.
//
// Backward is deterministic (no floating-point atomics): with
//   P = exp(S - lse), dP = dO V^T, D = rowsum(dO * O) = rowsum(P * dP),
//   dS = P * (dP - D)
// one kernel owns a block of keys and loops over the query blocks in order
// (dK = scale * dS^T Q, dV = P^T dO), another owns a block of queries and
// loops over the key blocks in order (dQ = scale * dS K); each output element
// is written once by one thread.
//
// fp32 throughout (CUDA cores; inputs and outputs are the backend's float
// buffers). Tiles: kTile queries x kTile keys per step, 256 threads; a query
// (or key) row of a tile is handled by kLanes consecutive lanes of one warp,
// each lane taking every kLanes-th key (or query) for the dot products and
// every kLanes-th column for the accumulators. Head sizes up to 256
// (kFlashMaxHeadDim in kernels.h) through four instantiations (DM = 32, 64, 128, 256): the
// head is zero-padded to DM columns in shared memory.
//
// Device code only, no CUDA header: cuda/kernels/attention.cu includes it
// with nvcc and launches the kernels; tests/cuda/emulated runs the same
// source on the host (M6_FLASH_SHARED and the CUDA built-ins defined there).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#ifndef M6_FLASH_SHARED
#define M6_FLASH_SHARED(name) extern __shared__ float name[]
#endif

namespace m6::cuda::flash {

constexpr int kTile = 32;  // queries per block tile and keys per block tile
constexpr int kLanes = 8;  // lanes per tile row (consecutive, inside one warp)
constexpr int kThreads = kTile * kLanes;
constexpr int kPer = kTile / kLanes;  // keys (queries) per lane in a tile

// Everything the kernels need, strides explicit. qkv[B,T,3d]: q at column
// h*dh, k at d + h*dh, v at 2d + h*dh of each row.
struct FlashParams {
  const float* qkv;
  const float* out;   // [B,T,d] (backward: O for D)
  const float* dout;  // [B,T,d]
  float* o;           // forward output [B,T,d]
  float* lse_out;     // [B,H,T] log-sum-exp of the scaled scores (forward)
  const float* lse;   // the same, saved (backward)
  float* delta;       // [B,H,T] D = rowsum(dO * O)
  float* dqkv;        // [B,T,3d]
  int B, T, H, d, dh;
  int64_t row;  // 3d: stride between tokens in qkv / dqkv
  float scale;  // 1/sqrt(dh)
  int tiles;    // ceil(T / kTile)
};

// Block -> (tile, b*H+h). Tiles of one head in descending order: under the
// causal mask the last query tiles carry the most work and start first.
struct BlockPos {
  int tile, b, h;
};
__device__ inline BlockPos block_pos(const FlashParams& p) {
  const int bh = blockIdx.x / p.tiles;
  return {p.tiles - 1 - static_cast<int>(blockIdx.x % p.tiles), bh / p.H, bh % p.H};
}

// Threads [0, tile): the log-sum-exp and D of query rows q0 .. q0+tile-1 of
// head bh into Ls, Ds (0 past T). The dK/dV kernels' per-query-tile stats
// (this file's and the tensor-core one's).
__device__ inline void stage_row_stats(float* Ls, float* Ds, const FlashParams& p, int64_t bh,
                                       int q0, int tile) {
  if (static_cast<int>(threadIdx.x) < tile) {
    const int t = q0 + static_cast<int>(threadIdx.x);
    Ls[threadIdx.x] = t < p.T ? p.lse[bh * p.T + t] : 0.0f;
    Ds[threadIdx.x] = t < p.T ? p.delta[bh * p.T + t] : 0.0f;
  }
}

// dst[kTile][DM+1] <- rows t0.. of src (stride `stride`, dh columns), zero
// outside [0,T) x [0,dh).
template <int DM>
__device__ inline void load_tile(float* dst, const float* src, int64_t stride, int t0, int T,
                                 int dh) {
  for (int e = threadIdx.x; e < kTile * DM; e += kThreads) {
    const int r = e / DM, i = e % DM, t = t0 + r;
    dst[r * (DM + 1) + i] = (t < T && i < dh) ? src[static_cast<int64_t>(t) * stride + i] : 0.0f;
  }
}

template <int DM>
__device__ inline float dot_row(const float* a, const float* b) {
  float s = 0.0f;
#pragma unroll 8
  for (int i = 0; i < DM; i++) s = fmaf(a[i], b[i], s);
  return s;
}

// Sum / max over the kLanes lanes of one tile row (xor stays inside the group).
__device__ inline float row_sum(float v) {
  for (int o = kLanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float row_max(float v) {
  for (int o = kLanes / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// ---- forward ---------------------------------------------------------------------
// Block per (query tile, b, h). Shared: Q, K, V tiles [kTile][DM+1], P [kTile][kTile+1].
template <int DM>
__global__ void __launch_bounds__(kThreads) flash_fwd_kernel(FlashParams p) {
  M6_FLASH_SHARED(sm);
  float* Qs = sm;
  float* Ks = Qs + kTile * (DM + 1);
  float* Vs = Ks + kTile * (DM + 1);
  float* Ps = Vs + kTile * (DM + 1);
  const BlockPos bp = block_pos(p);
  const int r = threadIdx.x / kLanes, g = threadIdx.x % kLanes;
  const int q0 = bp.tile * kTile, q = q0 + r;
  const int qlim = min(q, p.T - 1);  // rows past T compute row T-1's keys, never stored
  const int64_t tok0 = static_cast<int64_t>(bp.b) * p.T;
  const float* qkv = p.qkv + tok0 * p.row + bp.h * p.dh;
  load_tile<DM>(Qs, qkv, p.row, q0, p.T, p.dh);

  float o[DM / kLanes];
#pragma unroll
  for (int u = 0; u < DM / kLanes; u++) o[u] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  const int key_end = min(q0 + kTile, p.T);
  for (int k0 = 0; k0 < key_end; k0 += kTile) {
    __syncthreads();  // previous tile's K, V, P fully used
    load_tile<DM>(Ks, qkv + p.d, p.row, k0, p.T, p.dh);
    load_tile<DM>(Vs, qkv + 2 * p.d, p.row, k0, p.T, p.dh);
    __syncthreads();
    float s[kPer];
    float mt = -INFINITY;
#pragma unroll
    for (int j = 0; j < kPer; j++) {
      const int c = g + kLanes * j;
      s[j] =
          k0 + c <= qlim ? dot_row<DM>(Qs + r * (DM + 1), Ks + c * (DM + 1)) * p.scale : -INFINITY;
      mt = fmaxf(mt, s[j]);
    }
    const float mn = fmaxf(m, row_max(mt));  // finite: key 0 is in every row's first tile
    const float alpha = expf(m - mn);        // 0 on the first tile (m = -inf)
    float lt = 0.0f;
#pragma unroll
    for (int j = 0; j < kPer; j++) {
      const float e = expf(s[j] - mn);  // masked: exp(-inf) = 0
      Ps[r * (kTile + 1) + g + kLanes * j] = e;
      lt += e;
    }
    l = l * alpha + row_sum(lt);
    m = mn;
    __syncwarp();  // the row's P (written by its kLanes lanes, one warp) is visible
#pragma unroll
    for (int u = 0; u < DM / kLanes; u++) {
      const int i = g + kLanes * u;
      float acc = 0.0f;
      for (int c = 0; c < kTile; c++)
        acc = fmaf(Ps[r * (kTile + 1) + c], Vs[c * (DM + 1) + i], acc);
      o[u] = o[u] * alpha + acc;
    }
  }
  if (q >= p.T) return;
  const float inv = 1.0f / l;
  float* out = p.o + (tok0 + q) * p.d + bp.h * p.dh;
#pragma unroll
  for (int u = 0; u < DM / kLanes; u++) {
    const int i = g + kLanes * u;
    if (i < p.dh) out[i] = o[u] * inv;
  }
  if (g == 0) p.lse_out[(static_cast<int64_t>(bp.b) * p.H + bp.h) * p.T + q] = m + logf(l);
}

// ---- backward ----------------------------------------------------------------------
// D[b,h,t] = sum_i dO[b,t,h*dh+i] * O[b,t,h*dh+i]; one warp per (b,t,h) row,
// fixed shuffle order.
__global__ void flash_bwd_delta_kernel(FlashParams p) {
  const int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.T;
  if (w >= rows) return;  // whole warps leave together (blockDim a multiple of 32)
  const int t = static_cast<int>(w % p.T), h = static_cast<int>((w / p.T) % p.H);
  const int b = static_cast<int>(w / (static_cast<int64_t>(p.T) * p.H));
  const int64_t base = (static_cast<int64_t>(b) * p.T + t) * p.d + h * p.dh;
  float s = 0.0f;
  for (int i = lane; i < p.dh; i += 32) s = fmaf(p.dout[base + i], p.out[base + i], s);
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) p.delta[(static_cast<int64_t>(b) * p.H + h) * p.T + t] = s;
}

// dK, dV of one key tile: block per (key tile, b, h), looping over the query
// tiles from the diagonal on. Thread (c, g): key c of the tile, queries
// g + kLanes*j of each query tile, columns g + kLanes*u of dK and dV.
// Shared: K, V, Q, dO tiles [kTile][DM+1]; P, dS [kTile keys][kTile+1]; lse, D [kTile].
template <int DM>
__global__ void __launch_bounds__(kThreads) flash_bwd_dkdv_kernel(FlashParams p) {
  M6_FLASH_SHARED(sm);
  float* Ks = sm;
  float* Vs = Ks + kTile * (DM + 1);
  float* Qs = Vs + kTile * (DM + 1);
  float* dOs = Qs + kTile * (DM + 1);
  float* Ps = dOs + kTile * (DM + 1);
  float* dSs = Ps + kTile * (kTile + 1);
  float* Ls = dSs + kTile * (kTile + 1);
  float* Ds = Ls + kTile;
  const BlockPos bp = block_pos(p);
  const int c = threadIdx.x / kLanes, g = threadIdx.x % kLanes;
  const int k0 = bp.tile * kTile, kc = k0 + c;
  const int64_t tok0 = static_cast<int64_t>(bp.b) * p.T;
  const int64_t bh = static_cast<int64_t>(bp.b) * p.H + bp.h;
  const float* qkv = p.qkv + tok0 * p.row + bp.h * p.dh;
  const float* dout = p.dout + tok0 * p.d + bp.h * p.dh;
  load_tile<DM>(Ks, qkv + p.d, p.row, k0, p.T, p.dh);
  load_tile<DM>(Vs, qkv + 2 * p.d, p.row, k0, p.T, p.dh);

  float dk[DM / kLanes], dv[DM / kLanes];
#pragma unroll
  for (int u = 0; u < DM / kLanes; u++) dk[u] = dv[u] = 0.0f;
  for (int q0 = k0; q0 < p.T; q0 += kTile) {  // kTile-aligned: k0 is a tile start
    __syncthreads();                          // previous query tile fully used
    load_tile<DM>(Qs, qkv, p.row, q0, p.T, p.dh);
    load_tile<DM>(dOs, dout, p.d, q0, p.T, p.dh);
    stage_row_stats(Ls, Ds, p, bh, q0, kTile);
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kPer; j++) {
      const int r = g + kLanes * j, t = q0 + r;
      float pr = 0.0f, ds = 0.0f;
      if (t < p.T && kc <= t) {
        const float s = dot_row<DM>(Qs + r * (DM + 1), Ks + c * (DM + 1)) * p.scale;
        pr = expf(s - Ls[r]);
        const float dp = dot_row<DM>(dOs + r * (DM + 1), Vs + c * (DM + 1));
        ds = pr * (dp - Ds[r]);
      }
      Ps[c * (kTile + 1) + r] = pr;
      dSs[c * (kTile + 1) + r] = ds;
    }
    __syncwarp();  // the key's P, dS (its kLanes lanes, one warp) are visible
#pragma unroll
    for (int u = 0; u < DM / kLanes; u++) {
      const int i = g + kLanes * u;
      float av = 0.0f, ak = 0.0f;
      for (int r = 0; r < kTile; r++) {
        av = fmaf(Ps[c * (kTile + 1) + r], dOs[r * (DM + 1) + i], av);
        ak = fmaf(dSs[c * (kTile + 1) + r], Qs[r * (DM + 1) + i], ak);
      }
      dv[u] += av;
      dk[u] += ak;
    }
  }
  if (kc >= p.T) return;
  float* dst = p.dqkv + (tok0 + kc) * p.row + bp.h * p.dh;
#pragma unroll
  for (int u = 0; u < DM / kLanes; u++) {
    const int i = g + kLanes * u;
    if (i < p.dh) {
      dst[p.d + i] = dk[u] * p.scale;
      dst[2 * p.d + i] = dv[u];
    }
  }
}

// dQ of one query tile: block per (query tile, b, h), looping over the key
// tiles up to the diagonal. Thread (r, g): query r, keys g + kLanes*j,
// columns g + kLanes*u of dQ. Shared: Q, dO, K, V [kTile][DM+1], dS [kTile][kTile+1].
template <int DM>
__global__ void __launch_bounds__(kThreads) flash_bwd_dq_kernel(FlashParams p) {
  M6_FLASH_SHARED(sm);
  float* Qs = sm;
  float* dOs = Qs + kTile * (DM + 1);
  float* Ks = dOs + kTile * (DM + 1);
  float* Vs = Ks + kTile * (DM + 1);
  float* dSs = Vs + kTile * (DM + 1);
  const BlockPos bp = block_pos(p);
  const int r = threadIdx.x / kLanes, g = threadIdx.x % kLanes;
  const int q0 = bp.tile * kTile, q = q0 + r;
  const int64_t tok0 = static_cast<int64_t>(bp.b) * p.T;
  const int64_t bh = static_cast<int64_t>(bp.b) * p.H + bp.h;
  const float* qkv = p.qkv + tok0 * p.row + bp.h * p.dh;
  load_tile<DM>(Qs, qkv, p.row, q0, p.T, p.dh);
  load_tile<DM>(dOs, p.dout + tok0 * p.d + bp.h * p.dh, p.d, q0, p.T, p.dh);
  const float lse = q < p.T ? p.lse[bh * p.T + q] : 0.0f;
  const float D = q < p.T ? p.delta[bh * p.T + q] : 0.0f;

  float dq[DM / kLanes];
#pragma unroll
  for (int u = 0; u < DM / kLanes; u++) dq[u] = 0.0f;
  const int key_end = min(q0 + kTile, p.T);
  for (int k0 = 0; k0 < key_end; k0 += kTile) {
    __syncthreads();  // previous key tile fully used (and Q, dO loaded)
    load_tile<DM>(Ks, qkv + p.d, p.row, k0, p.T, p.dh);
    load_tile<DM>(Vs, qkv + 2 * p.d, p.row, k0, p.T, p.dh);
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kPer; j++) {
      const int c = g + kLanes * j;
      float ds = 0.0f;
      if (q < p.T && k0 + c <= q) {
        const float s = dot_row<DM>(Qs + r * (DM + 1), Ks + c * (DM + 1)) * p.scale;
        const float pr = expf(s - lse);
        const float dp = dot_row<DM>(dOs + r * (DM + 1), Vs + c * (DM + 1));
        ds = pr * (dp - D);
      }
      dSs[r * (kTile + 1) + c] = ds;
    }
    __syncwarp();
#pragma unroll
    for (int u = 0; u < DM / kLanes; u++) {
      const int i = g + kLanes * u;
      float a = 0.0f;
      for (int c = 0; c < kTile; c++) a = fmaf(dSs[r * (kTile + 1) + c], Ks[c * (DM + 1) + i], a);
      dq[u] += a;
    }
  }
  if (q >= p.T) return;
  float* dst = p.dqkv + (tok0 + q) * p.row + bp.h * p.dh;
#pragma unroll
  for (int u = 0; u < DM / kLanes; u++) {
    const int i = g + kLanes * u;
    if (i < p.dh) dst[i] = dq[u] * p.scale;
  }
}

// ---- sizes -----------------------------------------------------------------------------
constexpr size_t tile_floats(int dm) { return static_cast<size_t>(kTile) * (dm + 1); }
constexpr size_t square_floats() { return static_cast<size_t>(kTile) * (kTile + 1); }

inline FlashParams make_params(int B, int T, int H, int d) {
  FlashParams p{};
  p.B = B, p.T = T, p.H = H, p.d = d, p.dh = d / H;
  p.row = 3 * static_cast<int64_t>(d);
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.dh)));
  p.tiles = (T + kTile - 1) / kTile;
  return p;
}

// Dynamic shared memory of each kernel, in floats.
constexpr size_t fwd_shared_floats(int dm) { return 3 * tile_floats(dm) + square_floats(); }
constexpr size_t dkdv_shared_floats(int dm) {
  return 4 * tile_floats(dm) + 2 * square_floats() + 2 * kTile;
}
constexpr size_t dq_shared_floats(int dm) { return 4 * tile_floats(dm) + square_floats(); }
constexpr int kDeltaThreads = 256;  // flash_bwd_delta_kernel: 8 warps, one row each

// The instantiation for head size dh: the smallest DM >= dh.
template <class F32, class F64, class F128, class F256>
void dispatch(int dh, F32 f32, F64 f64, F128 f128, F256 f256) {
  if (dh <= 32)
    f32();
  else if (dh <= 64)
    f64();
  else if (dh <= 128)
    f128();
  else
    f256();
}

}  // namespace m6::cuda::flash
