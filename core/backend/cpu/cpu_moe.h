// CPU reference of the mixture-of-experts ops of backend.h (router, capacity
// assignment, permute/unpermute, auxiliary losses) as templates on the scalar
// type T. Routing semantics: DESIGN.md section 3 and the comments of
// backend.h. Shapes: N tokens, E experts in `groups` groups of Eg = E/groups
// consecutive experts, S = groups*top_k slots per token (group-major).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/backend/backend.h"
#include "core/util/error.h"

namespace m6::cpu {

inline void check_router_args(const RouterArgs& a) {
  if (a.n < 0) throw Error(fmt("router: tokens (", a.n, ") must be >= 0"));
  if (a.e <= 0 || a.groups <= 0 || a.e % a.groups != 0)
    throw Error(
        fmt("router: experts (", a.e, ") must be a positive multiple of groups (", a.groups, ")"));
  if (a.top_k < 1 || a.top_k > a.e / a.groups)
    throw Error(fmt("router: top_k (", a.top_k, ") must be in [1, experts per group (",
                    a.e / a.groups, ")]"));
}

// probs[N,E] = softmax of logits[N,E] within each group; lse[N,groups];
// expert[N,S], gate[N,S]: per group the top_k experts by probability, the
// lower index winning a tie (the comparison is on the stored probabilities),
// in decreasing order of probability. Gates are renormalised over all S
// chosen slots of the token when a.normalize.
template <class T>
void router_fwd(T* probs, T* lse, int32_t* expert, T* gate, const T* logits, const RouterArgs& a) {
  check_router_args(a);
  const int E = a.e, G = a.groups, Eg = E / G, K = a.top_k, S = G * K;
#pragma omp parallel for schedule(static)
  for (int n = 0; n < a.n; n++) {
    const T* l = logits + static_cast<int64_t>(n) * E;
    T* p = probs + static_cast<int64_t>(n) * E;
    int32_t* ex = expert + static_cast<int64_t>(n) * S;
    T* gt = gate + static_cast<int64_t>(n) * S;
    std::vector<char> used(Eg);
    for (int g = 0; g < G; g++) {
      const int lo = g * Eg;
      double mx = -std::numeric_limits<double>::infinity();
      for (int e = lo; e < lo + Eg; e++) mx = std::max(mx, static_cast<double>(l[e]));
      double z = 0.0;
      for (int e = lo; e < lo + Eg; e++) z += std::exp(l[e] - mx);
      for (int e = lo; e < lo + Eg; e++) p[e] = static_cast<T>(std::exp(l[e] - mx) / z);
      lse[static_cast<int64_t>(n) * G + g] = static_cast<T>(mx + std::log(z));
      std::fill(used.begin(), used.end(), 0);
      for (int k = 0; k < K; k++) {
        int best = -1;  // strict '>' in index order: ties go to the lower index
        for (int e = lo; e < lo + Eg; e++)
          if (!used[e - lo] && (best < 0 || p[e] > p[best])) best = e;
        used[best - lo] = 1;
        ex[g * K + k] = best;
        gt[g * K + k] = p[best];
      }
    }
    if (a.normalize) {
      double zs = 0.0;
      for (int s = 0; s < S; s++) zs += gt[s];
      for (int s = 0; s < S; s++) gt[s] = static_cast<T>(gt[s] / zs);
    }
  }
}

// Slot-major capacity: slot 0 of tokens 0..N-1, then slot 1, ... pos[N,S] is
// the row inside the expert's block or -1 when dropped (capacity <= 0: no
// limit); count[E] kept slots, demand[E] slots that chose the expert.
// Serial: the order of claims is the definition.
inline void moe_assign(int32_t* pos, int32_t* count, int32_t* demand, const int32_t* expert, int N,
                       int S, int E, int capacity) {
  std::fill(count, count + E, 0);
  std::fill(demand, demand + E, 0);
  for (int s = 0; s < S; s++) {
    for (int n = 0; n < N; n++) {
      const int64_t i = static_cast<int64_t>(n) * S + s;
      const int e = expert[i];
      if (e < 0 || e >= E)
        throw Error(fmt("moe_assign: expert ", e, " of token ", n, " slot ", s, " is outside [0, ",
                        E, ")"));
      demand[e]++;
      pos[i] = (capacity <= 0 || count[e] < capacity) ? count[e]++ : -1;
    }
  }
}

// xp[offset[e] + pos[n,s], :] = x[n, :] for every kept slot (other rows untouched)
template <class T>
void moe_permute(T* xp, const T* x, const int32_t* expert, const int32_t* pos,
                 const int32_t* offset, int N, int S, int d) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    for (int s = 0; s < S; s++) {
      const int64_t i = static_cast<int64_t>(n) * S + s;
      if (pos[i] < 0) continue;
      T* dst = xp + (static_cast<int64_t>(offset[expert[i]]) + pos[i]) * d;
      const T* src = x + static_cast<int64_t>(n) * d;
      for (int j = 0; j < d; j++) dst[j] = src[j];
    }
  }
}

// dx[n,:] += sum over kept slots of dxp[offset[e] + pos[n,s], :]
template <class T>
void moe_permute_bwd(T* dx, const T* dxp, const int32_t* expert, const int32_t* pos,
                     const int32_t* offset, int N, int S, int d) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    T* dst = dx + static_cast<int64_t>(n) * d;
    for (int s = 0; s < S; s++) {
      const int64_t i = static_cast<int64_t>(n) * S + s;
      if (pos[i] < 0) continue;
      const T* src = dxp + (static_cast<int64_t>(offset[expert[i]]) + pos[i]) * d;
      for (int j = 0; j < d; j++) dst[j] += src[j];
    }
  }
}

// y[n,:] += sum over kept slots of gate[n,s] * yp[offset[e] + pos[n,s], :]
template <class T>
void moe_unpermute(T* y, const T* yp, const T* gate, const int32_t* expert, const int32_t* pos,
                   const int32_t* offset, int N, int S, int d) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    T* dst = y + static_cast<int64_t>(n) * d;
    for (int s = 0; s < S; s++) {
      const int64_t i = static_cast<int64_t>(n) * S + s;
      if (pos[i] < 0) continue;
      const T g = gate[i];
      const T* src = yp + (static_cast<int64_t>(offset[expert[i]]) + pos[i]) * d;
      for (int j = 0; j < d; j++) dst[j] += g * src[j];
    }
  }
}

// dyp[row,:] = gate[n,s] * dy[n,:] for kept slots (other rows untouched);
// dgate[n,s] = dot(dy[n,:], yp[row,:]) for kept slots, 0 for dropped ones.
template <class T>
void moe_unpermute_bwd(T* dyp, T* dgate, const T* dy, const T* yp, const T* gate,
                       const int32_t* expert, const int32_t* pos, const int32_t* offset, int N,
                       int S, int d) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const T* g = dy + static_cast<int64_t>(n) * d;
    for (int s = 0; s < S; s++) {
      const int64_t i = static_cast<int64_t>(n) * S + s;
      if (pos[i] < 0) {
        dgate[i] = T(0);
        continue;
      }
      const int64_t r = (static_cast<int64_t>(offset[expert[i]]) + pos[i]) * d;
      double dot = 0.0;
      for (int j = 0; j < d; j++) {
        dyp[r + j] = gate[i] * g[j];
        dot += static_cast<double>(g[j]) * yp[r + j];
      }
      dgate[i] = static_cast<T>(dot);
    }
  }
}

// sums[0..E) = sum_n probs[n,e], sums[E] = sum of lse^2 over [N, groups]:
// the sums of router_aux_fwd (Backend::router_aux_sums), in double.
template <class T>
void router_aux_sums(double* sums, const T* probs, const T* lse, const RouterArgs& a) {
  check_router_args(a);
  const int E = a.e;
  for (int e = 0; e <= E; e++) sums[e] = 0.0;
  for (int n = 0; n < a.n; n++)
    for (int e = 0; e < E; e++) sums[e] += probs[static_cast<int64_t>(n) * E + e];
  for (int64_t i = 0; i < static_cast<int64_t>(a.n) * a.groups; i++)
    sums[E] += static_cast<double>(lse[i]) * lse[i];
}

// aux = (Eg/groups) * sum_e f_e P_e, f_e = demand[e]/(N*top_k), P_e = mean_n probs[n,e]
// (the Switch loss per group, averaged over groups); z = mean_{n,g} lse[n,g]^2.
// N = 0 gives {0, 0}.
// (from the sums, by Backend::router_aux_combine).
template <class T>
Backend::AuxLosses router_aux_fwd(const T* probs, const T* lse, const int32_t* demand,
                                  const RouterArgs& a) {
  check_router_args(a);
  if (a.n == 0) return {0.0, 0.0};
  std::vector<double> sums(static_cast<size_t>(a.e) + 1);
  router_aux_sums(sums.data(), probs, lse, a);
  return Backend::router_aux_combine(sums.data(), demand, a);
}

// dlogits[N,E] (overwrite) =
//     d/dlogits [ sum_{n,s} dgate[n,s]*gate[n,s] + aux_coef*aux + z_coef*z ]
// with the expert choice and demand held constant. Per token, with p = probs:
//   dp_j  = dgate_j                                 (not normalised)
//         = (dgate_j - sum_s dgate_s gate_s) / Z    (normalised, Z = sum of chosen p)
//   dp_e += aux_coef * (Eg/groups) * f_e / N
//   dlogit_e = p_e (dp_e - sum_{e' in group} p_e' dp_e') + z_coef * 2 lse_g p_e / (N groups)
// dgate may be null (no gate gradient); demand is read only when aux_coef != 0.
template <class T>
void router_bwd(T* dlogits, const T* dgate, const T* probs, const T* lse, const int32_t* expert,
                const T* gate, const int32_t* demand, T aux_coef, T z_coef, const RouterArgs& a) {
  check_router_args(a);
  if (a.n == 0) return;
  const int E = a.e, G = a.groups, Eg = E / G, K = a.top_k, S = G * K;
  const double N = a.n;
  // d(aux_coef * aux)/dp[n,e], the same for every token
  std::vector<double> daux(E, 0.0);
  if (aux_coef != T(0))
    for (int e = 0; e < E; e++)
      daux[e] =
          static_cast<double>(aux_coef) * (static_cast<double>(Eg) / G) * (demand[e] / (N * K)) / N;
  const double zc = 2.0 * static_cast<double>(z_coef) / (N * G);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < a.n; n++) {
    const T* p = probs + static_cast<int64_t>(n) * E;
    const int32_t* ex = expert + static_cast<int64_t>(n) * S;
    std::vector<double> dp(daux);
    if (dgate != nullptr) {
      const T* dg = dgate + static_cast<int64_t>(n) * S;
      if (a.normalize) {
        const T* gt = gate + static_cast<int64_t>(n) * S;
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
    T* dl = dlogits + static_cast<int64_t>(n) * E;
    for (int g = 0; g < G; g++) {
      const int lo = g * Eg;
      double dot = 0.0;
      for (int e = lo; e < lo + Eg; e++) dot += p[e] * dp[e];
      const double zl = zc * lse[static_cast<int64_t>(n) * G + g];
      for (int e = lo; e < lo + Eg; e++) dl[e] = static_cast<T>(p[e] * (dp[e] - dot) + zl * p[e]);
    }
  }
}

}  // namespace m6::cpu
