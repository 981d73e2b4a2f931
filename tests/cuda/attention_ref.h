// The host side of the fused-attention tests (tests/cuda/test_cuda_attention.cpp
// on a GPU, tests/cuda/emulated on the host): a naive causal attention and
// its backward with a chosen accumulator type, and the tolerance rule.
//
// Tolerance, derived rather than invented (flash-attention's rule): the CPU
// reference accumulates in double; a naive attention in fp32 (the same
// formulas, plain sequential fp32 sums) is measured against it on the same
// inputs, and the fused kernel's result must be within
//   max|got - cpu| <= 2 * max|naive_fp32 - cpu| + 8 * FLT_EPSILON * max|cpu|
// per tensor. The fused kernel sums in fp32 too, in another order (tiles,
// online rescaling), so it is as far from the exact result as a naive fp32
// computation, give or take the factor 2; the second term covers shapes where
// the naive sums happen to be exact (T = 1: out = v). NaN never passes.
#pragma once
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "tests/cuda/cuda_test_util.h"

namespace m6::cuda_test {

struct Shape {
  int B, T, H, dh;
};

inline std::string describe(const Shape& s) {
  return " B" + std::to_string(s.B) + " T" + std::to_string(s.T) + " H" + std::to_string(s.H) +
         " dh" + std::to_string(s.dh);
}

// Causal attention and its backward on the host with accumulator Acc (float:
// the naive fp32 attention of the tolerance; double: the log-sum-exp
// reference). qkv[B,T,3d] -> out[B,T,d], lse[B,H,T]; dout -> dqkv[B,T,3d].
template <class Acc>
struct Naive {
  std::vector<float> out, lse, dqkv;
};

template <class Acc>
Naive<Acc> naive_attention(const std::vector<float>& qkv, const std::vector<float>& dout,
                           const Shape& s) {
  const int d = s.H * s.dh, T = s.T;
  const int64_t row = 3 * static_cast<int64_t>(d);
  const Acc scale = Acc(1) / std::sqrt(static_cast<Acc>(s.dh));
  Naive<Acc> r;
  r.out.assign(static_cast<size_t>(s.B) * T * d, 0.0f);
  r.lse.assign(static_cast<size_t>(s.B) * s.H * T, 0.0f);
  r.dqkv.assign(static_cast<size_t>(s.B) * T * 3 * d, 0.0f);
  std::vector<Acc> p(T), dp(T), o(s.dh), dk(static_cast<size_t>(T) * s.dh),
      dv(static_cast<size_t>(T) * s.dh);
  for (int b = 0; b < s.B; b++) {
    for (int h = 0; h < s.H; h++) {
      auto at = [&](int t, int part) {
        return qkv.data() + (static_cast<int64_t>(b) * T + t) * row + part * d + h * s.dh;
      };
      std::fill(dk.begin(), dk.end(), Acc(0));
      std::fill(dv.begin(), dv.end(), Acc(0));
      for (int t = 0; t < T; t++) {
        const float* q = at(t, 0);
        const float* go = dout.data() + (static_cast<int64_t>(b) * T + t) * d + h * s.dh;
        Acc mx = -std::numeric_limits<Acc>::infinity();
        for (int t2 = 0; t2 <= t; t2++) {
          const float* k = at(t2, 1);
          Acc dot = 0;
          for (int i = 0; i < s.dh; i++) dot += static_cast<Acc>(q[i]) * k[i];
          p[t2] = dot * scale;
          mx = std::max(mx, p[t2]);
        }
        Acc z = 0;
        for (int t2 = 0; t2 <= t; t2++) z += (p[t2] = std::exp(p[t2] - mx));
        r.lse[(static_cast<size_t>(b) * s.H + h) * T + t] = static_cast<float>(mx + std::log(z));
        std::fill(o.begin(), o.end(), Acc(0));
        Acc D = 0;
        for (int t2 = 0; t2 <= t; t2++) {
          p[t2] /= z;
          const float* v = at(t2, 2);
          Acc g = 0;
          for (int i = 0; i < s.dh; i++) {
            o[i] += p[t2] * v[i];
            g += static_cast<Acc>(go[i]) * v[i];
          }
          dp[t2] = g;
          D += p[t2] * g;
        }
        float* out = r.out.data() + (static_cast<int64_t>(b) * T + t) * d + h * s.dh;
        for (int i = 0; i < s.dh; i++) out[i] = static_cast<float>(o[i]);
        std::fill(o.begin(), o.end(), Acc(0));  // now dq
        for (int t2 = 0; t2 <= t; t2++) {
          const Acc ds = p[t2] * (dp[t2] - D);
          const float* k = at(t2, 1);
          for (int i = 0; i < s.dh; i++) {
            o[i] += ds * k[i];
            dk[static_cast<size_t>(t2) * s.dh + i] += ds * q[i];
            dv[static_cast<size_t>(t2) * s.dh + i] += p[t2] * go[i];
          }
        }
        float* dq = r.dqkv.data() + (static_cast<int64_t>(b) * T + t) * row + h * s.dh;
        for (int i = 0; i < s.dh; i++) dq[i] = static_cast<float>(o[i] * scale);
      }
      for (int t2 = 0; t2 < T; t2++) {
        float* dst = r.dqkv.data() + (static_cast<int64_t>(b) * T + t2) * row + h * s.dh;
        for (int i = 0; i < s.dh; i++) {
          dst[d + i] = static_cast<float>(dk[static_cast<size_t>(t2) * s.dh + i] * scale);
          dst[2 * d + i] = static_cast<float>(dv[static_cast<size_t>(t2) * s.dh + i]);
        }
      }
    }
  }
  return r;
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double e = std::fabs(static_cast<double>(a[i]) - b[i]);
    if (!(e <= m)) m = e;  // NaN sticks
  }
  return m;
}

inline double max_abs(const std::vector<float>& a) {
  double m = 0.0;
  for (float x : a) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

// The tolerance rule of the header on one tensor.
inline void expect_within_naive(const std::string& what, const std::vector<float>& got,
                                const std::vector<float>& want, const std::vector<float>& naive) {
  ++g_checks;
  const double err = got.size() == want.size() ? max_abs_diff(got, want) : INFINITY;
  const double naive_err = max_abs_diff(naive, want);
  const double lim = 2.0 * naive_err + 8.0 * FLT_EPSILON * max_abs(want);
  const bool ok = err <= lim;  // NaN fails
  if (!ok) ++g_failures;
  std::printf("%s %-44s max err %.3g, naive fp32 %.3g, limit %.3g\n", ok ? "ok  " : "FAIL",
              what.c_str(), err, naive_err, lim);
}

}  // namespace m6::cuda_test
