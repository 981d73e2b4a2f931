// The fused attention's kernel source (cuda/kernels/attention_kernels.cuh)
// run on the host through cuda_emulation.h, against the CPU reference with
// the tolerance of the GPU test (tests/cuda/attention_ref.h): out, lse and
// dqkv for head sizes 4..256 (all four instantiations), T = 1, partial and
// several tiles. Builds and runs without CUDA, so CI checks the kernels'
// tiling, causal masking, online softmax, recomputation in backward and
// synchronisation on every commit; tests/cuda/test_cuda_attention runs the
// compiled kernels on a GPU.
//
// Exit codes: 0 passed, 1 a check failed.
// clang-format off
#include "tests/cuda/emulated/cuda_emulation.h"
// after the emulation: the kernels use its built-ins
#include "cuda/kernels/attention_kernels.cuh"
// clang-format on

#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "tests/cuda/attention_ref.h"

using namespace m6;
using namespace m6::cuda_test;
namespace fl = m6::cuda::flash;

namespace {

struct Result {
  std::vector<float> out, lse, dqkv;
};

template <int DM>
void run_emulated(fl::FlashParams p) {
  const unsigned blocks = static_cast<unsigned>(p.tiles * p.B * p.H);
  cuda_emu::launch(blocks, fl::kThreads, fl::fwd_shared_floats(DM),
                   [&] { fl::flash_fwd_kernel<DM>(p); });
  const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.T;
  const unsigned dblocks =
      static_cast<unsigned>((rows * 32 + fl::kDeltaThreads - 1) / fl::kDeltaThreads);
  cuda_emu::launch(dblocks, fl::kDeltaThreads, 0, [&] { fl::flash_bwd_delta_kernel(p); });
  cuda_emu::launch(blocks, fl::kThreads, fl::dkdv_shared_floats(DM),
                   [&] { fl::flash_bwd_dkdv_kernel<DM>(p); });
  cuda_emu::launch(blocks, fl::kThreads, fl::dq_shared_floats(DM),
                   [&] { fl::flash_bwd_dq_kernel<DM>(p); });
}

// Forward then backward, the outputs starting as NaN (an element the kernels
// do not write fails the comparison).
Result emulate(const std::vector<float>& qkv, const std::vector<float>& dout, const Shape& s) {
  const size_t bt = static_cast<size_t>(s.B) * s.T, d = static_cast<size_t>(s.H) * s.dh;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Result r{std::vector<float>(bt * d, nan), std::vector<float>(bt * s.H, nan),
           std::vector<float>(bt * 3 * d, nan)};
  std::vector<float> delta(bt * s.H, nan);
  fl::FlashParams p = fl::make_params(s.B, s.T, s.H, static_cast<int>(d));
  p.qkv = qkv.data(), p.o = r.out.data(), p.lse_out = r.lse.data();
  p.out = r.out.data(), p.dout = dout.data(), p.lse = r.lse.data(), p.delta = delta.data();
  p.dqkv = r.dqkv.data();
  fl::dispatch(
      p.dh, [&] { run_emulated<32>(p); }, [&] { run_emulated<64>(p); },
      [&] { run_emulated<128>(p); }, [&] { run_emulated<256>(p); });
  return r;
}

void test_shape(Backend& cpu, const Shape& s) {
  const std::string name = describe(s);
  const size_t bt = static_cast<size_t>(s.B) * s.T, d = static_cast<size_t>(s.H) * s.dh;
  const std::vector<float> qkv = randn(bt * 3 * d, 1.5f), dout = randn(bt * d);
  // the CPU reference through the backend interface
  const Backend::AttentionBuffers ab = cpu.attention_buffers(s.B, s.T, s.H);
  auto alloc = [&](size_t n) { return static_cast<float*>(cpu.alloc(std::max<size_t>(n, 1) * 4)); };
  float *q = alloc(bt * 3 * d), *o = alloc(bt * d), *att = alloc(ab.saved), *go = alloc(bt * d),
        *dq = alloc(bt * 3 * d), *datt = alloc(ab.scratch);
  cpu.to_device(q, qkv.data(), qkv.size() * 4);
  cpu.to_device(go, dout.data(), dout.size() * 4);
  cpu.attention_fwd(o, att, q, s.B, s.T, s.H, static_cast<int>(d));
  cpu.attention_bwd(dq, datt, go, q, o, att, s.B, s.T, s.H, static_cast<int>(d));
  std::vector<float> c_out(bt * d), c_dqkv(bt * 3 * d);
  cpu.to_host(c_out.data(), o, c_out.size() * 4);
  cpu.to_host(c_dqkv.data(), dq, c_dqkv.size() * 4);
  for (float* p : {q, o, att, go, dq, datt}) cpu.release(p);

  const Result e = emulate(qkv, dout, s);
  const Naive<float> nf = naive_attention<float>(qkv, dout, s);
  const Naive<double> nd = naive_attention<double>(qkv, dout, s);
  expect_within_naive("emulated out" + name, e.out, c_out, nf.out);
  expect_within_naive("emulated lse" + name, e.lse, nd.lse, nf.lse);
  expect_within_naive("emulated dqkv" + name, e.dqkv, c_dqkv, nf.dqkv);
}

}  // namespace

int main() {
  try {
    auto cpu = make_cpu_backend(1);
    const Shape shapes[] = {{1, 1, 1, 32},  {2, 17, 3, 8},   {1, 7, 3, 4},    {1, 33, 2, 64},
                            {1, 70, 1, 48}, {1, 45, 1, 256}, {1, 40, 1, 128}, {1, 96, 1, 16}};
    for (const Shape& s : shapes) test_shape(*cpu, s);
  } catch (const std::exception& e) {
    std::printf("FAIL exception: %s\n", e.what());
    return 1;
  }
  std::printf("%d of %d checks failed\n", g_failures, g_checks);
  return g_failures == 0 ? 0 : 1;
}
