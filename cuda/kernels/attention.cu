// Launchers of the fused causal attention (kernels in attention_kernels.cuh,
// fp32, and attention_tc_kernels.cuh, bf16 tensor cores; the headers say how
// they work): head size -> instantiation, shared memory opt-in, grid of
// (tile, b, h) blocks.
#include <cuda_bf16.h>
#include <mma.h>

#include <cmath>
#include <map>
#include <mutex>

#include "core/util/error.h"
#include "cuda/check.h"
#include "cuda/kernels/attention_kernels.cuh"
#include "cuda/kernels/attention_tc_kernels.cuh"
#include "cuda/kernels/kernels.h"

namespace m6::cuda {
namespace {

using namespace flash;

// The current device's shared-memory opt-in limit and compute capability,
// read once per device (attention asks on every call; cudaGetDevice is a
// host-side lookup).
struct Caps {
  int optin = 0, major = 0;
};
Caps device_caps() {
  static std::mutex mu;
  static std::map<int, Caps> caps_of;
  int dev = 0;
  M6_CUDA_CHECK(cudaGetDevice(&dev));
  const std::lock_guard<std::mutex> lock(mu);
  auto it = caps_of.find(dev);
  if (it == caps_of.end()) {
    Caps c;
    M6_CUDA_CHECK(cudaDeviceGetAttribute(&c.optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    M6_CUDA_CHECK(cudaDeviceGetAttribute(&c.major, cudaDevAttrComputeCapabilityMajor, dev));
    it = caps_of.emplace(dev, c).first;
  }
  return it->second;
}

// Kernels above 48 KiB of dynamic shared memory must opt in (a host-side
// attribute, cheap to set at every launch); more than the device allows is
// a clear error (the fp32 kernels at head sizes above 128 need about
// 137 KiB: sm_80 and sm_90 have it, sm_86 / sm_89 do not).
template <class K>
void launch(K kernel, const FlashParams& p, size_t shmem_floats, cudaStream_t st,
            int threads = kThreads) {
  const size_t bytes = shmem_floats * sizeof(float);
  const Caps caps = device_caps();
  if (bytes > static_cast<size_t>(caps.optin))
    throw Error(fmt("attention: head size ", p.dh, " needs ", bytes / 1024,
                    " KiB of shared memory per block, this GPU allows ", caps.optin / 1024,
                    " KiB; use more heads (model.n_heads) so that d_model / n_heads is at most 128"));
  M6_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(bytes)));
  const unsigned blocks = static_cast<unsigned>(static_cast<int64_t>(p.tiles) * p.B * p.H);
  kernel<<<blocks, threads, bytes, st>>>(p);
  M6_LAUNCH_CHECK();
}

void launch_delta(const FlashParams& p, cudaStream_t st) {
  const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.T;
  const int64_t blocks = (rows * 32 + kDeltaThreads - 1) / kDeltaThreads;
  flash_bwd_delta_kernel<<<static_cast<unsigned>(blocks), kDeltaThreads, 0, st>>>(p);
  M6_LAUNCH_CHECK();
}

template <int DM>
void run_fwd(const FlashParams& p, cudaStream_t st) {
  launch(flash_fwd_kernel<DM>, p, fwd_shared_floats(DM), st);
}

template <int DM>
void run_bwd(const FlashParams& p, cudaStream_t st) {
  launch(flash_bwd_dkdv_kernel<DM>, p, dkdv_shared_floats(DM), st);
  launch(flash_bwd_dq_kernel<DM>, p, dq_shared_floats(DM), st);
}

template <int DM>
void run_tc_fwd(const FlashParams& p, cudaStream_t st) {
  launch(flash_tc::flash_tc_fwd_kernel<DM>, p, flash_tc::fwd_shared_floats(DM), st,
         flash_tc::kThreads);
}

template <int DM>
void run_tc_bwd(const FlashParams& p, cudaStream_t st) {
  launch(flash_tc::flash_tc_bwd_dkdv_kernel<DM>, p, flash_tc::dkdv_shared_floats(DM), st,
         flash_tc::kThreads);
  launch(flash_tc::flash_tc_bwd_dq_kernel<DM>, p, flash_tc::dq_shared_floats(DM), st,
         flash_tc::kThreads);
}

}  // namespace

bool flash_attention_tc_supported(int dh) {
  if (!flash_tc::supports(dh)) return false;
  // the largest kernel's shared memory must fit the device's opt-in limit
  // (dh > 64: 153 KiB; sm_80 and sm_90 have it, sm_86 / sm_89 do not)
  const Caps c = device_caps();
  const int dm = dh <= 32 ? 32 : dh <= 64 ? 64 : 128;
  const size_t need = flash_tc::dkdv_shared_floats(dm) * sizeof(float);
  return c.major >= 8 && need <= static_cast<size_t>(c.optin);
}

void launch_flash_attention_tc_fwd(float* out, float* lse, const float* qkv, int B, int T, int H,
                                   int d, cudaStream_t st) {
  if (static_cast<int64_t>(B) * T == 0) return;
  FlashParams p = flash_tc::make_params(B, T, H, d);
  p.qkv = qkv, p.o = out, p.lse_out = lse;
  flash_tc::dispatch(
      p.dh, [&] { run_tc_fwd<32>(p, st); }, [&] { run_tc_fwd<64>(p, st); },
      [&] { run_tc_fwd<128>(p, st); });
}

void launch_flash_attention_tc_bwd(float* dqkv, float* delta, const float* dout, const float* qkv,
                                   const float* out, const float* lse, int B, int T, int H, int d,
                                   cudaStream_t st) {
  if (static_cast<int64_t>(B) * T == 0) return;
  FlashParams p = flash_tc::make_params(B, T, H, d);
  p.qkv = qkv, p.out = out, p.dout = dout, p.lse = lse, p.delta = delta;
  p.dqkv = dqkv;
  launch_delta(p, st);
  flash_tc::dispatch(
      p.dh, [&] { run_tc_bwd<32>(p, st); }, [&] { run_tc_bwd<64>(p, st); },
      [&] { run_tc_bwd<128>(p, st); });
}

void launch_flash_attention_fwd(float* out, float* lse, const float* qkv, int B, int T, int H,
                                int d, cudaStream_t st) {
  if (static_cast<int64_t>(B) * T == 0) return;
  FlashParams p = make_params(B, T, H, d);
  p.qkv = qkv, p.o = out, p.lse_out = lse;
  dispatch(
      p.dh, [&] { run_fwd<32>(p, st); }, [&] { run_fwd<64>(p, st); }, [&] { run_fwd<128>(p, st); },
      [&] { run_fwd<256>(p, st); });
}

void launch_flash_attention_bwd(float* dqkv, float* delta, const float* dout, const float* qkv,
                                const float* out, const float* lse, int B, int T, int H, int d,
                                cudaStream_t st) {
  if (static_cast<int64_t>(B) * T == 0) return;
  FlashParams p = make_params(B, T, H, d);
  p.qkv = qkv, p.out = out, p.dout = dout, p.lse = lse, p.delta = delta;
  p.dqkv = dqkv;
  launch_delta(p, st);
  dispatch(
      p.dh, [&] { run_bwd<32>(p, st); }, [&] { run_bwd<64>(p, st); }, [&] { run_bwd<128>(p, st); },
      [&] { run_bwd<256>(p, st); });
}

}  // namespace m6::cuda
