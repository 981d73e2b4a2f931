// The tolerance of the tensor-core (bf16) fused attention
// (cuda/kernels/attention_tc_kernels.cuh), shared by the emulated test and
// the GPU test.
//
// Inputs q, k, v and dout are bf16 values (the model rounds them so under
// precision.compute bf16; the tests round them), so their conversion to the
// tensor-core operand type is exact and every product of two of them is
// exact in fp32. The only bf16 roundings are the probabilities P and dS as
// operands of the products, each with relative error at most
// u = 2^-8 (bf16 keeps 8 significant bits; round to nearest even:
// |bf16(x) - x| <= u |x|). Written out, with p the exact probabilities and
// dS = p (dP - D), per element:
//   out[t,i]  : sum_j bf16(e_j) v[j,i] / l, e_j = exp(s_j - m) in fp32, so
//               |err| <= u * sum_j p[t,j] |v[j,i]|
//   dV[j,i]   : sum_t bf16(p[t,j]) dO[t,i]   -> u * sum_t p[t,j] |dO[t,i]|
//   dK[j,i]   : scale sum_t bf16(dS[t,j]) q[t,i] -> scale * sum_t E[t,j] |q[t,i]|
//   dQ[t,i]   : scale sum_j bf16(dS[t,j]) k[j,i] -> scale * sum_j E[t,j] |k[j,i]|
// where E[t,j] = u |dS[t,j]| + p[t,j] dD[t] bounds the error of dS as an
// operand: its own rounding, and through D = rowsum(dO * out) the forward's
// (the backward takes the forward's out, as the model does, and out carries
// the P rounding above): dD[t] = |sum_i dO[t,i] (out[t,i] - exact)|, measured
// on the out the backward was given (or bounded by sum_i |dO| * out's bound).
// plus the fp32 part (scores, exp, sums in another order), bounded as for the
// fp32 kernel (tests/cuda/attention_ref.h): 2 * max|naive_fp32 - cpu| +
// 8 * FLT_EPSILON * max|cpu| per tensor. So element e passes when
//   |got[e] - cpu[e]| <= bound[e] + 2 * max|naive - cpu| + 8 eps max|cpu|.
// The bound is attained when every rounding goes the same way as v (or dO,
// q, k): a result whose P errors were twice bf16's fails it. lse involves no
// bf16 rounding (scores from exact products, fp32 sums): the fp32 rule.
#pragma once
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/util/half_round.h"
#include "tests/cuda/attention_ref.h"

namespace m6::cuda_test {

constexpr double kBf16U = 1.0 / 256.0;  // 2^-8

inline std::vector<float> rounded_bf16(std::vector<float> v) {
  for (float& x : v) x = round_bf16(x);
  return v;
}

// The per-element bf16 parts of the bound (header), from a double attention.
struct TcBound {
  std::vector<float> out, dqkv;
};

// out_used, out_ref: the out the backward was given and the reference out
// (then dD is the error of D that out_used actually causes, |sum_i dO (out_used
// - out_ref)|); null: dD from the bound of out.
inline TcBound tc_bound(const std::vector<float>& qkv, const std::vector<float>& dout,
                        const Shape& s, const std::vector<float>* out_used = nullptr,
                        const std::vector<float>* out_ref = nullptr) {
  const int d = s.H * s.dh, T = s.T;
  const int64_t row = 3 * static_cast<int64_t>(d);
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.dh)), u = kBf16U;
  TcBound r;
  r.out.assign(static_cast<size_t>(s.B) * T * d, 0.0f);
  r.dqkv.assign(static_cast<size_t>(s.B) * T * 3 * d, 0.0f);
  std::vector<double> p(static_cast<size_t>(T) * T),
      E(static_cast<size_t>(T) * T);  // E: dP, then the bound E
  for (int b = 0; b < s.B; b++) {
    for (int h = 0; h < s.H; h++) {
      auto at = [&](int t, int part) {
        return qkv.data() + (static_cast<int64_t>(b) * T + t) * row + part * d + h * s.dh;
      };
      auto go = [&](int t) {
        return dout.data() + (static_cast<int64_t>(b) * T + t) * d + h * s.dh;
      };
      auto dst = [&](int t, int part) {
        return r.dqkv.data() + (static_cast<int64_t>(b) * T + t) * row + part * d + h * s.dh;
      };
      for (int t = 0; t < T; t++) {
        double mx = -INFINITY, z = 0.0, D = 0.0;
        for (int j = 0; j <= t; j++) {
          double dot = 0.0;
          for (int i = 0; i < s.dh; i++) dot += static_cast<double>(at(t, 0)[i]) * at(j, 1)[i];
          p[t * T + j] = dot * scale;
          mx = std::max(mx, p[t * T + j]);
        }
        for (int j = 0; j <= t; j++) z += (p[t * T + j] = std::exp(p[t * T + j] - mx));
        for (int j = 0; j <= t; j++) {
          p[t * T + j] /= z;
          double dp = 0.0;
          for (int i = 0; i < s.dh; i++) dp += static_cast<double>(go(t)[i]) * at(j, 2)[i];
          E[t * T + j] = dp;  // dP for now
          D += p[t * T + j] * dp;
        }
        float* o = r.out.data() + (static_cast<int64_t>(b) * T + t) * d + h * s.dh;
        double dD = 0.0;  // error of D = rowsum(dO * out) from out's
        const int64_t orow = (static_cast<int64_t>(b) * T + t) * d + h * s.dh;
        for (int i = 0; i < s.dh; i++) {
          double bo = 0.0;
          for (int j = 0; j <= t; j++) bo += p[t * T + j] * std::fabs(at(j, 2)[i]);
          o[i] = static_cast<float>(u * bo);
          if (out_used != nullptr)
            dD += static_cast<double>(go(t)[i]) * ((*out_used)[orow + i] - (*out_ref)[orow + i]);
          else
            dD += std::fabs(go(t)[i]) * u * bo;
        }
        dD = std::fabs(dD);
        // E: bound on the error of dS as an operand: its bf16 rounding
        // u |dS| plus p * dD
        for (int j = 0; j <= t; j++)
          E[t * T + j] = u * std::fabs(p[t * T + j] * (E[t * T + j] - D)) + p[t * T + j] * dD;
        for (int i = 0; i < s.dh; i++) {
          double bq = 0.0;
          for (int j = 0; j <= t; j++) bq += E[t * T + j] * std::fabs(at(j, 1)[i]);
          dst(t, 0)[i] = static_cast<float>(scale * bq);
        }
      }
      for (int j = 0; j < T; j++) {
        for (int i = 0; i < s.dh; i++) {
          double bk = 0.0, bv = 0.0;
          for (int t = j; t < T; t++) {
            bk += E[t * T + j] * std::fabs(at(t, 0)[i]);
            bv += p[t * T + j] * std::fabs(go(t)[i]);
          }
          dst(j, 1)[i] = static_cast<float>(scale * bk);
          dst(j, 2)[i] = static_cast<float>(u * bv);
        }
      }
    }
  }
  return r;
}

// Part 0 (q), 1 (k) or 2 (v) of a [B,T,3d] tensor, as [B,T,d].
inline std::vector<float> qkv_part(const std::vector<float>& x, const Shape& s, int part) {
  const size_t d = static_cast<size_t>(s.H) * s.dh, bt = x.size() / (3 * d);
  std::vector<float> r(bt * d);
  for (size_t t = 0; t < bt; t++)
    for (size_t i = 0; i < d; i++) r[t * d + i] = x[t * 3 * d + part * d + i];
  return r;
}

// max over elements of |got - want| / limit (the header's rule); > 1 fails,
// NaN fails.
inline double tc_ratio(const std::vector<float>& got, const std::vector<float>& want,
                       const std::vector<float>& naive, const std::vector<float>& bound) {
  if (got.size() != want.size() || bound.size() != want.size()) return INFINITY;
  const double fp32 = 2.0 * max_abs_diff(naive, want) + 8.0 * FLT_EPSILON * max_abs(want);
  double worst = 0.0;
  for (size_t e = 0; e < got.size(); ++e) {
    const double lim = bound[e] + fp32;
    const double err = std::fabs(static_cast<double>(got[e]) - want[e]);
    const double q = lim > 0.0 ? err / lim : (err == 0.0 ? 0.0 : INFINITY);
    if (!(q <= worst)) worst = q;  // NaN sticks
  }
  return worst;
}

inline void expect_within_tc(const std::string& what, const std::vector<float>& got,
                             const std::vector<float>& want, const std::vector<float>& naive,
                             const std::vector<float>& bound) {
  ++g_checks;
  const double q = tc_ratio(got, want, naive, bound);
  const bool ok = q <= 1.0;
  if (!ok) ++g_failures;
  std::printf("%s %-44s max err %.3g, max err/limit %.3g\n", ok ? "ok  " : "FAIL", what.c_str(),
              got.size() == want.size() ? max_abs_diff(got, want) : INFINITY, q);
}

}  // namespace m6::cuda_test
