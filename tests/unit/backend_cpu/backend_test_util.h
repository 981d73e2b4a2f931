// Shared helpers of the CPU backend tests: the ONE tolerance table, a seeded
// random generator (seed derived from the test name), normalised errors that
// never let NaN pass, and central finite differences in double precision.
#pragma once
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace m6::test {

// ---- tolerances (max normalised error, see max_norm_err) ----------------------
struct Tol {
  // analytic gradient (double) vs central differences with step kFdStep: the
  // truncation error is O(h^2) ~ 1e-12, the cancellation error ~ eps*|L|/h ~ 1e-9
  static constexpr double fd_grad = 1e-6;
  // double forward vs a naive double formula: only summation order differs
  static constexpr double fwd_double = 1e-12;
  // float CpuBackend vs the double templates (float epsilon 6e-8 times a few
  // hundred accumulated roundings)
  static constexpr double float_vs_double = 2e-5;
};
constexpr double kFdStep = 1e-6;

// ---- random numbers --------------------------------------------------------------
inline uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// splitmix64: portable, so every platform draws the same inputs.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  // Seeded from the running Catch2 test case's name.
  static Rng for_test() { return Rng(fnv1a(Catch::getResultCapture().getCurrentTestName())); }
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform(double lo, double hi) {
    return lo + (hi - lo) * (static_cast<double>(next() >> 11) * 0x1.0p-53);
  }
  int below(int n) { return static_cast<int>(next() % static_cast<uint64_t>(n)); }
  std::vector<double> vec(size_t n, double lo = -1.0, double hi = 1.0) {
    std::vector<double> v(n);
    for (auto& x : v) x = uniform(lo, hi);
    return v;
  }

 private:
  uint64_t state_;
};

// ---- comparisons -------------------------------------------------------------------
// max_i |got_i - want_i| / max(max_i |want_i|, max_i |got_i|); +inf on a size
// mismatch or any non-finite value, 0 when both are all zero.
template <class A, class B>
double max_norm_err(const std::vector<A>& got, const std::vector<B>& want) {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < got.size(); i++) {
    const double g = static_cast<double>(got[i]), w = static_cast<double>(want[i]);
    if (!std::isfinite(g) || !std::isfinite(w)) return std::numeric_limits<double>::infinity();
    diff = std::max(diff, std::abs(g - w));
    scale = std::max({scale, std::abs(g), std::abs(w)});
  }
  return scale == 0.0 ? 0.0 : diff / scale;
}

// Fails the test unless err <= tol (written so that NaN fails).
#define M6_CHECK_ERR(err, tol)                                              \
  do {                                                                      \
    const double m6_err_ = (err);                                           \
    INFO("normalised error " << m6_err_ << " (tolerance " << (tol) << ")"); \
    CHECK_FALSE(!(m6_err_ <= (tol)));                                       \
  } while (0)

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size() && i < b.size(); i++) s += a[i] * b[i];
  return s;
}

// Central differences of the scalar loss() with respect to every element of x
// (x is perturbed in place and restored).
template <class F>
std::vector<double> fd_grad(std::vector<double>& x, F loss, double h = kFdStep) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); i++) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double lp = loss();
    x[i] = x0 - h;
    const double lm = loss();
    x[i] = x0;
    g[i] = (lp - lm) / (2.0 * h);
  }
  return g;
}

}  // namespace m6::test
