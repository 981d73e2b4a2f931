// CPU reference of the transformer ops of backend.h (embedding, LayerNorm,
// GELU, causal attention, cross-entropy) as templates on the scalar type T.
// Semantics are those of the comments in backend.h and DESIGN.md section 3;
// every reduction runs in double, each output element is written by exactly
// one thread, so results do not depend on the thread count.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/util/error.h"

namespace m6::cpu {

constexpr double kLayerNormEps = 1e-5;

// x[b*T+t, d] = wte[tokens[b*T+t], :] + wpe[t, :]
template <class T>
void embedding_fwd(T* x, const int32_t* tokens, const T* wte, const T* wpe, int B, int T_, int d) {
#pragma omp parallel for schedule(static)
  for (int r = 0; r < B * T_; r++) {
    const T* we = wte + static_cast<int64_t>(tokens[r]) * d;
    const T* pe = wpe + static_cast<int64_t>(r % T_) * d;
    T* out = x + static_cast<int64_t>(r) * d;
    for (int j = 0; j < d; j++) out[j] = we[j] + pe[j];
  }
}

// dwte[V,d] += scatter of dx[B*T,d] by token; dwpe[T,d] += sum_b dx[b,t].
// Parallel over column blocks: a token that occurs many times is accumulated
// by one thread, in row order.
template <class T>
void embedding_bwd(T* dwte, T* dwpe, const T* dx, const int32_t* tokens, int B, int T_, int d) {
  constexpr int kCols = 64;
  const int blocks = (d + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < blocks; blk++) {
    const int lo = blk * kCols, hi = std::min(d, lo + kCols);
    for (int r = 0; r < B * T_; r++) {
      T* dw = dwte + static_cast<int64_t>(tokens[r]) * d;
      const T* g = dx + static_cast<int64_t>(r) * d;
      for (int j = lo; j < hi; j++) dw[j] += g[j];
    }
    for (int t = 0; t < T_; t++) {
      double acc[kCols] = {};
      for (int b = 0; b < B; b++) {
        const T* g = dx + (static_cast<int64_t>(b) * T_ + t) * d;
        for (int j = lo; j < hi; j++) acc[j - lo] += g[j];
      }
      T* dp = dwpe + static_cast<int64_t>(t) * d;
      for (int j = lo; j < hi; j++) dp[j] += static_cast<T>(acc[j - lo]);
    }
  }
}

// y[N,d] = (x - mean) * rstd * w + b, population variance, eps 1e-5.
template <class T>
void layernorm_fwd(T* y, T* mean, T* rstd, const T* x, const T* w, const T* b, int N, int d) {
#pragma omp parallel for schedule(static)
  for (int r = 0; r < N; r++) {
    const T* xr = x + static_cast<int64_t>(r) * d;
    double s = 0.0;
    for (int j = 0; j < d; j++) s += xr[j];
    const double mu = s / d;
    double ss = 0.0;
    for (int j = 0; j < d; j++) {
      const double c = xr[j] - mu;
      ss += c * c;
    }
    const double rs = 1.0 / std::sqrt(ss / d + kLayerNormEps);
    T* yr = y + static_cast<int64_t>(r) * d;
    for (int j = 0; j < d; j++) yr[j] = static_cast<T>((xr[j] - mu) * rs * w[j] + b[j]);
    mean[r] = static_cast<T>(mu);
    rstd[r] = static_cast<T>(rs);
  }
}

// dx[N,d] +=, dw[d] +=, db[d] += from dy[N,d] and the saved mean[N], rstd[N].
//   xhat = (x-mean)*rstd, g = dy*w:
//   dx = rstd * (g - mean_j(g) - xhat * mean_j(g*xhat)), dw = sum_rows dy*xhat, db = sum_rows dy
template <class T>
void layernorm_bwd(T* dx, T* dw, T* db, const T* dy, const T* x, const T* mean, const T* rstd,
                   const T* w, int N, int d) {
#pragma omp parallel for schedule(static)
  for (int r = 0; r < N; r++) {
    const int64_t o = static_cast<int64_t>(r) * d;
    const double mu = mean[r], rs = rstd[r];
    double sg = 0.0, sgx = 0.0;
    for (int j = 0; j < d; j++) {
      const double g = static_cast<double>(dy[o + j]) * w[j];
      sg += g;
      sgx += g * ((x[o + j] - mu) * rs);
    }
    sg /= d;
    sgx /= d;
    for (int j = 0; j < d; j++) {
      const double g = static_cast<double>(dy[o + j]) * w[j];
      const double xhat = (x[o + j] - mu) * rs;
      dx[o + j] += static_cast<T>(rs * (g - sg - xhat * sgx));
    }
  }
  constexpr int kCols = 64;
  const int blocks = (d + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < blocks; blk++) {
    const int lo = blk * kCols, hi = std::min(d, lo + kCols);
    double aw[kCols] = {}, ab[kCols] = {};
    for (int r = 0; r < N; r++) {
      const int64_t o = static_cast<int64_t>(r) * d;
      const double mu = mean[r], rs = rstd[r];
      for (int j = lo; j < hi; j++) {
        aw[j - lo] += static_cast<double>(dy[o + j]) * ((x[o + j] - mu) * rs);
        ab[j - lo] += dy[o + j];
      }
    }
    for (int j = lo; j < hi; j++) {
      dw[j] += static_cast<T>(aw[j - lo]);
      db[j] += static_cast<T>(ab[j - lo]);
    }
  }
}

// GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
constexpr double kGeluC = 0.7978845608028654;  // sqrt(2/pi)
constexpr double kGeluA = 0.044715;

template <class T>
void gelu_fwd(T* y, const T* x, size_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < static_cast<int64_t>(n); i++) {
    const double v = x[i];
    y[i] = static_cast<T>(0.5 * v * (1.0 + std::tanh(kGeluC * (v + kGeluA * v * v * v))));
  }
}

// dx = gelu'(x) * dy (overwrite; dx may alias dy)
template <class T>
void gelu_bwd(T* dx, const T* x, const T* dy, size_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < static_cast<int64_t>(n); i++) {
    const double v = x[i];
    const double th = std::tanh(kGeluC * (v + kGeluA * v * v * v));
    const double du = kGeluC * (1.0 + 3.0 * kGeluA * v * v);
    const double grad = 0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * du;
    dx[i] = static_cast<T>(grad * dy[i]);
  }
}

// Causal multi-head attention on qkv[B,T,3d] (q | k | v, head h = columns
// h*dh..(h+1)*dh of each block), scale 1/sqrt(dh). out[B,T,d];
// att[B,H,T,T] = softmax probabilities, zero above the diagonal.
template <class T>
void attention_fwd(T* out, T* att, const T* qkv, int B, int T_, int H, int d) {
  if (H <= 0 || d % H != 0)
    throw Error(fmt("attention: d (", d, ") must be divisible by H (", H, ")"));
  const int dh = d / H;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  const int64_t row = 3 * static_cast<int64_t>(d);
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; b++) {
    for (int h = 0; h < H; h++) {
      std::vector<double> p(T_), acc(dh);
      for (int t = 0; t < T_; t++) {
        const T* q = qkv + (static_cast<int64_t>(b) * T_ + t) * row + h * dh;
        double mx = -std::numeric_limits<double>::infinity();
        for (int t2 = 0; t2 <= t; t2++) {
          const T* k = qkv + (static_cast<int64_t>(b) * T_ + t2) * row + d + h * dh;
          double s = 0.0;
#pragma omp simd reduction(+ : s)
          for (int i = 0; i < dh; i++) s += static_cast<double>(q[i]) * k[i];
          p[t2] = s * scale;
          mx = std::max(mx, p[t2]);
        }
        double z = 0.0;
        for (int t2 = 0; t2 <= t; t2++) {
          p[t2] = std::exp(p[t2] - mx);
          z += p[t2];
        }
        T* a = att + ((static_cast<int64_t>(b) * H + h) * T_ + t) * T_;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int t2 = 0; t2 <= t; t2++) {
          p[t2] /= z;
          a[t2] = static_cast<T>(p[t2]);
          const T* v = qkv + (static_cast<int64_t>(b) * T_ + t2) * row + 2 * d + h * dh;
          for (int i = 0; i < dh; i++) acc[i] += p[t2] * v[i];
        }
        for (int t2 = t + 1; t2 < T_; t2++) a[t2] = T(0);
        T* o = out + (static_cast<int64_t>(b) * T_ + t) * d + h * dh;
        for (int i = 0; i < dh; i++) o[i] = static_cast<T>(acc[i]);
      }
    }
  }
}

// dqkv[B,T,3d] (overwrite) from dout[B,T,d], qkv and the saved att[B,H,T,T].
// datt[B,H,T,T] is scratch (it ends up holding the gradient of the scaled
// scores, zero above the diagonal).
template <class T>
void attention_bwd(T* dqkv, T* datt, const T* dout, const T* qkv, const T* att, int B, int T_,
                   int H, int d) {
  if (H <= 0 || d % H != 0)
    throw Error(fmt("attention: d (", d, ") must be divisible by H (", H, ")"));
  const int dh = d / H;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  const int64_t row = 3 * static_cast<int64_t>(d);
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; b++) {
    for (int h = 0; h < H; h++) {
      const int64_t bt0 = static_cast<int64_t>(b) * T_;
      const int64_t a0 = (static_cast<int64_t>(b) * H + h) * T_ * T_;
      std::vector<double> ds(T_), acc(dh);
      // dk, dv of every key/value position, summed over the queries t >= t2 in order
      std::vector<double> dk_acc(static_cast<size_t>(T_) * dh, 0.0), dv_acc(dk_acc.size(), 0.0);
      for (int t = 0; t < T_; t++) {
        const T* q = qkv + (bt0 + t) * row + h * dh;
        const T* go = dout + (bt0 + t) * d + h * dh;
        const T* a = att + a0 + static_cast<int64_t>(t) * T_;
        // datt[t2] = dout[t].v[t2]; dscore = att * (datt - sum_t2 att*datt)
        double dot_sum = 0.0;
        for (int t2 = 0; t2 <= t; t2++) {
          const T* v = qkv + (bt0 + t2) * row + 2 * d + h * dh;
          double s = 0.0;
#pragma omp simd reduction(+ : s)
          for (int i = 0; i < dh; i++) s += static_cast<double>(go[i]) * v[i];
          ds[t2] = s;
          dot_sum += a[t2] * s;
        }
        T* da = datt + a0 + static_cast<int64_t>(t) * T_;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int t2 = 0; t2 <= t; t2++) {
          const double g = a[t2] * (ds[t2] - dot_sum), p = a[t2];
          da[t2] = static_cast<T>(g);
          const T* k = qkv + (bt0 + t2) * row + d + h * dh;
          double* dk = dk_acc.data() + static_cast<size_t>(t2) * dh;
          double* dv = dv_acc.data() + static_cast<size_t>(t2) * dh;
          for (int i = 0; i < dh; i++) {
            acc[i] += g * k[i];
            dk[i] += g * q[i];
            dv[i] += p * go[i];
          }
        }
        for (int t2 = t + 1; t2 < T_; t2++) da[t2] = T(0);
        T* dq = dqkv + (bt0 + t) * row + h * dh;
        for (int i = 0; i < dh; i++) dq[i] = static_cast<T>(acc[i] * scale);
      }
      for (int t2 = 0; t2 < T_; t2++) {
        T* dk = dqkv + (bt0 + t2) * row + d + h * dh;
        T* dv = dqkv + (bt0 + t2) * row + 2 * d + h * dh;
        for (int i = 0; i < dh; i++) {
          dk[i] = static_cast<T>(dk_acc[static_cast<size_t>(t2) * dh + i] * scale);
          dv[i] = static_cast<T>(dv_acc[static_cast<size_t>(t2) * dh + i]);
        }
      }
    }
  }
}

namespace detail {
inline void check_targets(const int32_t* targets, int N, int V) {
  for (int r = 0; r < N; r++)
    if (targets[r] >= V)
      throw Error(
          fmt("crossentropy: target ", targets[r], " at row ", r, " is >= vocab (", V, ")"));
}
}  // namespace detail

// loss[N] = -log softmax(logits[N,V])[target] (0 where target < 0);
// probs[N,V] = softmax(logits) for every row (probs may alias logits).
template <class T>
void crossentropy_fwd(T* loss, T* probs, const T* logits, const int32_t* targets, int N, int V) {
  detail::check_targets(targets, N, V);
#pragma omp parallel for schedule(static)
  for (int r = 0; r < N; r++) {
    const T* l = logits + static_cast<int64_t>(r) * V;
    double mx = -std::numeric_limits<double>::infinity();
    for (int j = 0; j < V; j++) mx = std::max(mx, static_cast<double>(l[j]));
    double z = 0.0;
    for (int j = 0; j < V; j++) z += std::exp(l[j] - mx);
    const int tgt = targets[r];
    // read the target logit before probs (which may alias logits) is written
    loss[r] = tgt < 0 ? T(0) : static_cast<T>(std::log(z) + mx - l[tgt]);
    T* p = probs + static_cast<int64_t>(r) * V;
    const double inv = 1.0 / z;
    for (int j = 0; j < V; j++) p[j] = static_cast<T>(std::exp(l[j] - mx) * inv);
  }
}

// dlogits[N,V] = (probs - onehot(target)) * dscale; rows with target < 0 are
// zero. dlogits may alias probs.
template <class T>
void crossentropy_bwd(T* dlogits, const T* probs, const int32_t* targets, T dscale, int N, int V) {
  detail::check_targets(targets, N, V);
#pragma omp parallel for schedule(static)
  for (int r = 0; r < N; r++) {
    const T* p = probs + static_cast<int64_t>(r) * V;
    T* g = dlogits + static_cast<int64_t>(r) * V;
    const int tgt = targets[r];
    if (tgt < 0) {
      for (int j = 0; j < V; j++) g[j] = T(0);
      continue;
    }
    const T pt = p[tgt];  // read before g (which may alias p) is written
    for (int j = 0; j < V; j++) g[j] = p[j] * dscale;
    g[tgt] = (pt - T(1)) * dscale;
  }
}

}  // namespace m6::cpu
