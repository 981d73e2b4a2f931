// The fused attention's kernel source (cuda/kernels/attention_kernels.cuh)
// run on the host through cuda_emulation.h, against the CPU reference with
// the tolerance of the GPU test (tests/cuda/attention_ref.h): out, lse and
// dqkv for head sizes 4..256 (all four instantiations), T = 1, partial and
// several tiles. Then the bf16 tensor-core kernels (attention_tc_kernels.cuh,
// through wmma_emulation.h as well) on bf16-rounded inputs: out, lse, dq,
// dk, dv within the derived bound of tests/cuda/attention_tc_ref.h for dh 16
// to 128, bit-identical reruns, and checks that the bound is not vacuous
// (P really rounded; a result off by twice the bound, or with the diagonal
// key masked off, fails). Builds and runs without CUDA, so CI checks the
// kernels' tiling, causal masking, online softmax, recomputation in
// backward and synchronisation on every commit; tests/cuda/test_cuda_attention
// runs the compiled kernels on a GPU.
//
// Exit codes: 0 passed, 1 a check failed.
// clang-format off
#include "tests/cuda/emulated/cuda_emulation.h"
#include "tests/cuda/emulated/wmma_emulation.h"
// after the emulation: the kernels use its built-ins
#include "cuda/kernels/attention_kernels.cuh"
#include "cuda/kernels/attention_tc_kernels.cuh"
// clang-format on

#include <cfloat>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "core/backend/backend.h"
#include "tests/cuda/attention_ref.h"
#include "tests/cuda/attention_tc_ref.h"

using namespace m6;
using namespace m6::cuda_test;
namespace fl = m6::cuda::flash;
namespace tc = m6::cuda::flash_tc;

namespace {

struct Result {
  std::vector<float> out, lse, dqkv;
};

// The backward's D = rowsum(dout * out), shared by both kernel families.
void launch_delta(const fl::FlashParams& p) {
  const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.T;
  const unsigned dblocks =
      static_cast<unsigned>((rows * 32 + fl::kDeltaThreads - 1) / fl::kDeltaThreads);
  cuda_emu::launch(dblocks, fl::kDeltaThreads, 0, [&] { fl::flash_bwd_delta_kernel(p); });
}

template <int DM>
void run_emulated(fl::FlashParams p) {
  const unsigned blocks = static_cast<unsigned>(p.tiles * p.B * p.H);
  cuda_emu::launch(blocks, fl::kThreads, fl::fwd_shared_floats(DM),
                   [&] { fl::flash_fwd_kernel<DM>(p); });
  launch_delta(p);
  cuda_emu::launch(blocks, fl::kThreads, fl::dkdv_shared_floats(DM),
                   [&] { fl::flash_bwd_dkdv_kernel<DM>(p); });
  cuda_emu::launch(blocks, fl::kThreads, fl::dq_shared_floats(DM),
                   [&] { fl::flash_bwd_dq_kernel<DM>(p); });
}

// Forward then backward by `run` (one kernel family's launches, for the
// params of its make_params), the outputs starting as NaN (an element the
// kernels do not write fails the comparison).
template <class Run>
Result emulate_with(const std::vector<float>& qkv, const std::vector<float>& dout, const Shape& s,
                    fl::FlashParams p, Run run) {
  const size_t bt = static_cast<size_t>(s.B) * s.T, d = static_cast<size_t>(s.H) * s.dh;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Result r{std::vector<float>(bt * d, nan), std::vector<float>(bt * s.H, nan),
           std::vector<float>(bt * 3 * d, nan)};
  std::vector<float> delta(bt * s.H, nan);
  p.qkv = qkv.data(), p.o = r.out.data(), p.lse_out = r.lse.data();
  p.out = r.out.data(), p.dout = dout.data(), p.lse = r.lse.data(), p.delta = delta.data();
  p.dqkv = r.dqkv.data();
  run(p);
  return r;
}

Result emulate(const std::vector<float>& qkv, const std::vector<float>& dout, const Shape& s) {
  return emulate_with(qkv, dout, s, fl::make_params(s.B, s.T, s.H, s.H * s.dh),
                      [](const fl::FlashParams& p) {
                        fl::dispatch(
                            p.dh, [&] { run_emulated<32>(p); }, [&] { run_emulated<64>(p); },
                            [&] { run_emulated<128>(p); }, [&] { run_emulated<256>(p); });
                      });
}

// The CPU reference through the backend interface: out and dqkv (lse left
// empty: the CPU keeps probabilities).
Result cpu_reference(Backend& cpu, const std::vector<float>& qkv, const std::vector<float>& dout,
                     const Shape& s) {
  const size_t bt = static_cast<size_t>(s.B) * s.T, d = static_cast<size_t>(s.H) * s.dh;
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
  return {std::move(c_out), {}, std::move(c_dqkv)};
}

void test_shape(Backend& cpu, const Shape& s) {
  const std::string name = describe(s);
  const size_t bt = static_cast<size_t>(s.B) * s.T, d = static_cast<size_t>(s.H) * s.dh;
  const std::vector<float> qkv = randn(bt * 3 * d, 1.5f), dout = randn(bt * d);
  const Result c = cpu_reference(cpu, qkv, dout, s);

  const Result e = emulate(qkv, dout, s);
  const Naive<float> nf = naive_attention<float>(qkv, dout, s);
  const Naive<double> nd = naive_attention<double>(qkv, dout, s);
  expect_within_naive("emulated out" + name, e.out, c.out, nf.out);
  expect_within_naive("emulated lse" + name, e.lse, nd.lse, nf.lse);
  expect_within_naive("emulated dqkv" + name, e.dqkv, c.dqkv, nf.dqkv);
}

// ---- the tensor-core kernels (attention_tc_kernels.cuh) ------------------------------

template <int DM>
void run_emulated_tc(fl::FlashParams p) {
  const unsigned blocks = static_cast<unsigned>(p.tiles * p.B * p.H);
  cuda_emu::launch(blocks, tc::kThreads, tc::fwd_shared_floats(DM),
                   [&] { tc::flash_tc_fwd_kernel<DM>(p); });
  launch_delta(p);
  cuda_emu::launch(blocks, tc::kThreads, tc::dkdv_shared_floats(DM),
                   [&] { tc::flash_tc_bwd_dkdv_kernel<DM>(p); });
  cuda_emu::launch(blocks, tc::kThreads, tc::dq_shared_floats(DM),
                   [&] { tc::flash_tc_bwd_dq_kernel<DM>(p); });
}

Result emulate_tc(const std::vector<float>& qkv, const std::vector<float>& dout, const Shape& s) {
  return emulate_with(qkv, dout, s, tc::make_params(s.B, s.T, s.H, s.H * s.dh),
                      [](const fl::FlashParams& p) {
                        tc::dispatch(
                            p.dh, [&] { run_emulated_tc<32>(p); }, [&] { run_emulated_tc<64>(p); },
                            [&] { run_emulated_tc<128>(p); });
                      });
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The tensor-core kernels on bf16 inputs (q, k, v and dout rounded, as the
// model stores them under precision.compute bf16) against the CPU reference
// on the same inputs, within the bound of tests/cuda/attention_tc_ref.h.
// `extra`: also the determinism and tightness checks.
void test_shape_tc(Backend& cpu, const Shape& s, bool extra) {
  const std::string name = " tc" + describe(s);
  const size_t bt = static_cast<size_t>(s.B) * s.T, d = static_cast<size_t>(s.H) * s.dh;
  const std::vector<float> qkv = rounded_bf16(randn(bt * 3 * d, 1.5f));
  const std::vector<float> dout = rounded_bf16(randn(bt * d));
  const Result c = cpu_reference(cpu, qkv, dout, s);

  const Result e = emulate_tc(qkv, dout, s);
  const Naive<float> nf = naive_attention<float>(qkv, dout, s);
  const Naive<double> nd = naive_attention<double>(qkv, dout, s);
  const TcBound bound = tc_bound(qkv, dout, s, &e.out, &c.out);
  expect_within_tc("emulated out" + name, e.out, c.out, nf.out, bound.out);
  expect_within_naive("emulated lse" + name, e.lse, nd.lse, nf.lse);
  for (int part = 0; part < 3; part++) {
    const char* what[] = {"emulated dq", "emulated dk", "emulated dv"};
    expect_within_tc(what[part] + name, qkv_part(e.dqkv, s, part), qkv_part(c.dqkv, s, part),
                     qkv_part(nf.dqkv, s, part), qkv_part(bound.dqkv, s, part));
  }
  if (!extra) return;
  // Determinism: a second run gives the same bits.
  const Result e2 = emulate_tc(qkv, dout, s);
  expect_true("emulated rerun bit-identical (out, lse, dqkv)" + name,
              same_bits(e.out, e2.out) && same_bits(e.lse, e2.lse) && same_bits(e.dqkv, e2.dqkv));
  // The probabilities really are rounded: the fp32 kernel's rule (2x a naive
  // fp32 attention) rejects the tensor-core result, and the fp32 kernel's
  // own output (P not rounded) is well inside the bf16 bound.
  const Result f = emulate(qkv, dout, s);
  expect_true("fp32 rule rejects the tc out (P rounded to bf16)" + name,
              tc_ratio(e.out, c.out, nf.out, std::vector<float>(e.out.size(), 0.0f)) > 1.0);
  expect_true("fp32 kernel's out within the bf16 bound" + name,
              tc_ratio(f.out, c.out, nf.out, bound.out) <= 1.0);
  // Tight enough to fail: (a) the bound is attained by worst-case roundings,
  // so twice them (every P error 2u, in v's direction) fails: cpu + 2 bound
  // on one element; (b) a causal-mask off-by-one (each row's diagonal key
  // dropped, `<` for `<=`) fails by far.
  std::vector<float> twice = c.out;
  size_t big = 0;
  for (size_t i = 0; i < twice.size(); ++i)
    if (bound.out[i] > bound.out[big]) big = i;
  twice[big] += 2.0f * bound.out[big] + 4.0f * static_cast<float>(max_abs_diff(nf.out, c.out)) +
                16.0f * FLT_EPSILON * static_cast<float>(max_abs(c.out));
  expect_true("an out off by twice the bound fails" + name,
              tc_ratio(twice, c.out, nf.out, bound.out) > 1.0);
  std::vector<float> nodiag = c.out;
  for (int b = 0; b < s.B; b++)
    for (int t = 0; t < s.T; t++)
      for (int h = 0; h < s.H; h++) {
        // out_t without key t: (out_t - p_tt v_t) / (1 - p_tt), p_tt from the lse
        const float* qt = qkv.data() + (static_cast<size_t>(b) * s.T + t) * 3 * d + h * s.dh;
        double dot = 0.0;
        for (int i = 0; i < s.dh; i++) dot += static_cast<double>(qt[i]) * qt[d + i];
        const double ptt = std::exp(dot / std::sqrt(static_cast<double>(s.dh)) -
                                    nd.lse[(static_cast<size_t>(b) * s.H + h) * s.T + t]);
        float* ot = nodiag.data() + (static_cast<size_t>(b) * s.T + t) * d + h * s.dh;
        for (int i = 0; i < s.dh; i++)
          ot[i] = t == 0 ? 0.0f : static_cast<float>((ot[i] - ptt * qt[2 * d + i]) / (1.0 - ptt));
      }
  expect_true("an out with the diagonal masked off fails" + name,
              tc_ratio(nodiag, c.out, nf.out, bound.out) > 1.0);
}

}  // namespace

int main() {
  try {
    auto cpu = make_cpu_backend(1);
    const Shape shapes[] = {{1, 1, 1, 32},  {2, 17, 3, 8},   {1, 7, 3, 4},    {1, 33, 2, 64},
                            {1, 70, 1, 48}, {1, 45, 1, 256}, {1, 40, 1, 128}, {1, 96, 1, 16}};
    for (const Shape& s : shapes) test_shape(*cpu, s);
    // tensor cores: dh 16, 32, 48, 64, 128 (kernels DM = 32, 64, 128, exact
    // and with unused column blocks); T = 1, below 16, across 16-column
    // blocks and the 64-row tile, several tiles
    const Shape tc_shapes[] = {
        {1, 1, 2, 16}, {2, 13, 1, 32}, {1, 70, 2, 16}, {1, 64, 3, 48}, {2, 33, 1, 128}};
    for (const Shape& s : tc_shapes) test_shape_tc(*cpu, s, false);
    test_shape_tc(*cpu, {1, 150, 2, 64}, true);
  } catch (const std::exception& e) {
    std::printf("FAIL exception: %s\n", e.what());
    return 1;
  }
  std::printf("%d of %d checks failed\n", g_failures, g_checks);
  return g_failures == 0 ? 0 : 1;
}
