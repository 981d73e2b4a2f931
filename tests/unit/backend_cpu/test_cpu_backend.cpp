// CpuBackend (float, through the Backend interface and its memory calls)
// against the double instantiation of the same templates, within the float
// tolerance of the table. Catches float-only mistakes (overflow in exp, float
// accumulation, wrong forwarding of an argument in cpu_backend.cpp).
#include <cstring>
#include <vector>

#include "core/backend/backend.h"
#include "core/backend/cpu/cpu_ops.h"
#include "tests/unit/backend_cpu/backend_test_util.h"

using namespace m6;
using namespace m6::test;

namespace {

// A float buffer on the backend, filled from / read back as double.
class DevBuf {
 public:
  DevBuf(Backend& be, size_t n) : be_(be), n_(n), p_(static_cast<float*>(be.alloc(n * 4))) {}
  DevBuf(Backend& be, const std::vector<double>& host) : DevBuf(be, host.size()) {
    std::vector<float> f(host.begin(), host.end());
    be_.to_device(p_, f.data(), n_ * sizeof(float));
  }
  ~DevBuf() { be_.release(p_); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  float* get() { return p_; }
  std::vector<double> host() const {
    std::vector<float> f(n_);
    be_.to_host(f.data(), p_, n_ * sizeof(float));
    return std::vector<double>(f.begin(), f.end());
  }

 private:
  Backend& be_;
  size_t n_;
  float* p_;
};

// Inputs rounded to float, so both sides start from identical values.
std::vector<double> rounded(std::vector<double> v) {
  for (double& x : v) x = static_cast<float>(x);
  return v;
}

}  // namespace

TEST_CASE("CpuBackend memory: zero-filled alloc, transfers, copy, zero", "[backend_cpu][memory]") {
  auto be = make_cpu_backend(2);
  CHECK(be->name().find("cpu") == 0);
  const size_t n = 1001;
  float* a = static_cast<float*>(be->alloc(n * sizeof(float)));
  float* b = static_cast<float*>(be->alloc(n * sizeof(float)));
  CHECK(reinterpret_cast<uintptr_t>(a) % 64 == 0);
  std::vector<float> host(n, -1.0f);
  be->to_host(host.data(), a, n * sizeof(float));
  CHECK(host == std::vector<float>(n, 0.0f));
  for (size_t i = 0; i < n; i++) host[i] = 0.5f * i;
  be->to_device(a, host.data(), n * sizeof(float));
  be->copy(b, a, n * sizeof(float));
  std::vector<float> back(n);
  be->to_host(back.data(), b, n * sizeof(float));
  CHECK(back == host);
  be->zero(b, 10 * sizeof(float));
  be->to_host(back.data(), b, n * sizeof(float));
  CHECK(back[9] == 0.0f);
  CHECK(back[10] == 5.0f);
  be->sync();
  be->release(a);
  be->release(b);
  be->release(be->alloc(0));
}

TEST_CASE("CpuBackend float gemm agrees with the double template", "[backend_cpu][float]") {
  Rng rng = Rng::for_test();
  auto be = make_cpu_backend(2);
  const int M = 33, N = 17, K = 65;
  for (Trans ta : {Trans::No, Trans::Yes})
    for (Trans tb : {Trans::No, Trans::Yes}) {
      const std::vector<double> a = rounded(rng.vec(M * K)), b = rounded(rng.vec(K * N));
      const std::vector<double> c0 = rounded(rng.vec(M * N));
      DevBuf da(*be, a), db(*be, b), dc(*be, c0);
      GemmArgs g;
      g.trans_a = ta;
      g.trans_b = tb;
      g.m = M;
      g.n = N;
      g.k = K;
      g.alpha = 0.5f;
      g.beta = 0.25f;
      g.a = da.get();
      g.lda = ta == Trans::No ? K : M;
      g.b = db.get();
      g.ldb = tb == Trans::No ? N : K;
      g.c = dc.get();
      g.ldc = N;
      be->gemm(g);
      std::vector<double> want = c0;
      cpu::GemmArgsT<double> gd;
      gd.trans_a = ta;
      gd.trans_b = tb;
      gd.m = M;
      gd.n = N;
      gd.k = K;
      gd.alpha = 0.5;
      gd.beta = 0.25;
      gd.a = a.data();
      gd.lda = g.lda;
      gd.b = b.data();
      gd.ldb = g.ldb;
      gd.c = want.data();
      gd.ldc = N;
      cpu::gemm(gd);
      M6_CHECK_ERR(max_norm_err(dc.host(), want), Tol::float_vs_double);
    }
}

TEST_CASE("CpuBackend float layernorm, gelu and crossentropy agree with double",
          "[backend_cpu][float]") {
  Rng rng = Rng::for_test();
  auto be = make_cpu_backend(2);
  const int N = 5, d = 257;
  const auto x = rounded(rng.vec(N * d, -2, 2)), w = rounded(rng.vec(d, 0.5, 1.5));
  const auto b = rounded(rng.vec(d)), dy = rounded(rng.vec(N * d));
  DevBuf fx(*be, x), fw(*be, w), fb(*be, b), fdy(*be, dy), fy(*be, N * d), fm(*be, N), fr(*be, N);
  DevBuf fdx(*be, N * d), fdw(*be, d), fdb(*be, d);
  be->layernorm_fwd(fy.get(), fm.get(), fr.get(), fx.get(), fw.get(), fb.get(), N, d);
  be->layernorm_bwd(fdx.get(), fdw.get(), fdb.get(), fdy.get(), fx.get(), fm.get(), fr.get(),
                    fw.get(), N, d);
  std::vector<double> y(N * d), m(N), r(N), dx(N * d, 0.0), dw(d, 0.0), db(d, 0.0);
  cpu::layernorm_fwd(y.data(), m.data(), r.data(), x.data(), w.data(), b.data(), N, d);
  cpu::layernorm_bwd(dx.data(), dw.data(), db.data(), dy.data(), x.data(), m.data(), r.data(),
                     w.data(), N, d);
  M6_CHECK_ERR(max_norm_err(fy.host(), y), Tol::float_vs_double);
  M6_CHECK_ERR(max_norm_err(fr.host(), r), Tol::float_vs_double);
  M6_CHECK_ERR(max_norm_err(fdx.host(), dx), Tol::float_vs_double);
  M6_CHECK_ERR(max_norm_err(fdw.host(), dw), Tol::float_vs_double);
  M6_CHECK_ERR(max_norm_err(fdb.host(), db), Tol::float_vs_double);

  DevBuf fg(*be, N * d), fgd(*be, N * d);
  be->gelu_fwd(fg.get(), fx.get(), N * d);
  be->gelu_bwd(fgd.get(), fx.get(), fdy.get(), N * d);
  std::vector<double> g(N * d), gd(N * d);
  cpu::gelu_fwd(g.data(), x.data(), N * d);
  cpu::gelu_bwd(gd.data(), x.data(), dy.data(), N * d);
  M6_CHECK_ERR(max_norm_err(fg.host(), g), Tol::float_vs_double);
  M6_CHECK_ERR(max_norm_err(fgd.host(), gd), Tol::float_vs_double);

  const int V = 257, R = 3;
  const std::vector<int32_t> targets = {7, -1, 100};
  const auto logits = rounded(rng.vec(R * V, -8, 8));
  DevBuf fl(*be, logits), floss(*be, R);
  auto* ft = static_cast<int32_t*>(be->alloc(R * sizeof(int32_t)));
  be->to_device(ft, targets.data(), R * sizeof(int32_t));
  be->crossentropy_fwd(floss.get(), fl.get(), fl.get(), ft, R, V);  // in place
  be->crossentropy_bwd(fl.get(), fl.get(), ft, 0.5f, R, V);         // in place
  be->release(ft);
  std::vector<double> loss(R), probs(R * V), dl(R * V);
  cpu::crossentropy_fwd(loss.data(), probs.data(), logits.data(), targets.data(), R, V);
  cpu::crossentropy_bwd(dl.data(), probs.data(), targets.data(), 0.5, R, V);
  M6_CHECK_ERR(max_norm_err(floss.host(), loss), Tol::float_vs_double);
  M6_CHECK_ERR(max_norm_err(fl.host(), dl), Tol::float_vs_double);
}

TEST_CASE("CpuBackend float attention agrees with double", "[backend_cpu][float]") {
  Rng rng = Rng::for_test();
  auto be = make_cpu_backend(2);
  const int B = 2, T = 9, H = 3, d = 12;
  const auto qkv = rounded(rng.vec(B * T * 3 * d, -2, 2)), dout = rounded(rng.vec(B * T * d));
  DevBuf fq(*be, qkv), fdo(*be, dout), fo(*be, B * T * d), fa(*be, B * H * T * T);
  DevBuf fdq(*be, B * T * 3 * d), fda(*be, B * H * T * T);
  be->attention_fwd(fo.get(), fa.get(), fq.get(), B, T, H, d);
  be->attention_bwd(fdq.get(), fda.get(), fdo.get(), fq.get(), fo.get(), fa.get(), B, T, H, d);
  std::vector<double> o(B * T * d), a(B * H * T * T), dq(B * T * 3 * d), da(B * H * T * T);
  cpu::attention_fwd(o.data(), a.data(), qkv.data(), B, T, H, d);
  cpu::attention_bwd(dq.data(), da.data(), dout.data(), qkv.data(), a.data(), B, T, H, d);
  M6_CHECK_ERR(max_norm_err(fo.host(), o), Tol::float_vs_double);
  M6_CHECK_ERR(max_norm_err(fa.host(), a), Tol::float_vs_double);
  M6_CHECK_ERR(max_norm_err(fdq.host(), dq), Tol::float_vs_double);
}

TEST_CASE("CpuBackend float router, aux losses and adamw agree with double",
          "[backend_cpu][float]") {
  Rng rng = Rng::for_test();
  auto be = make_cpu_backend(2);
  RouterArgs a;
  a.n = 9;
  a.e = 8;
  a.groups = 2;
  a.top_k = 2;
  a.normalize = true;
  const int S = a.groups * a.top_k;
  const auto logits = rounded(rng.vec(a.n * a.e, -3, 3)), dgate = rounded(rng.vec(a.n * S));
  DevBuf fl(*be, logits), fdg(*be, dgate), fp(*be, a.n * a.e), flse(*be, a.n * a.groups);
  DevBuf fg(*be, a.n * S), fdl(*be, a.n * a.e);
  std::vector<int32_t> fex(a.n * S), pos(a.n * S), count(a.e), demand(a.e);
  be->router_fwd(fp.get(), flse.get(), fex.data(), fg.get(), fl.get(), a);
  be->moe_assign(pos.data(), count.data(), demand.data(), fex.data(), a.n, S, a.e, 0);
  const auto faux = be->router_aux_fwd(fp.get(), flse.get(), demand.data(), a);
  be->router_bwd(fdl.get(), fdg.get(), fp.get(), flse.get(), fex.data(), fg.get(), demand.data(),
                 0.25f, 0.125f, a);

  std::vector<double> p(a.n * a.e), lse(a.n * a.groups), g(a.n * S), dl(a.n * a.e);
  std::vector<int32_t> ex(a.n * S);
  cpu::router_fwd(p.data(), lse.data(), ex.data(), g.data(), logits.data(), a);
  const auto aux = cpu::router_aux_fwd(p.data(), lse.data(), demand.data(), a);
  cpu::router_bwd(dl.data(), dgate.data(), p.data(), lse.data(), ex.data(), g.data(), demand.data(),
                  0.25, 0.125, a);
  CHECK(fex == ex);
  M6_CHECK_ERR(max_norm_err(fp.host(), p), Tol::float_vs_double);
  M6_CHECK_ERR(max_norm_err(fg.host(), g), Tol::float_vs_double);
  M6_CHECK_ERR(
      max_norm_err(std::vector<double>{faux.aux, faux.z}, std::vector<double>{aux.aux, aux.z}),
      Tol::float_vs_double);
  M6_CHECK_ERR(max_norm_err(fdl.host(), dl), Tol::float_vs_double);

  const size_t n = 257;
  const auto p0 = rounded(rng.vec(n)), grad = rounded(rng.vec(n));
  DevBuf fpar(*be, p0), fgr(*be, grad), fm(*be, n), fv(*be, n);
  std::vector<double> par = p0, m(n, 0.0), v(n, 0.0);
  Backend::AdamArgs args{1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, 1};
  for (args.t = 1; args.t <= 3; args.t++) {
    be->adamw(fpar.get(), fgr.get(), fm.get(), fv.get(), n, args);
    cpu::adamw(par.data(), grad.data(), m.data(), v.data(), n, args);
  }
  M6_CHECK_ERR(max_norm_err(fpar.host(), par), Tol::float_vs_double);
  CHECK(be->sum(fgr.get(), n) == Approx(cpu::sum(grad.data(), n)).epsilon(1e-12));
  CHECK(be->sum_squares(fgr.get(), n) == Approx(cpu::sum_squares(grad.data(), n)).epsilon(1e-12));
  CHECK(be->all_finite(fgr.get(), n));
}
