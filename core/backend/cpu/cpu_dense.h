// CPU reference of the dense-algebra and optimizer ops of backend.h, as
// templates on the scalar type T: CpuBackend instantiates them with float, the
// unit tests with double (finite differences need double). Plain loops,
// OpenMP over the outer loop, reductions accumulated in double and combined in
// a fixed order so that results do not depend on the thread count.
#pragma once
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/backend/backend.h"
#include "core/util/error.h"

namespace m6::cpu {

// GemmArgs on any scalar type (GemmArgs itself is the float case).
// A leading dimension of 0 means "contiguous": the stored row width.
template <class T>
struct GemmArgsT {
  Trans trans_a = Trans::No, trans_b = Trans::No;
  int m = 0, n = 0, k = 0;
  T alpha = 1, beta = 0;
  const T* a = nullptr;
  int lda = 0;
  int64_t stride_a = 0;
  const T* b = nullptr;
  int ldb = 0;
  int64_t stride_b = 0;
  T* c = nullptr;
  int ldc = 0;
  int64_t stride_c = 0;
  int batch = 1;
};

inline GemmArgsT<float> to_gemm_t(const GemmArgs& g) {
  GemmArgsT<float> t;
  t.trans_a = g.trans_a;
  t.trans_b = g.trans_b;
  t.m = g.m;
  t.n = g.n;
  t.k = g.k;
  t.alpha = g.alpha;
  t.beta = g.beta;
  t.a = g.a;
  t.lda = g.lda;
  t.stride_a = g.stride_a;
  t.b = g.b;
  t.ldb = g.ldb;
  t.stride_b = g.stride_b;
  t.c = g.c;
  t.ldc = g.ldc;
  t.stride_c = g.stride_c;
  t.batch = g.batch;
  return t;
}

namespace detail {

// Elements per partial sum of the blocked reductions: the partials are summed
// serially, so the result is the same for any number of threads.
constexpr size_t kReduceBlock = 4096;

// Leading dimension check: 0 -> tight width; anything below the width is a bug.
inline int resolve_ld(int ld, int width, const char* what) {
  if (ld == 0) return std::max(width, 1);
  if (ld < width)
    throw Error(
        fmt("gemm: ", what, " (", ld, ") is smaller than the stored row width (", width, ")"));
  return ld;
}

inline CBLAS_TRANSPOSE cblas_trans(Trans t) { return t == Trans::Yes ? CblasTrans : CblasNoTrans; }

template <class T, class F>
double blocked_sum(const T* x, size_t n, F term) {
  const size_t blocks = (n + kReduceBlock - 1) / kReduceBlock;
  std::vector<double> partial(blocks, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < static_cast<int64_t>(blocks); blk++) {
    const size_t lo = static_cast<size_t>(blk) * kReduceBlock;
    const size_t hi = std::min(n, lo + kReduceBlock);
    double acc = 0.0;
    for (size_t i = lo; i < hi; i++) acc += term(static_cast<double>(x[i]));
    partial[static_cast<size_t>(blk)] = acc;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace detail

// C[M,N] = alpha op(A)[M,K] op(B)[K,N] + beta C, `batch` times, row-major.
template <class T>
void gemm(const GemmArgsT<T>& g) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  if (g.m < 0 || g.n < 0 || g.k < 0 || g.batch < 0)
    throw Error(fmt("gemm: negative size m=", g.m, " n=", g.n, " k=", g.k, " batch=", g.batch));
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  // Stored shapes: A is [M,K] or [K,M] (trans), B is [K,N] or [N,K] (trans).
  const int lda = detail::resolve_ld(g.lda, g.trans_a == Trans::No ? g.k : g.m, "lda");
  const int ldb = detail::resolve_ld(g.ldb, g.trans_b == Trans::No ? g.n : g.k, "ldb");
  const int ldc = detail::resolve_ld(g.ldc, g.n, "ldc");
  for (int i = 0; i < g.batch; i++) {
    const T* a = g.a + i * g.stride_a;
    const T* b = g.b + i * g.stride_b;
    T* c = g.c + i * g.stride_c;
    if (g.k == 0) {  // empty product: C = beta C, without relying on BLAS corner cases
      for (int r = 0; r < g.m; r++)
        for (int col = 0; col < g.n; col++) {
          T& y = c[static_cast<int64_t>(r) * ldc + col];
          y = g.beta == T(0) ? T(0) : g.beta * y;
        }
      continue;
    }
    if constexpr (std::is_same_v<T, float>) {
      cblas_sgemm(CblasRowMajor, detail::cblas_trans(g.trans_a), detail::cblas_trans(g.trans_b),
                  g.m, g.n, g.k, g.alpha, a, lda, b, ldb, g.beta, c, ldc);
    } else {
      cblas_dgemm(CblasRowMajor, detail::cblas_trans(g.trans_a), detail::cblas_trans(g.trans_b),
                  g.m, g.n, g.k, g.alpha, a, lda, b, ldb, g.beta, c, ldc);
    }
  }
}

// y[n,c] += b[c]
template <class T>
void add_bias(T* y, const T* b, int n, int c) {
#pragma omp parallel for schedule(static)
  for (int r = 0; r < n; r++) {
    T* row = y + static_cast<int64_t>(r) * c;
    for (int j = 0; j < c; j++) row[j] += b[j];
  }
}

// db[c] += sum_rows dy[n,c]; parallel over column blocks so that every column
// is summed by one thread, in row order.
template <class T>
void bias_grad(T* db, const T* dy, int n, int c) {
  constexpr int kCols = 64;
  const int blocks = (c + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < blocks; blk++) {
    const int lo = blk * kCols, hi = std::min(c, lo + kCols);
    double acc[kCols] = {};
    for (int r = 0; r < n; r++) {
      const T* row = dy + static_cast<int64_t>(r) * c;
      for (int j = lo; j < hi; j++) acc[j - lo] += row[j];
    }
    for (int j = lo; j < hi; j++) db[j] += static_cast<T>(acc[j - lo]);
  }
}

// y = a + b (y may alias a or b)
template <class T>
void add(T* y, const T* a, const T* b, size_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < static_cast<int64_t>(n); i++) y[i] = a[i] + b[i];
}

// y += alpha x
template <class T>
void axpy(T* y, T alpha, const T* x, size_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < static_cast<int64_t>(n); i++) y[i] += alpha * x[i];
}

// x *= s
template <class T>
void scale(T* x, T s, size_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < static_cast<int64_t>(n); i++) x[i] *= s;
}

template <class T>
double sum(const T* x, size_t n) {
  return detail::blocked_sum(x, n, [](double v) { return v; });
}

template <class T>
double sum_squares(const T* x, size_t n) {
  return detail::blocked_sum(x, n, [](double v) { return v * v; });
}

// false iff some element is NaN or +-Inf
template <class T>
bool all_finite(const T* x, size_t n) {
  int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad)
  for (int64_t i = 0; i < static_cast<int64_t>(n); i++) bad |= std::isfinite(x[i]) ? 0 : 1;
  return bad == 0;
}

// x[i] = the nearest bf16/fp16 value (ties to even): the mixed-precision
// emulation stores a tensor "in half" by rounding its fp32 values in place.
inline void round_half(float* x, size_t n, HalfType t) {
  if (t == HalfType::BF16) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < static_cast<int64_t>(n); i++) x[i] = round_bf16(x[i]);
  } else {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < static_cast<int64_t>(n); i++) x[i] = round_f16(x[i]);
  }
}

// Decoupled AdamW, n elements. The hyper-parameters arrive as float (AdamArgs);
// the update is computed in double and stored as T.
//   m = b1 m + (1-b1) g s ; v = b2 v + (1-b2) (g s)^2
//   p -= lr * (m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + wd p)
template <class T>
void adamw(T* p, const T* g, T* m, T* v, size_t n, const Backend::AdamArgs& a) {
  if (a.t < 1) throw Error(fmt("adamw: step t (", a.t, ") must be >= 1"));
  const double b1 = a.beta1, b2 = a.beta2, lr = a.lr, eps = a.eps, wd = a.weight_decay;
  const double gs = a.grad_scale;
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(a.t));
  const double bc2 = 1.0 - std::pow(b2, static_cast<double>(a.t));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < static_cast<int64_t>(n); i++) {
    const double grad = static_cast<double>(g[i]) * gs;
    const double mi = b1 * static_cast<double>(m[i]) + (1.0 - b1) * grad;
    const double vi = b2 * static_cast<double>(v[i]) + (1.0 - b2) * grad * grad;
    const double mhat = mi / bc1, vhat = vi / bc2;
    const double pi = static_cast<double>(p[i]);
    m[i] = static_cast<T>(mi);
    v[i] = static_cast<T>(vi);
    p[i] = static_cast<T>(pi - lr * (mhat / (std::sqrt(vhat) + eps) + wd * pi));
  }
}

}  // namespace m6::cpu
