// Dense-algebra and optimizer ops of the CPU reference, in double: GEMM
// against a naive triple loop and (for all four transpose combinations, with
// padded leading dimensions) its backward formulation against finite
// differences; bias ops; reductions; AdamW against a hand computation.
#include <cmath>
#include <limits>
#include <vector>

#include "core/backend/cpu/cpu_ops.h"
#include "tests/unit/backend_cpu/backend_test_util.h"

using namespace m6;
using namespace m6::test;

namespace {

Trans flip(Trans t) { return t == Trans::No ? Trans::Yes : Trans::No; }

// Naive C = alpha op(A) op(B) + beta C for one batch entry, explicit ld's.
void naive_gemm(const cpu::GemmArgsT<double>& g, const double* a, const double* b, double* c) {
  for (int r = 0; r < g.m; r++)
    for (int col = 0; col < g.n; col++) {
      double acc = 0.0;
      for (int k = 0; k < g.k; k++) {
        const double av = g.trans_a == Trans::No ? a[r * g.lda + k] : a[k * g.lda + r];
        const double bv = g.trans_b == Trans::No ? b[k * g.ldb + col] : b[col * g.ldb + k];
        acc += av * bv;
      }
      double& y = c[r * g.ldc + col];
      y = g.alpha * acc + g.beta * y;
    }
}

struct GemmCase {
  Trans ta, tb;
};
const GemmCase kAllTrans[] = {{Trans::No, Trans::No},
                              {Trans::No, Trans::Yes},
                              {Trans::Yes, Trans::No},
                              {Trans::Yes, Trans::Yes}};

}  // namespace

TEST_CASE("gemm matches a naive triple loop (transposes, padded ld, batch, alpha, beta)",
          "[backend_cpu][gemm]") {
  Rng rng = Rng::for_test();
  const int M = 7, N = 13, K = 5, batch = 3;
  for (const GemmCase& tc : kAllTrans) {
    cpu::GemmArgsT<double> g;
    g.trans_a = tc.ta;
    g.trans_b = tc.tb;
    g.m = M;
    g.n = N;
    g.k = K;
    g.alpha = 0.7;
    g.beta = 0.3;
    g.batch = batch;
    const int rows_a = tc.ta == Trans::No ? M : K, width_a = tc.ta == Trans::No ? K : M;
    const int rows_b = tc.tb == Trans::No ? K : N, width_b = tc.tb == Trans::No ? N : K;
    g.lda = width_a + 3;
    g.ldb = width_b + 2;
    g.ldc = N + 4;
    g.stride_a = rows_a * g.lda + 1;
    g.stride_b = rows_b * g.ldb + 5;
    g.stride_c = M * g.ldc + 2;
    std::vector<double> a = rng.vec(g.stride_a * batch), b = rng.vec(g.stride_b * batch);
    std::vector<double> c = rng.vec(g.stride_c * batch), want = c;  // padding must survive
    g.a = a.data();
    g.b = b.data();
    g.c = c.data();
    cpu::gemm(g);
    for (int i = 0; i < batch; i++)
      naive_gemm(g, a.data() + i * g.stride_a, b.data() + i * g.stride_b,
                 want.data() + i * g.stride_c);
    INFO("trans_a " << (tc.ta == Trans::Yes) << " trans_b " << (tc.tb == Trans::Yes));
    M6_CHECK_ERR(max_norm_err(c, want), Tol::fwd_double);
  }
}

TEST_CASE("gemm: ld 0 means contiguous, a too small ld throws, k = 0 scales C",
          "[backend_cpu][gemm]") {
  Rng rng = Rng::for_test();
  const int M = 3, N = 4, K = 2;
  std::vector<double> a = rng.vec(M * K), b = rng.vec(K * N), c(M * N, 0.0), want(M * N, 0.0);
  cpu::GemmArgsT<double> g;
  g.m = M;
  g.n = N;
  g.k = K;
  g.a = a.data();
  g.b = b.data();
  g.c = c.data();
  cpu::gemm(g);
  cpu::GemmArgsT<double> ref = g;
  ref.lda = K;
  ref.ldb = N;
  ref.ldc = N;
  naive_gemm(ref, a.data(), b.data(), want.data());
  M6_CHECK_ERR(max_norm_err(c, want), Tol::fwd_double);

  g.lda = K - 1;
  CHECK_THROWS_AS(cpu::gemm(g), Error);

  std::vector<double> c2 = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  cpu::GemmArgsT<double> e;
  e.m = M;
  e.n = N;
  e.k = 0;
  e.beta = 0.5;
  e.a = a.data();
  e.b = b.data();
  e.c = c2.data();
  cpu::gemm(e);
  for (int i = 0; i < M * N; i++) CHECK(c2[i] == 0.5 * (i + 1));
}

// L = sum R * C with C = alpha op(A) op(B); the gradients are written as the
// GEMMs the model's backward uses, then checked against finite differences.
TEST_CASE("gemm backward formulation matches finite differences for all transposes",
          "[backend_cpu][gemm][grad]") {
  Rng rng = Rng::for_test();
  const int M = 3, N = 5, K = 7;
  const double alpha = 0.7;
  for (const GemmCase& tc : kAllTrans) {
    INFO("trans_a " << (tc.ta == Trans::Yes) << " trans_b " << (tc.tb == Trans::Yes));
    const int rows_a = tc.ta == Trans::No ? M : K, width_a = tc.ta == Trans::No ? K : M;
    const int rows_b = tc.tb == Trans::No ? K : N, width_b = tc.tb == Trans::No ? N : K;
    const int lda = width_a + 2, ldb = width_b + 3, ldc = N + 1;
    std::vector<double> a = rng.vec(rows_a * lda), b = rng.vec(rows_b * ldb);
    std::vector<double> r(M * ldc, 0.0);
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) r[i * ldc + j] = rng.uniform(-1, 1);

    auto loss = [&] {
      std::vector<double> c(M * ldc, 0.0);
      cpu::GemmArgsT<double> g;
      g.trans_a = tc.ta;
      g.trans_b = tc.tb;
      g.m = M;
      g.n = N;
      g.k = K;
      g.alpha = alpha;
      g.a = a.data();
      g.lda = lda;
      g.b = b.data();
      g.ldb = ldb;
      g.c = c.data();
      g.ldc = ldc;
      cpu::gemm(g);
      return dot(r, c);
    };
    std::vector<double> da(a.size(), 0.0), db(b.size(), 0.0);
    cpu::GemmArgsT<double> g;
    g.alpha = alpha;
    if (tc.ta == Trans::No) {  // dA[M,K] = R op(B)^T
      g.trans_a = Trans::No;
      g.trans_b = flip(tc.tb);
      g.m = M;
      g.n = K;
      g.k = N;
      g.a = r.data();
      g.lda = ldc;
      g.b = b.data();
      g.ldb = ldb;
    } else {  // dA[K,M] = op(B) R^T
      g.trans_a = tc.tb;
      g.trans_b = Trans::Yes;
      g.m = K;
      g.n = M;
      g.k = N;
      g.a = b.data();
      g.lda = ldb;
      g.b = r.data();
      g.ldb = ldc;
    }
    g.c = da.data();
    g.ldc = lda;
    cpu::gemm(g);
    if (tc.tb == Trans::No) {  // dB[K,N] = op(A)^T R
      g.trans_a = flip(tc.ta);
      g.trans_b = Trans::No;
      g.m = K;
      g.n = N;
      g.k = M;
      g.a = a.data();
      g.lda = lda;
      g.b = r.data();
      g.ldb = ldc;
    } else {  // dB[N,K] = R^T op(A)
      g.trans_a = Trans::Yes;
      g.trans_b = tc.ta;
      g.m = N;
      g.n = K;
      g.k = M;
      g.a = r.data();
      g.lda = ldc;
      g.b = a.data();
      g.ldb = lda;
    }
    g.c = db.data();
    g.ldc = ldb;
    cpu::gemm(g);
    M6_CHECK_ERR(max_norm_err(da, fd_grad(a, loss)), Tol::fd_grad);
    M6_CHECK_ERR(max_norm_err(db, fd_grad(b, loss)), Tol::fd_grad);
  }
}

TEST_CASE("add_bias forward and bias_grad (accumulating) match finite differences",
          "[backend_cpu][bias][grad]") {
  Rng rng = Rng::for_test();
  for (int n : {1, 5}) {
    const int c = 13;
    std::vector<double> x = rng.vec(n * c), bias = rng.vec(c), r = rng.vec(n * c);
    std::vector<double> y = x;
    cpu::add_bias(y.data(), bias.data(), n, c);
    for (int i = 0; i < n; i++)
      for (int j = 0; j < c; j++) CHECK(y[i * c + j] == x[i * c + j] + bias[j]);
    auto loss = [&] {
      std::vector<double> yy = x;
      cpu::add_bias(yy.data(), bias.data(), n, c);
      return dot(r, yy);
    };
    const std::vector<double> prev = rng.vec(c);
    std::vector<double> db = prev;
    cpu::bias_grad(db.data(), r.data(), n, c);
    for (int j = 0; j < c; j++) db[j] -= prev[j];
    M6_CHECK_ERR(max_norm_err(db, fd_grad(bias, loss)), Tol::fd_grad);
  }
}

TEST_CASE("add, axpy and scale", "[backend_cpu][elementwise]") {
  std::vector<double> a = {1, 2, 3, -4, 5}, b = {0.5, -1, 2, 2, 0}, y(5);
  cpu::add(y.data(), a.data(), b.data(), y.size());
  CHECK(y == std::vector<double>{1.5, 1, 5, -2, 5});
  cpu::axpy(y.data(), 2.0, b.data(), y.size());
  CHECK(y == std::vector<double>{2.5, -1, 9, 2, 5});
  cpu::scale(y.data(), -0.5, y.size());
  CHECK(y == std::vector<double>{-1.25, 0.5, -4.5, -1, -2.5});
}

TEST_CASE("sum and sum_squares are exact on integers across reduction blocks",
          "[backend_cpu][reduce]") {
  const int n = 10007;  // more than two reduction blocks, not a multiple of one
  std::vector<double> x(n);
  for (int i = 0; i < n; i++) x[i] = i + 1;
  const double nn = n;
  CHECK(cpu::sum(x.data(), x.size()) == nn * (nn + 1) / 2);
  CHECK(cpu::sum_squares(x.data(), x.size()) == nn * (nn + 1) * (2 * nn + 1) / 6);
  CHECK(cpu::sum(x.data(), 0) == 0.0);
  std::vector<float> xf = {1.5f, -2.0f, 0.25f};
  CHECK(cpu::sum(xf.data(), xf.size()) == -0.25);
  CHECK(cpu::sum_squares(xf.data(), xf.size()) == 2.25 + 4.0 + 0.0625);
}

TEST_CASE("all_finite detects NaN and Inf anywhere", "[backend_cpu][reduce]") {
  const int n = 9001;
  std::vector<double> x(n, 1.0);
  x[17] = std::numeric_limits<double>::max();
  CHECK(cpu::all_finite(x.data(), x.size()));
  CHECK(cpu::all_finite(x.data(), 0));
  for (int at : {0, 4500, n - 1}) {
    for (double bad :
         {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
          -std::numeric_limits<double>::infinity()}) {
      std::vector<double> y = x;
      y[at] = bad;
      INFO("bad value " << bad << " at " << at);
      CHECK_FALSE(cpu::all_finite(y.data(), y.size()));
    }
  }
  std::vector<float> f = {0.0f, std::numeric_limits<float>::quiet_NaN()};
  CHECK_FALSE(cpu::all_finite(f.data(), f.size()));
  CHECK(cpu::all_finite(f.data(), 1));
}

TEST_CASE("adamw matches a hand computation over two steps", "[backend_cpu][adamw]") {
  // lr 1/8, beta1 1/2, beta2 3/4, eps 1/4, wd 1/2, grad_scale 1/2 (all exact in float).
  // Element 0, step 1: g*s = 1, m = 1/2, v = 1/4, mhat = vhat = 1,
  //   p = 1 - 1/8 (1/(1+1/4) + 1/2) = 0.8375
  // step 2: g*s = -1, m = -1/4, v = 7/16, mhat = -1/3, vhat = 1,
  //   p = 0.8375 - 1/8 (-1/3/(5/4) + 0.8375/2) = 0.818489583...
  // Element 1, step 1: g*s = 2, m = 1, v = 1, mhat = 2, vhat = 4,
  //   p = -2 - 1/8 (2/(2+1/4) - 1) = -1.98611...; step 2: g = 0.
  Backend::AdamArgs args{0.125f, 0.5f, 0.75f, 0.25f, 0.5f, 0.5f, 1};
  std::vector<double> p = {1.0, -2.0}, m(2, 0.0), v(2, 0.0);
  std::vector<double> g1 = {2.0, 4.0}, g2 = {-2.0, 0.0};
  cpu::adamw(p.data(), g1.data(), m.data(), v.data(), 2, args);
  CHECK(p[0] == Approx(0.8375).epsilon(1e-14));
  CHECK(p[1] == Approx(-1.9861111111111112).epsilon(1e-14));
  CHECK(m == std::vector<double>{0.5, 1.0});
  CHECK(v == std::vector<double>{0.25, 1.0});
  args.t = 2;
  cpu::adamw(p.data(), g2.data(), m.data(), v.data(), 2, args);
  CHECK(p[0] == Approx(0.81848958333333333).epsilon(1e-14));
  CHECK(p[1] == Approx(-1.9154216992065707).epsilon(1e-14));
  CHECK(m == std::vector<double>{-0.25, 0.5});
  CHECK(v == std::vector<double>{0.4375, 0.75});
  args.t = 0;
  CHECK_THROWS_AS(cpu::adamw(p.data(), g2.data(), m.data(), v.data(), 2, args), Error);
}
