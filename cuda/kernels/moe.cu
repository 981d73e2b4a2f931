// Mixture-of-experts kernels of the CUDA backend (twins of core/backend/cpu/cpu_moe.h):
// router softmax + top-k, slot-major capacity assignment, permute/unpermute and
// the router backward with the aux and z terms. Shapes: N tokens, E experts in
// G groups of Eg = E/G, K experts per group, S = G*K slots per token.
#include <algorithm>
#include <cmath>

#include "core/util/splitmix.h"
#include "cuda/check.h"
#include "cuda/kernels/kernels.h"
#include "cuda/kernels/reduce.cuh"

namespace m6::cuda {
namespace {

constexpr int kThreads = 256;

// One thread per token (E is small). Per group: softmax in double, lse, then
// K passes picking the largest stored prob not chosen yet, strict '>' in
// index order so ties go to the lower index (as the CPU).
__global__ void router_fwd_kernel(float* probs, float* lse, int32_t* expert, float* gate,
                                  const float* logits, int N, int E, int G, int K,
                                  bool normalize) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const int Eg = E / G, S = G * K;
  const float* l = logits + static_cast<int64_t>(n) * E;
  float* p = probs + static_cast<int64_t>(n) * E;
  int32_t* ex = expert + static_cast<int64_t>(n) * S;
  float* gt = gate + static_cast<int64_t>(n) * S;
  for (int g = 0; g < G; g++) {
    const int lo = g * Eg;
    double mx = -DBL_MAX;
    for (int e = lo; e < lo + Eg; e++) mx = fmax(mx, static_cast<double>(l[e]));
    double z = 0.0;
    for (int e = lo; e < lo + Eg; e++) z += exp(l[e] - mx);
    for (int e = lo; e < lo + Eg; e++) p[e] = static_cast<float>(exp(l[e] - mx) / z);
    lse[static_cast<int64_t>(n) * G + g] = static_cast<float>(mx + log(z));
    for (int k = 0; k < K; k++) {
      int best = -1;
      for (int e = lo; e < lo + Eg; e++) {
        bool used = false;
        for (int k2 = 0; k2 < k; k2++) used = used || ex[g * K + k2] == e;
        if (!used && (best < 0 || p[e] > p[best])) best = e;
      }
      ex[g * K + k] = best;
      gt[g * K + k] = p[best];
    }
  }
  if (normalize) {
    double zs = 0.0;
    for (int s = 0; s < S; s++) zs += gt[s];
    for (int s = 0; s < S; s++) gt[s] = static_cast<float>(gt[s] / zs);
  }
}

// Flags expert ids outside [0, E) (the CPU throws on them; here the error
// is reported later, by check_errors) and drops their slots (pos -1), so that
// the ops issued before the report never index an expert block with them.
__global__ void moe_check_experts_kernel(int32_t* pos, const int32_t* expert, int64_t total, int E,
                                         int S, BadSink bad) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < total && (expert[i] < 0 || expert[i] >= E)) {
    const int64_t N = total / S;  // slot-major key: slot s of token n at s * N + n
    record_bad(bad, expert[i], static_cast<int>((i % S) * N + i / S), E, S, static_cast<int>(N));
    pos[i] = -1;
  }
}

// Grid-stride over the slots; each warp adds its lanes' sums (shuffles), then
// lane 0 adds the warp's sum to *dst. Unsigned wrapping addition: any order,
// same bits.
__global__ void routing_hash_kernel(unsigned long long* dst, const int32_t* expert,
                                    const int32_t* pos, int64_t total) {
  unsigned long long h = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride)
    h += routing_slot_hash(static_cast<uint64_t>(i), expert[i], pos[i] >= 0);
  for (int o = 16; o > 0; o >>= 1) h += __shfl_down_sync(0xffffffffu, h, o);
  if ((threadIdx.x & 31) == 0 && h != 0) atomicAdd(dst, h);
}

// Capacity assignment, one block per expert e. The block walks the slots in
// slot-major order (slot s of tokens 0..N-1, then slot s+1) in chunks of
// blockDim; within a chunk a ballot + warp prefix gives each matching slot its
// rank, so slot i gets row count_before(i) -- exactly the CPU's serial order.
// blockDim.x = kAssignThreads (a multiple of 32).
constexpr int kAssignThreads = 256;
__global__ void moe_assign_kernel(int32_t* pos, int32_t* count, int32_t* demand,
                                  const int32_t* expert, int N, int S, int capacity) {
  __shared__ int warp_count[kAssignThreads / 32];
  __shared__ int base;
  const int e = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t total = static_cast<int64_t>(N) * S;
  if (threadIdx.x == 0) base = 0;
  __syncthreads();
  for (int64_t c0 = 0; c0 < total; c0 += blockDim.x) {
    const int64_t j = c0 + threadIdx.x;  // slot-major index: s = j / N, n = j % N
    int64_t i = -1;                      // token-major index into expert/pos
    bool match = false;
    if (j < total) {
      const int s = static_cast<int>(j / N), n = static_cast<int>(j % N);
      i = static_cast<int64_t>(n) * S + s;
      match = expert[i] == e;
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, match);
    if (lane == 0) warp_count[warp] = __popc(ballot);
    __syncthreads();
    int before = base;
    for (int w = 0; w < warp; w++) before += warp_count[w];
    before += __popc(ballot & ((1u << lane) - 1u));
    if (match) pos[i] = (capacity <= 0 || before < capacity) ? before : -1;
    __syncthreads();
    if (threadIdx.x == 0)
      for (int w = 0; w < static_cast<int>(blockDim.x >> 5); w++) base += warp_count[w];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    demand[e] = base;
    count[e] = capacity <= 0 ? base : (base < capacity ? base : capacity);
  }
}

// xp[offset[e] + pos[n,s], :] = x[n, :]; block per (n, s)
__global__ void moe_permute_kernel(float* xp, const float* x, const int32_t* expert,
                                   const int32_t* pos, const int32_t* offset, int S, int d) {
  const int64_t i = blockIdx.x;
  if (pos[i] < 0) return;
  const int n = static_cast<int>(i / S);
  float* dst = xp + (static_cast<int64_t>(offset[expert[i]]) + pos[i]) * d;
  const float* src = x + static_cast<int64_t>(n) * d;
  for (int j = threadIdx.x; j < d; j += blockDim.x) dst[j] = src[j];
}

// dx[n,:] += dxp rows of the kept slots, slot by slot in order (float adds, as the CPU)
__global__ void moe_permute_bwd_kernel(float* dx, const float* dxp, const int32_t* expert,
                                       const int32_t* pos, const int32_t* offset, int S, int d) {
  const int n = blockIdx.x;
  float* dst = dx + static_cast<int64_t>(n) * d;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    float acc = dst[j];
    for (int s = 0; s < S; s++) {
      const int64_t i = static_cast<int64_t>(n) * S + s;
      if (pos[i] < 0) continue;
      acc += dxp[(static_cast<int64_t>(offset[expert[i]]) + pos[i]) * d + j];
    }
    dst[j] = acc;
  }
}

// y[n,:] += gate * yp rows of the kept slots, slot by slot in order
__global__ void moe_unpermute_kernel(float* y, const float* yp, const float* gate,
                                     const int32_t* expert, const int32_t* pos,
                                     const int32_t* offset, int S, int d) {
  const int n = blockIdx.x;
  float* dst = y + static_cast<int64_t>(n) * d;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    float acc = dst[j];
    for (int s = 0; s < S; s++) {
      const int64_t i = static_cast<int64_t>(n) * S + s;
      if (pos[i] < 0) continue;
      acc += gate[i] * yp[(static_cast<int64_t>(offset[expert[i]]) + pos[i]) * d + j];
    }
    dst[j] = acc;
  }
}

// block per (n, s): dyp[row,:] = gate * dy[n,:]; dgate = dot(dy[n,:], yp[row,:])
// (0 for a dropped slot, whose rows are untouched)
__global__ void moe_unpermute_bwd_kernel(float* dyp, float* dgate, const float* dy,
                                         const float* yp, const float* gate,
                                         const int32_t* expert, const int32_t* pos,
                                         const int32_t* offset, int S, int d) {
  const int64_t i = blockIdx.x;
  if (pos[i] < 0) {  // block-uniform: no barrier is skipped by part of the block
    if (threadIdx.x == 0) dgate[i] = 0.0f;
    return;
  }
  const int n = static_cast<int>(i / S);
  const float* g = dy + static_cast<int64_t>(n) * d;
  const int64_t r = (static_cast<int64_t>(offset[expert[i]]) + pos[i]) * d;
  double dot = 0.0;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    dyp[r + j] = gate[i] * g[j];
    dot += static_cast<double>(g[j]) * yp[r + j];
  }
  dot = block_sum(dot);
  if (threadIdx.x == 0) dgate[i] = static_cast<float>(dot);
}

// pe[e] = sum_n probs[n,e] (block per e); block E sums lse^2 into zsum[0]
__global__ void router_aux_sums_kernel(double* pe, double* zsum, const float* probs,
                                       const float* lse, int N, int E, int G) {
  const int e = blockIdx.x;
  double acc = 0.0;
  if (e < E) {
    for (int n = threadIdx.x; n < N; n += blockDim.x) acc += probs[static_cast<int64_t>(n) * E + e];
  } else {
    const int64_t total = static_cast<int64_t>(N) * G;
    for (int64_t i = threadIdx.x; i < total; i += blockDim.x)
      acc += static_cast<double>(lse[i]) * lse[i];
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) {
    if (e < E) pe[e] = acc;
    else zsum[0] = acc;
  }
}

// Block per token; dynamic shared memory: E + G doubles (dp[E], group dots).
//   dp = daux (+ dgate through the gate) ; dlogit_e = p_e (dp_e - sum_g p dp) + zc lse_g p_e
__global__ void router_bwd_kernel(float* dlogits, const float* dgate, const float* probs,
                                  const float* lse, const int32_t* expert, const float* gate,
                                  const int32_t* demand, float aux_coef, float z_coef, int N,
                                  int E, int G, int K, bool normalize) {
  extern __shared__ double sh[];
  double* dp = sh;
  double* gdot = sh + E;
  const int n = blockIdx.x, Eg = E / G, S = G * K;
  const double Nd = N;
  const float* p = probs + static_cast<int64_t>(n) * E;
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    dp[e] = aux_coef != 0.0f ? static_cast<double>(aux_coef) * (static_cast<double>(Eg) / G) *
                                   (demand[e] / (Nd * K)) / Nd
                             : 0.0;
  __syncthreads();
  if (threadIdx.x == 0) {
    const int32_t* ex = expert + static_cast<int64_t>(n) * S;
    if (dgate != nullptr) {
      const float* dg = dgate + static_cast<int64_t>(n) * S;
      if (normalize) {
        const float* gt = gate + static_cast<int64_t>(n) * S;
        double zs = 0.0, dot = 0.0;
        for (int s = 0; s < S; s++) {
          zs += p[ex[s]];
          dot += static_cast<double>(dg[s]) * gt[s];
        }
        for (int s = 0; s < S; s++) dp[ex[s]] += (dg[s] - dot) / zs;
      } else {
        for (int s = 0; s < S; s++) dp[ex[s]] += dg[s];
      }
    }
    for (int g = 0; g < G; g++) {
      double dot = 0.0;
      for (int e = g * Eg; e < (g + 1) * Eg; e++) dot += p[e] * dp[e];
      gdot[g] = dot;
    }
  }
  __syncthreads();
  const double zc = 2.0 * static_cast<double>(z_coef) / (Nd * G);
  float* dl = dlogits + static_cast<int64_t>(n) * E;
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    const int g = e / Eg;
    const double zl = zc * lse[static_cast<int64_t>(n) * G + g];
    dl[e] = static_cast<float>(p[e] * (dp[e] - gdot[g]) + zl * p[e]);
  }
}

}  // namespace

void launch_router_fwd(float* probs, float* lse, int32_t* expert, float* gate,
                       const float* logits, int N, int E, int G, int K, bool normalize,
                       cudaStream_t st) {
  if (N == 0) return;
  router_fwd_kernel<<<(N + 127) / 128, 128, 0, st>>>(probs, lse, expert, gate, logits, N, E, G, K,
                                                    normalize);
  M6_LAUNCH_CHECK();
}

void launch_moe_assign(int32_t* pos, int32_t* count, int32_t* demand, const int32_t* expert,
                       int N, int S, int E, int capacity, BadSink bad, cudaStream_t st) {
  const int64_t total = static_cast<int64_t>(N) * S;
  if (total > 0) {
    moe_check_experts_kernel<<<static_cast<unsigned>((total + kThreads - 1) / kThreads), kThreads,
                               0, st>>>(pos, expert, total, E, S, bad);
    M6_LAUNCH_CHECK();
  }
  if (E == 0) return;
  moe_assign_kernel<<<E, kAssignThreads, 0, st>>>(pos, count, demand, expert, N, S, capacity);
  M6_LAUNCH_CHECK();
}

void launch_moe_permute(float* xp, const float* x, const int32_t* expert, const int32_t* pos,
                        const int32_t* offset, int N, int S, int d, cudaStream_t st) {
  const int64_t total = static_cast<int64_t>(N) * S;
  if (total == 0 || d == 0) return;
  moe_permute_kernel<<<static_cast<unsigned>(total), 128, 0, st>>>(xp, x, expert, pos, offset, S,
                                                                  d);
  M6_LAUNCH_CHECK();
}

void launch_moe_permute_bwd(float* dx, const float* dxp, const int32_t* expert,
                            const int32_t* pos, const int32_t* offset, int N, int S, int d,
                            cudaStream_t st) {
  if (N == 0 || d == 0) return;
  moe_permute_bwd_kernel<<<N, 128, 0, st>>>(dx, dxp, expert, pos, offset, S, d);
  M6_LAUNCH_CHECK();
}

void launch_moe_unpermute(float* y, const float* yp, const float* gate, const int32_t* expert,
                          const int32_t* pos, const int32_t* offset, int N, int S, int d,
                          cudaStream_t st) {
  if (N == 0 || d == 0) return;
  moe_unpermute_kernel<<<N, 128, 0, st>>>(y, yp, gate, expert, pos, offset, S, d);
  M6_LAUNCH_CHECK();
}

void launch_moe_unpermute_bwd(float* dyp, float* dgate, const float* dy, const float* yp,
                              const float* gate, const int32_t* expert, const int32_t* pos,
                              const int32_t* offset, int N, int S, int d, cudaStream_t st) {
  const int64_t total = static_cast<int64_t>(N) * S;
  if (total == 0) return;
  moe_unpermute_bwd_kernel<<<static_cast<unsigned>(total), 128, 0, st>>>(
      dyp, dgate, dy, yp, gate, expert, pos, offset, S, d);
  M6_LAUNCH_CHECK();
}

void launch_routing_hash(uint64_t* dst, const int32_t* expert, const int32_t* pos, int64_t total,
                         cudaStream_t st) {
  static_assert(sizeof(unsigned long long) == sizeof(uint64_t), "64-bit atomics");
  M6_CUDA_CHECK(cudaMemsetAsync(dst, 0, sizeof(uint64_t), st));
  if (total <= 0) return;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 1024);
  routing_hash_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, st>>>(
      reinterpret_cast<unsigned long long*>(dst), expert, pos, total);
  M6_LAUNCH_CHECK();
}

void launch_router_aux_sums(double* pe, double* zsum, const float* probs, const float* lse, int N,
                            int E, int G, cudaStream_t st) {
  router_aux_sums_kernel<<<E + 1, kRowThreads, 0, st>>>(pe, zsum, probs, lse, N, E, G);
  M6_LAUNCH_CHECK();
}

void launch_router_bwd(float* dlogits, const float* dgate, const float* probs, const float* lse,
                       const int32_t* expert, const float* gate, const int32_t* demand,
                       float aux_coef, float z_coef, int N, int E, int G, int K, bool normalize,
                       cudaStream_t st) {
  if (N == 0) return;
  const size_t shmem = static_cast<size_t>(E + G) * sizeof(double);
  router_bwd_kernel<<<N, 128, shmem, st>>>(dlogits, dgate, probs, lse, expert, gate, demand,
                                           aux_coef, z_coef, N, E, G, K, normalize);
  M6_LAUNCH_CHECK();
}

}  // namespace m6::cuda
