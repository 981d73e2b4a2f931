// Helpers of the CUDA-vs-CPU op tests: the tolerance table, the comparison
// (normalised error, NaN never passes) and Twin, a buffer on both backends.
#pragma once
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "core/util/error.h"

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

// Largest normalised error; > 1 fails; NaN (in either) fails.
inline void expect_close(const std::string& what, const std::vector<float>& got,
                  const std::vector<float>& want, TolKind k) {
  const Tol t = kTol[k];
  double worst = 0.0;
  size_t worst_i = 0, bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = got[i], w = want[i];
    const double lim = t.abs + t.rel * std::fabs(w);
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
    std::printf("FAIL %-40s %zu/%zu wrong (tol %s), worst at %zu: cuda %.9g cpu %.9g\n",
                what.c_str(), bad, want.size(), t.kind, worst_i,
                got.empty() ? 0.0 : got[worst_i], want.empty() ? 0.0 : want[worst_i]);
  } else {
    std::printf("ok   %-40s n=%zu worst %.3g of tol (%s)\n", what.c_str(), want.size(), worst,
                t.kind);
  }
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
  Buf f(const std::vector<float>& v) { return make(v.data(), v.size() * 4); }
  Buf i(const std::vector<int32_t>& v) { return make(v.data(), v.size() * 4); }
  Buf zeros_f(size_t n) { return make(nullptr, n * 4); }
  // Downloads both sides and compares them (as floats; int32 buffers converted).
  void check_f(const std::string& what, const Buf& b, TolKind k) {
    std::vector<float> hc(b.bytes / 4), hg(b.bytes / 4);
    cpu.to_host(hc.data(), b.c, b.bytes);
    gpu.to_host(hg.data(), b.g, b.bytes);
    expect_close(what, hg, hc, k);
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
