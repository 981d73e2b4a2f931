// Helpers of the CUDA-vs-CPU op tests: the tolerance table, the comparison
// (normalised error, NaN never passes), Twin, a buffer on both backends, and
// the half-precision mode (--compute bf16|fp16, see "Half precision" below).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "core/util/error.h"
#include "core/util/half_round.h"

namespace m6::cuda_test {

// ---- tolerances (fp32): |cuda - cpu| <= abs + rel * |cpu| ----------------------
struct Tol {
  const char* kind;
  double rel, abs;
};
constexpr Tol kTol[] = {
    {"exact", 0.0, 0.0},         // copies, integer outputs (routing, positions)
    {"elementwise", 1e-6, 1e-7}, // one rounding per element (fma contraction)
    {"reduction", 1e-5, 1e-6},   // sums over rows or columns, softmax, layernorm
    {"gemm", 1e-5, 1e-4},        // K-long dot products (K up to 259), other summation order
    {"model", 1e-4, 1e-6},       // a whole forward + backward
};
enum TolKind { kExact, kElem, kReduce, kGemm, kModel };

inline int g_failures = 0, g_checks = 0;

// ---- Half precision (--compute bf16|fp16) ----------------------------------------
// The semantics of precision.compute (README "Mixed precision"): an op reads
// inputs that are half values (activations stored rounded, the rounded
// compute copy of the weights) or fp32 values (LayerNorm weights, the router,
// gradients, optimizer state), computes in fp32, and the model rounds its
// output with Backend::round_half where the table says so. Twin::f uploads a
// rounded input, Twin::f32 an fp32 one; Twin::check_f rounds the output on
// each backend with that backend's own round_half (as the model does) and
// compares the rounded values, Twin::check_f32 compares an fp32 output.
//
// Tolerance of a rounded output. Both backends compute in fp32 from the same
// inputs, so before rounding |a - b| <= d, the op's fp32 tolerance (kTol,
// d = abs + rel |a|). Rounding to nearest moves each by at most u |x| + q/2
// (u the unit roundoff: bf16 2^-8, fp16 2^-11; q the format's subnormal
// quantum, 2^-24 for fp16). Hence, with w = round(a) the CPU's value,
//   |round(b) - w| <= (1 + u) d + 2u/(1 - u) |w| + 2q        (half_limit)
// i.e. one unit in the last place of the half format (one ulp <= 2u |w|)
// plus the fp32 tolerance: when a and b straddle a rounding boundary the
// rounded values are neighbours. Four ulps (> 4u |w|) fail wherever the fp32
// term is below 2u |w|, i.e. for every value not near zero; near zero the
// fp32 absolute term of kTol (scaled for these inputs) is what is allowed.
inline std::optional<HalfType> g_half;  // nullopt: fp32 mode

inline double half_quantum(HalfType h) {  // the smallest subnormal
  return h == HalfType::F16 ? std::ldexp(1.0, -24) : std::ldexp(1.0, -133);
}
inline const char* half_name(HalfType h) { return h == HalfType::BF16 ? "bf16" : "fp16"; }
inline double half_limit(const Tol& t, HalfType h, double w, double extra_abs = 0.0) {
  const double u = half_unit_roundoff(h), q = half_quantum(h), aw = std::fabs(w);
  return (1.0 + u) * (t.abs + extra_abs + t.rel * aw) + 2.0 * u / (1.0 - u) * aw + 2.0 * q;
}
// Half mode's GEMMs on the GPU run on tensor cores (bf16) whose fp32
// accumulation order (and truncation) differs from the CPU's: an absolute
// term scaled by the reduction length k and the operands' magnitude, two
// fp32 ulps (2^-22) of the largest product per term, added to kTol's gemm
// row (sized for randn inputs) for GEMM outputs in half mode; 0 in fp32 mode.
inline double gemm_abs(int k, const std::vector<float>& a, const std::vector<float>& b) {
  if (!g_half) return 0.0;
  double ma = 0.0, mb = 0.0;
  for (float x : a) ma = std::max(ma, static_cast<double>(std::fabs(x)));
  for (float x : b) mb = std::max(mb, static_cast<double>(std::fabs(x)));
  return std::ldexp(1.0, -22) * k * ma * mb;
}
// x moved k units in the last place of the half format, away from zero (x a
// half value). The self-test injects such differences.
inline float half_step(float x, int k, HalfType h) {
  if (h == HalfType::BF16) return bf16_to_f32(static_cast<uint16_t>(f32_to_bf16(x) + k));
  return f16_to_f32(static_cast<uint16_t>(f32_to_f16(x) + k));
}
// Self-test hooks (tests/cuda/selftest): move the "GPU" side's rounded output
// by `ulps` half ulps away from zero (every element, or only the element of
// largest magnitude), or leave it unrounded, before the comparison.
struct Inject {
  int ulps = 0;
  bool largest_only = false;
  bool skip_gpu_round = false;
};
inline Inject g_inject;
// Evidence that half mode rounds at all: rounded outputs whose CPU value
// before rounding was not a half value already.
inline size_t g_rounded_total = 0, g_rounded_changed = 0;

// Largest normalised error; > 1 fails; NaN (in either) fails. `half`: both
// sides are rounded to that format, compared with half_limit.
inline void expect_close(const std::string& what, const std::vector<float>& got,
                         const std::vector<float>& want, TolKind k,
                         std::optional<HalfType> half = std::nullopt, double extra_abs = 0.0) {
  const Tol t = kTol[k];
  double worst = 0.0;
  size_t worst_i = 0, bad = 0;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    const double lim =
        half ? half_limit(t, *half, w, extra_abs) : t.abs + extra_abs + t.rel * std::fabs(w);
    double err = std::fabs(g - w);
    err = lim > 0 ? err / lim : (err == 0 ? 0 : INFINITY);
    if (!(err <= 1.0)) ++bad;  // NaN lands here
    if (!(err <= worst)) {
      worst = err;
      worst_i = i;
    }
  }
  ++g_checks;
  if (bad > 0 || got.size() != want.size()) {
    ++g_failures;
    std::printf("FAIL %-40s %zu/%zu wrong (tol %s%s%s), worst at %zu: cuda %.9g cpu %.9g\n",
                what.c_str(), bad, want.size(), t.kind, half ? " + 1 ulp " : "",
                half ? half_name(*half) : "", worst_i, got.empty() ? 0.0 : got[worst_i],
                want.empty() ? 0.0 : want[worst_i]);
  } else {
    std::printf("ok   %-40s n=%zu worst %.3g of tol (%s%s%s)\n", what.c_str(), want.size(), worst,
                t.kind, half ? " + 1 ulp " : "", half ? half_name(*half) : "");
  }
}

// Whole-tensor comparison for a whole model: max |got - want| <= tol max |want|.
inline void expect_close_norm(const std::string& what, const std::vector<float>& got,
                              const std::vector<float>& want, double tol) {
  double diff = got.size() == want.size() ? 0.0 : INFINITY, scale = 0.0;
  for (size_t i = 0; i < want.size() && i < got.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(e <= diff)) diff = e;  // NaN sticks
    scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
  }
  const double err = diff / std::max(scale, 1e-30);
  ++g_checks;
  const bool ok = err <= tol || diff == 0.0;
  if (!ok) ++g_failures;
  std::printf("%s %-40s n=%zu max|diff|/max|cpu| %.3g (tol %.3g)\n", ok ? "ok  " : "FAIL",
              what.c_str(), want.size(), err, tol);
}

inline void expect_true(const std::string& what, bool ok) {
  ++g_checks;
  if (!ok) ++g_failures;
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
}

inline std::vector<float> to_f(const std::vector<int32_t>& v) { return {v.begin(), v.end()}; }

// A buffer living on both backends with the same contents.
struct Twin {
  Twin(Backend& c, Backend& g) : cpu(c), gpu(g) {}
  Twin(const Twin&) = delete;
  Twin& operator=(const Twin&) = delete;
  Backend& cpu;
  Backend& gpu;

  struct Buf {
    void* c = nullptr;
    void* g = nullptr;
    size_t bytes = 0;
    float* fc() const { return static_cast<float*>(c); }
    float* fg() const { return static_cast<float*>(g); }
    int32_t* ic() const { return static_cast<int32_t*>(c); }
    int32_t* ig() const { return static_cast<int32_t*>(g); }
  };
  std::vector<Buf> owned;

  ~Twin() {
    for (Buf& b : owned) {
      cpu.release(b.c);
      gpu.release(b.g);
    }
  }
  Buf make(const void* host, size_t bytes) {
    Buf b{cpu.alloc(bytes), gpu.alloc(bytes), bytes};
    if (host != nullptr) {
      cpu.to_device(b.c, host, bytes);
      gpu.to_device(b.g, host, bytes);
    }
    owned.push_back(b);
    return b;
  }
  // An input the model stores in the compute type (an activation, a
  // gradient of one, the compute copy of a weight): rounded in half mode.
  Buf f(const std::vector<float>& v) {
    if (!g_half) return f32(v);
    std::vector<float> r(v);
    for (float& x : r) x = round_half(x, *g_half);
    return f32(r);
  }
  // An input that stays fp32 in every mode (LayerNorm weights, the router,
  // weight gradients, master weights and Adam state).
  Buf f32(const std::vector<float>& v) { return make(v.data(), v.size() * 4); }
  Buf i(const std::vector<int32_t>& v) { return make(v.data(), v.size() * 4); }
  Buf zeros_f(size_t n) { return make(nullptr, n * 4); }
  // The GPU side of b rounded as the model rounds a stored output (half mode).
  void round_g(const Buf& b) {
    if (g_half) gpu.round_half(b.fg(), b.bytes / 4, *g_half);
  }
  // An output the model stores in the compute type. fp32 mode: compares the
  // fp32 values. Half mode: rounds the output in place on each backend (so a
  // later op reads it rounded, as in the model), checks that both sides hold
  // half values, and compares them with half_limit.
  // extra_abs: an absolute term added to kTol's (gemm_abs).
  void check_f(const std::string& what, const Buf& b, TolKind k, double extra_abs = 0.0) {
    if (!g_half) return check_f32(what, b, k, extra_abs);
    const HalfType h = *g_half;
    const size_t n = b.bytes / 4;
    std::vector<float> pre(n), hc(n), hg(n);
    cpu.to_host(pre.data(), b.c, b.bytes);
    cpu.round_half(b.fc(), n, h);
    if (!g_inject.skip_gpu_round) gpu.round_half(b.fg(), n, h);
    cpu.to_host(hc.data(), b.c, b.bytes);
    gpu.to_host(hg.data(), b.g, b.bytes);
    for (size_t i = 0; i < n; ++i) g_rounded_changed += pre[i] != hc[i] && !std::isnan(pre[i]);
    g_rounded_total += n;
    if (g_inject.ulps != 0 && n > 0) {
      size_t big = 0;
      for (size_t i = 1; i < n; ++i) big = std::fabs(hc[i]) > std::fabs(hc[big]) ? i : big;
      for (size_t i = 0; i < n; ++i)
        if (!g_inject.largest_only || i == big) hg[i] = half_step(hg[i], g_inject.ulps, h);
    }
    size_t unrounded = 0;
    for (size_t i = 0; i < n; ++i) {
      const auto same = [&](float x) {
        const float r = round_half(x, h);
        return std::memcmp(&r, &x, 4) == 0 || std::isnan(x);
      };
      unrounded += !same(hg[i]) || !same(hc[i]);
    }
    if (unrounded > 0) {
      ++g_checks, ++g_failures;
      std::printf("FAIL %-40s %zu/%zu values are not %s values (output not rounded)\n",
                  what.c_str(), unrounded, n, half_name(h));
      return;
    }
    expect_close(what, hg, hc, k, h, extra_abs);
  }
  // An output that stays fp32 in every mode: the fp32 tolerance.
  void check_f32(const std::string& what, const Buf& b, TolKind k, double extra_abs = 0.0) {
    std::vector<float> hc(b.bytes / 4), hg(b.bytes / 4);
    cpu.to_host(hc.data(), b.c, b.bytes);
    gpu.to_host(hg.data(), b.g, b.bytes);
    expect_close(what, hg, hc, k, std::nullopt, extra_abs);
  }
  void check_i(const std::string& what, const Buf& b) {
    std::vector<int32_t> hc(b.bytes / 4), hg(b.bytes / 4);
    cpu.to_host(hc.data(), b.c, b.bytes);
    gpu.to_host(hg.data(), b.g, b.bytes);
    expect_close(what, to_f(hg), to_f(hc), kExact);
  }
};

inline std::mt19937 g_rng(1234);
inline std::vector<float> randn(size_t n, float scale = 1.0f) {
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = nd(g_rng);
  return v;
}
inline std::vector<int32_t> randi(size_t n, int hi) {
  std::vector<int32_t> v(n);
  for (auto& x : v) x = static_cast<int32_t>(g_rng() % static_cast<unsigned>(hi));
  return v;
}

}  // namespace m6::cuda_test
