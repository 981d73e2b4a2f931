// The CUDA backend's fused causal attention (cuda/kernels/attention.cu)
// against the CPU reference: forward output, dqkv and the saved log-sum-exp,
// over head sizes 4..256 (every instantiation of the kernel, padded and
// exact), T = 1, T not a multiple of the 32-row tile, T = 1024; and
// determinism (a second forward and backward are bit-identical). Also the
// fused softmax-cross-entropy (kernels/transformer.cu) against the CPU.
//
// Tolerance: within twice the error of a naive fp32 attention against the
// CPU's double sums (tests/cuda/attention_ref.h says why). The buffers the
// kernel overwrites start as NaN, so an element it fails to write fails.
//
// The same on bf16 tensor cores (a backend with bf16 GEMMs, as under
// precision.compute bf16; kernels/attention_tc_kernels.cuh) on bf16 inputs:
// out and dq, dk, dv within the derived bf16 bound of
// tests/cuda/attention_tc_ref.h, lse within the fp32 rule, bit-identical
// reruns, evidence that the tensor cores ran (at T 1024 the fp32 rule
// rejects out: P was rounded), and head sizes they do not take (8, 40, 256)
// on the fp32 kernel within the fp32 rule.
//
// Exit codes as test_cuda_ops: 0 passed, 1 a check failed, 77 no CUDA device.
// --cpu-vs-cpu: a second CpuBackend stands in for CUDA (runs the harness
// without a GPU; both sides then keep the probabilities). --bench: the
// speed lines of scripts/gpu-check.sh instead of the checks (its INFO row
// takes the last: fp32 kernel against tensor cores).
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "core/backend/cuda_factory.h"
#include "cuda/backend_cuda.h"
#include "tests/cuda/attention_ref.h"
#include "tests/cuda/attention_tc_ref.h"
#include "tests/cuda/cuda_test_util.h"

using namespace m6;
using namespace m6::cuda_test;

namespace {

struct Side {
  Backend& be;
  Backend::AttentionBuffers bufs;
  float *qkv, *out, *att, *dout, *dqkv, *datt;
};

std::vector<float> download(Backend& be, const float* p, size_t n) {
  std::vector<float> h(n);
  be.to_host(h.data(), p, n * sizeof(float));
  return h;
}

void upload(Backend& be, float* p, const std::vector<float>& h) {
  be.to_device(p, h.data(), h.size() * sizeof(float));
}

Side make_side(Backend& be, const Shape& s, const std::vector<float>& qkv,
               const std::vector<float>& dout) {
  const size_t bt = static_cast<size_t>(s.B) * s.T, d = static_cast<size_t>(s.H) * s.dh;
  Side x{be,     be.attention_buffers(s.B, s.T, s.H), nullptr, nullptr, nullptr, nullptr, nullptr,
         nullptr};
  auto alloc = [&](size_t n) { return static_cast<float*>(be.alloc(std::max<size_t>(n, 1) * 4)); };
  x.qkv = alloc(bt * 3 * d);
  x.out = alloc(bt * d);
  x.att = alloc(x.bufs.saved);
  x.dout = alloc(bt * d);
  x.dqkv = alloc(bt * 3 * d);
  x.datt = alloc(x.bufs.scratch);
  upload(be, x.qkv, qkv);
  upload(be, x.dout, dout);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  upload(be, x.out, std::vector<float>(bt * d, nan));
  upload(be, x.dqkv, std::vector<float>(bt * 3 * d, nan));
  if (x.bufs.saved > 0) upload(be, x.att, std::vector<float>(x.bufs.saved, nan));
  return x;
}

void free_side(Side& x) {
  for (float* p : {x.qkv, x.out, x.att, x.dout, x.dqkv, x.datt}) x.be.release(p);
}

void run(Side& x, const Shape& s) {
  const int d = s.H * s.dh;
  x.be.attention_fwd(x.out, x.att, x.qkv, s.B, s.T, s.H, d);
  x.be.attention_bwd(x.dqkv, x.datt, x.dout, x.qkv, x.out, x.att, s.B, s.T, s.H, d);
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Forward and backward of the same inputs on both backends, outputs read back.
struct Both {
  Side cs, gs;
  std::vector<float> c_out, c_dqkv, g_out, g_dqkv;
};
Both run_both(Backend& c, Backend& g, const Shape& s, const std::vector<float>& qkv,
              const std::vector<float>& dout) {
  const size_t bt = static_cast<size_t>(s.B) * s.T, d = static_cast<size_t>(s.H) * s.dh;
  Both r{make_side(c, s, qkv, dout), make_side(g, s, qkv, dout), {}, {}, {}, {}};
  run(r.cs, s);
  run(r.gs, s);
  r.c_out = download(c, r.cs.out, bt * d);
  r.c_dqkv = download(c, r.cs.dqkv, bt * 3 * d);
  r.g_out = download(g, r.gs.out, bt * d);
  r.g_dqkv = download(g, r.gs.dqkv, bt * 3 * d);
  return r;
}

// The checks every shape ends with, then the buffers freed: the saved
// log-sum-exp [B,H,T] (when the backend keeps one) against a double
// computation, and determinism: the same inputs again (outputs reset to
// NaN) give the same bits.
void check_lse_rerun_free(Both& r, const Shape& s, const std::vector<float>& qkv,
                          const std::vector<float>& dout, const Naive<float>& nf,
                          const std::string& name) {
  Backend& g = r.gs.be;
  const size_t bt = static_cast<size_t>(s.B) * s.T, d = static_cast<size_t>(s.H) * s.dh;
  if (!r.gs.bufs.probabilities) {
    const Naive<double> nd = naive_attention<double>(qkv, dout, s);
    expect_within_naive("attention lse" + name, download(g, r.gs.att, bt * s.H), nd.lse, nf.lse);
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  upload(g, r.gs.out, std::vector<float>(bt * d, nan));
  upload(g, r.gs.dqkv, std::vector<float>(bt * 3 * d, nan));
  run(r.gs, s);
  expect_true("attention rerun bit-identical (out, dqkv)" + name,
              same_bits(download(g, r.gs.out, bt * d), r.g_out) &&
                  same_bits(download(g, r.gs.dqkv, bt * 3 * d), r.g_dqkv));
  free_side(r.cs);
  free_side(r.gs);
}

void test_shape(Backend& c, Backend& g, const Shape& s) {
  const std::string name = describe(s);
  const size_t bt = static_cast<size_t>(s.B) * s.T, d = static_cast<size_t>(s.H) * s.dh;
  // Scores of order 1 to a few: softmax neither uniform nor one-hot.
  const std::vector<float> qkv = randn(bt * 3 * d, 1.5f), dout = randn(bt * d);
  Both r = run_both(c, g, s, qkv, dout);
  const Naive<float> nf = naive_attention<float>(qkv, dout, s);
  expect_within_naive("attention out" + name, r.g_out, r.c_out, nf.out);
  expect_within_naive("attention dqkv" + name, r.g_dqkv, r.c_dqkv, nf.dqkv);
  check_lse_rerun_free(r, s, qkv, dout, nf, name);
}

// The tensor-core rows (header). g: a backend with bf16 GEMMs.
void test_shape_tc(Backend& c, Backend& g, const Shape& s, bool cpu_vs_cpu) {
  const std::string name = " bf16" + describe(s);
  const size_t bt = static_cast<size_t>(s.B) * s.T, d = static_cast<size_t>(s.H) * s.dh;
  const std::vector<float> qkv = rounded_bf16(randn(bt * 3 * d, 1.5f));
  const std::vector<float> dout = rounded_bf16(randn(bt * d));
  Both r = run_both(c, g, s, qkv, dout);
  const Naive<float> nf = naive_attention<float>(qkv, dout, s);
  const std::vector<float>& c_out = r.c_out;
  const std::vector<float>& c_dqkv = r.c_dqkv;
  const std::vector<float>& g_out = r.g_out;
  const std::vector<float>& g_dqkv = r.g_dqkv;
  const bool tc = s.dh % 16 == 0 && s.dh <= 128;  // else the fp32 kernel
  if (tc) {
    const TcBound bound = tc_bound(qkv, dout, s, &g_out, &c_out);
    expect_within_tc("attention tc out" + name, g_out, c_out, nf.out, bound.out);
    const char* what[] = {"attention tc dq", "attention tc dk", "attention tc dv"};
    for (int part = 0; part < 3; part++)
      expect_within_tc(what[part] + name, qkv_part(g_dqkv, s, part), qkv_part(c_dqkv, s, part),
                       qkv_part(nf.dqkv, s, part), qkv_part(bound.dqkv, s, part));
    if (!cpu_vs_cpu && s.T >= 1024)
      expect_true("attention tc out outside the fp32 rule (P rounded: tensor cores ran)" + name,
                  tc_ratio(g_out, c_out, nf.out, std::vector<float>(g_out.size(), 0.0f)) > 1.0);
  } else {
    expect_within_naive("attention fp32 fallback out" + name, g_out, c_out, nf.out);
    expect_within_naive("attention fp32 fallback dqkv" + name, g_dqkv, c_dqkv, nf.dqkv);
  }
  check_lse_rerun_free(r, s, qkv, dout, nf, name);
}

// The sizes the backend asks for: the CPU's probabilities, the GPU's
// log-sum-exp (unless the harness runs CPU against CPU).
void test_buffers(Backend& c, Backend& g, bool cpu_vs_cpu) {
  const Backend::AttentionBuffers cb = c.attention_buffers(2, 100, 3);
  expect_true("cpu attention_buffers: probabilities [B,H,T,T]",
              cb.probabilities && cb.saved == 2u * 3 * 100 * 100 && cb.scratch == cb.saved);
  if (cpu_vs_cpu) return;
  const Backend::AttentionBuffers gb = g.attention_buffers(2, 100, 3);
  expect_true("cuda attention_buffers: lse [B,H,T], scratch [B,H,T]",
              !gb.probabilities && gb.saved == 2u * 3 * 100 && gb.scratch == 2u * 3 * 100);
}

// The softmax-cross-entropy (one pass for max and sum together, online):
// loss and probabilities, separate and in place over the logits, then the
// gradient in place; vocabularies below a warp, odd, and GPT-2's; logits
// spread wide (scale 20) so that the running max moves often. Tolerance
// "reduction" of cuda_test_util.h (both sides sum in double).
void test_crossentropy(Backend& c, Backend& g) {
  struct Case {
    int N, V;
    float scale;
  };
  for (const Case k :
       {Case{3, 5, 1.0f}, Case{1, 259, 1.0f}, Case{7, 257, 20.0f}, Case{4, 50257, 3.0f}}) {
    Twin t{c, g};
    const std::string s = " N" + std::to_string(k.N) + " V" + std::to_string(k.V) + " scale" +
                          std::to_string(static_cast<int>(k.scale));
    std::vector<int32_t> tg = randi(k.N, k.V);
    tg[0] = -1;  // ignored position: loss 0, gradient row 0
    const std::vector<float> lv = randn(static_cast<size_t>(k.N) * k.V, k.scale);
    auto targets = t.i(tg), logits = t.f(lv), probs = t.zeros_f(lv.size());
    auto loss = t.zeros_f(k.N), loss2 = t.zeros_f(k.N);
    c.crossentropy_fwd(loss.fc(), probs.fc(), logits.fc(), targets.ic(), k.N, k.V);
    g.crossentropy_fwd(loss.fg(), probs.fg(), logits.fg(), targets.ig(), k.N, k.V);
    t.check_f("crossentropy_fwd loss" + s, loss, kReduce);
    t.check_f("crossentropy_fwd probs" + s, probs, kReduce);
    c.crossentropy_fwd(loss2.fc(), logits.fc(), logits.fc(), targets.ic(), k.N, k.V);
    g.crossentropy_fwd(loss2.fg(), logits.fg(), logits.fg(), targets.ig(), k.N, k.V);
    t.check_f("crossentropy_fwd loss (in place)" + s, loss2, kReduce);
    t.check_f("crossentropy_fwd probs (in place)" + s, logits, kReduce);
    c.crossentropy_bwd(logits.fc(), logits.fc(), targets.ic(), 0.125f, k.N, k.V);
    g.crossentropy_bwd(logits.fg(), logits.fg(), targets.ig(), 0.125f, k.N, k.V);
    t.check_f("crossentropy_bwd (in place)" + s, logits, kReduce);
  }
}

// --bench: speed of the fused attention at the shape of configs/bench-gpu.yaml
// (B 8, T 1024, 12 heads of 64), forward and backward timed apart with CUDA
// events on the backend's stream (2 warm-up calls, mean of 10); FLOPs
// counted as flash-attention does (causal: forward 2 T^2 dh per head,
// backward 2.5 x forward). One line per kernel (fp32: g; bf16 tensor cores:
// gtc, bf16 inputs), then the comparison (the INFO row of gpu-check.sh).
struct Speed {
  double fwd, bwd;
};

Speed time_attention(Backend& g, const Shape& s, bool bf16_inputs) {
  const size_t bt = static_cast<size_t>(s.B) * s.T, d = static_cast<size_t>(s.H) * s.dh;
  std::vector<float> qkv = randn(bt * 3 * d), dout = randn(bt * d);
  if (bf16_inputs) qkv = rounded_bf16(qkv), dout = rounded_bf16(dout);
  Side x = make_side(g, s, qkv, dout);
  const int d_i = static_cast<int>(d);
  cudaStream_t st = cuda_backend_stream(g);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  auto time_ms = [&](auto&& f) {
    for (int i = 0; i < 2; ++i) f();  // warm-up
    constexpr int kIters = 10;
    cudaEventRecord(e0, st);
    for (int i = 0; i < kIters; ++i) f();
    cudaEventRecord(e1, st);
    cudaEventSynchronize(e1);
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, e0, e1);
    return static_cast<double>(ms) / kIters;
  };
  Speed r{};
  r.fwd = time_ms([&] { g.attention_fwd(x.out, x.att, x.qkv, s.B, s.T, s.H, d_i); });
  r.bwd = time_ms(
      [&] { g.attention_bwd(x.dqkv, x.datt, x.dout, x.qkv, x.out, x.att, s.B, s.T, s.H, d_i); });
  g.sync();  // raises any error of the timed kernels
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  const double flop_fwd = 2.0 * s.B * s.H * static_cast<double>(s.T) * s.T * s.dh;
  std::printf("attention B%d T%d H%d dh%d on %s: saved %zu floats per layer\n", s.B, s.T, s.H,
              s.dh, g.name().c_str(), x.bufs.saved);
  std::printf("forward %.3f ms (%.2f TFLOP/s), backward %.3f ms (%.2f TFLOP/s)\n", r.fwd,
              flop_fwd / r.fwd / 1e9, r.bwd, 2.5 * flop_fwd / r.bwd / 1e9);
  free_side(x);
  return r;
}

int bench(Backend& g, Backend& gtc) {
  const Shape s{8, 1024, 12, 64};
  const Speed f = time_attention(g, s, false), t = time_attention(gtc, s, true);
  std::printf("fp32 fwd %.3f bwd %.3f ms | bf16 tensor cores fwd %.3f bwd %.3f ms (%.2fx, %.2fx)\n",
              f.fwd, f.bwd, t.fwd, t.bwd, f.fwd / t.fwd, f.bwd / t.bwd);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bool cpu_vs_cpu = false, speed = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--cpu-vs-cpu") {
      cpu_vs_cpu = true;
    } else if (a == "--bench") {
      speed = true;
    } else {
      std::printf("usage: %s [--cpu-vs-cpu] [--bench]\n", argv[0]);
      return 2;
    }
  }
  if (!cpu_vs_cpu && cuda_device_count() == 0) {
    std::printf("no CUDA device: skipping [cuda] attention and cross-entropy tests\n");
    return 77;
  }
  try {
    auto cpu = make_cpu_backend(2);
    auto gpu = cpu_vs_cpu ? make_cpu_backend(1) : make_cuda_backend(0, {false, true});
    // GEMMs (and so the attention) on bf16 tensor cores, as under precision.compute bf16
    auto gpu_tc = cpu_vs_cpu ? make_cpu_backend(1) : make_cuda_backend(0, {true, true});
    if (speed) {
      if (cpu_vs_cpu) {
        std::printf("--bench needs a CUDA device\n");
        return 2;
      }
      return bench(*gpu, *gpu_tc);
    }
    std::printf("comparing %s against %s\n", gpu->name().c_str(), cpu->name().c_str());
    test_buffers(*cpu, *gpu, cpu_vs_cpu);
    // dh 4, 8 (tiny configs), 16, 32, 48, 64, 128, 256: kernels DM = 32..256,
    // padded and exact; T = 1, below, at and across the 32-row tile, 1024.
    const Shape shapes[] = {{1, 1, 1, 32},  {2, 17, 3, 8},   {1, 7, 3, 4},     {3, 64, 4, 32},
                            {2, 33, 2, 64}, {1, 70, 2, 48},  {2, 100, 2, 128}, {1, 45, 1, 256},
                            {1, 40, 4, 16}, {1, 1024, 2, 64}};
    for (const Shape& s : shapes) test_shape(*cpu, *gpu, s);
    // tensor cores: dh 16..128 (kernels DM = 32, 64, 128, exact and with
    // unused column blocks), T = 1, below and across the 64-row tile, 1024;
    // dh 8, 40, 256 on the fp32 kernel
    const Shape tc_shapes[] = {{1, 1, 2, 16},    {2, 17, 3, 32},    {3, 64, 4, 32},
                               {2, 100, 2, 48},  {2, 130, 2, 64},   {2, 100, 2, 128},
                               {1, 1024, 2, 64}, {1, 1024, 1, 128}, {2, 17, 3, 8},
                               {1, 70, 2, 40},   {1, 45, 1, 256}};
    for (const Shape& s : tc_shapes) test_shape_tc(*cpu, *gpu_tc, s, cpu_vs_cpu);
    test_crossentropy(*cpu, *gpu);
  } catch (const std::exception& e) {
    std::printf("FAIL exception: %s\n", e.what());
    return 1;
  }
  std::printf("%d of %d checks failed\n", g_failures, g_checks);
  return g_failures == 0 ? 0 : 1;
}
