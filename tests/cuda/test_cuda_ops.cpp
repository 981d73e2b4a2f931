// Every op of backend.h on CudaBackend against CpuBackend (the reference),
// ggml test-backend-ops style: the same random inputs (fixed seeds) go to
// both backends, outputs are compared with the fp32 tolerances of ONE table
// (kTol), NaN never passes; awkward shapes on purpose (1 token, widths 257 and
// 259, an expert with no token, top_k = E, ties in the router). Then a tiny
// model: same init on each backend, forward + backward on one batch, loss and
// every gradient compared. With --compute bf16|fp16 the same checks run under
// precision.compute's semantics, with the tolerance derived from the format
// (cuda_test_util.h, "Half precision").
//
// Exit codes: 0 all passed, 1 some check failed, 2 usage, 77 no CUDA device
// (ctest reports the test as skipped, never as passed: SKIP_RETURN_CODE 77).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "core/backend/cuda_factory.h"
#include "core/model/linear.h"
#include "core/parallel/half.h"
#include "tests/cuda/cuda_test_util.h"

using namespace m6;

using namespace m6::cuda_test;

namespace {

// ---- dense --------------------------------------------------------------------
void test_gemm(Backend& c, Backend& g, Trans ta, Trans tb, int m, int n, int k, int pad,
               int batch, float alpha, float beta) {
  Twin t{c, g};
  const int wa = ta == Trans::No ? k : m, ha = ta == Trans::No ? m : k;
  const int wb = tb == Trans::No ? n : k, hb = tb == Trans::No ? k : n;
  const int lda = wa + pad, ldb = wb + pad, ldc = n + pad;
  const int64_t sa = static_cast<int64_t>(ha) * lda + 3, sb = static_cast<int64_t>(hb) * ldb + 1;
  const int64_t sc = static_cast<int64_t>(m) * ldc + 2;
  const std::vector<float> hA = randn(sa * batch + 8), hB = randn(sb * batch + 8);
  auto A = t.f(hA), B = t.f(hB), C = t.f(randn(sc * batch + 8));
  const double ga = gemm_abs(k, hA, hB);
  GemmArgs a;
  a.trans_a = ta;
  a.trans_b = tb;
  a.m = m, a.n = n, a.k = k, a.alpha = alpha, a.beta = beta;
  a.lda = pad == 0 ? 0 : lda, a.ldb = pad == 0 ? 0 : ldb, a.ldc = pad == 0 ? 0 : ldc;
  a.stride_a = sa, a.stride_b = sb, a.stride_c = sc, a.batch = batch;
  a.a = A.fc(), a.b = B.fc(), a.c = C.fc();
  c.gemm(a);
  a.a = A.fg(), a.b = B.fg(), a.c = C.fg();
  g.gemm(a);
  char name[128];
  std::snprintf(name, sizeof name, "gemm %c%c m%d n%d k%d pad%d b%d beta%g",
                ta == Trans::Yes ? 'T' : 'N', tb == Trans::Yes ? 'T' : 'N', m, n, k, pad, batch,
                beta);
  // Half mode: dW = dy^T x (trans_a, the weight-gradient GEMM of linear_bwd)
  // is an fp32 gradient; the other shapes produce activation gradients
  // (dx = dy W), stored rounded.
  if (ta == Trans::Yes)
    t.check_f32(name, C, k == 0 ? kElem : kGemm, ga);
  else
    t.check_f(name, C, k == 0 ? kElem : kGemm, ga);
}

// Half mode only: the rounding is really applied. A linear layer on unrounded
// inputs (the CPU in fp32) against the same layer under precision.compute on
// the GPU (rounded inputs, rounded output): they must differ by more than a
// quarter of the format's unit roundoff (relative to the output's scale), and
// by less than 16 of them.
void test_half_differs(Backend& c, Backend& g) {
  const HalfType h = *g_half;
  const double u = half_unit_roundoff(h);
  const int n = 64, in = 96, out = 40;
  const std::vector<float> hx = randn(static_cast<size_t>(n) * in),
                           hw = randn(static_cast<size_t>(out) * in, 0.2f);
  Twin t{c, g};
  auto x32 = t.f32(hx), w32 = t.f32(hw), xh = t.f(hx), wh = t.f(hw);
  auto y32 = t.zeros_f(static_cast<size_t>(n) * out), yh = t.zeros_f(static_cast<size_t>(n) * out);
  c.linear_fwd(y32.fc(), nullptr, x32.fc(), w32.fc(), nullptr, n, in, out);
  g.linear_fwd(yh.fg(), nullptr, xh.fg(), wh.fg(), nullptr, n, in, out);
  t.round_g(yh);
  std::vector<float> a(static_cast<size_t>(n) * out), b(a.size());
  c.to_host(a.data(), y32.c, a.size() * 4);
  g.to_host(b.data(), yh.g, b.size() * 4);
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(a[i])));
  }
  const double rel = diff / scale;
  char what[160];
  std::snprintf(what, sizeof what,
                "%s differs from fp32: max|diff|/max|y| %.3g in (u/4, 16u), u = %.3g",
                half_name(h), rel, u);
  expect_true(what, rel > u / 4 && rel < 16 * u);
}

void test_dense(Backend& c, Backend& g) {
  if (g_half) test_half_differs(c, g);
  for (Trans ta : {Trans::No, Trans::Yes})
    for (Trans tb : {Trans::No, Trans::Yes}) test_gemm(c, g, ta, tb, 5, 7, 3, 0, 1, 1.0f, 0.0f);
  test_gemm(c, g, Trans::No, Trans::Yes, 257, 259, 33, 0, 1, 0.5f, 1.0f);
  test_gemm(c, g, Trans::Yes, Trans::No, 17, 9, 259, 5, 3, 1.0f, 0.25f);
  test_gemm(c, g, Trans::No, Trans::No, 1, 259, 257, 2, 2, 1.0f, 1.0f);
  test_gemm(c, g, Trans::No, Trans::No, 4, 6, 0, 1, 2, 1.0f, 0.0f);   // k = 0, beta 0
  test_gemm(c, g, Trans::No, Trans::No, 4, 6, 0, 1, 2, 1.0f, 0.5f);   // k = 0, beta 0.5

  // 9001 rows: the column sums' two passes with the most chunks (colsum.cuh)
  for (int n : {1, 257, 9001}) {
    Twin t{c, g};
    const int w = 259;
    auto y = t.f(randn(static_cast<size_t>(n) * w)), b = t.f(randn(w));
    auto db = t.f32(randn(w));  // a weight gradient: fp32
    c.add_bias(y.fc(), b.fc(), n, w);
    g.add_bias(y.fg(), b.fg(), n, w);
    t.check_f("add_bias n" + std::to_string(n), y, kElem);
    c.bias_grad(db.fc(), y.fc(), n, w);
    g.bias_grad(db.fg(), y.fg(), n, w);
    t.check_f32("bias_grad n" + std::to_string(n), db, kReduce);
  }
  {
    Twin t{c, g};
    const size_t n = 100003;
    auto a = t.f(randn(n)), b = t.f(randn(n));
    c.add(a.fc(), a.fc(), b.fc(), n);  // y aliasing a, allowed by the CPU reference
    g.add(a.fg(), a.fg(), b.fg(), n);
    t.check_f("add (y = a)", a, kElem);
    c.axpy(a.fc(), -0.3f, b.fc(), n);
    g.axpy(a.fg(), -0.3f, b.fg(), n);
    t.check_f32("axpy", a, kElem);  // gradient arithmetic: fp32
    c.scale(a.fc(), 1.7f, n);
    g.scale(a.fg(), 1.7f, n);
    t.check_f32("scale", a, kElem);
    for (size_t len : {size_t{0}, size_t{1}, size_t{4097}, n}) {
      const std::string s = " n" + std::to_string(len);
      expect_close("sum" + s, {static_cast<float>(g.sum(a.fg(), len))},
                   {static_cast<float>(c.sum(a.fc(), len))}, kReduce);
      expect_close("sum_squares" + s, {static_cast<float>(g.sum_squares(a.fg(), len))},
                   {static_cast<float>(c.sum_squares(a.fc(), len))}, kReduce);
    }
    expect_true("all_finite (finite)", g.all_finite(a.fg(), n) && c.all_finite(a.fc(), n));
    for (float bad : {NAN, INFINITY, -INFINITY}) {
      std::vector<float> v = randn(259);
      v[258] = bad;
      auto x = t.f32(v);
      expect_true("all_finite sees " + std::to_string(bad), !g.all_finite(x.fg(), 259));
    }
  }
  {  // mixed-precision rounding: bit-exact with the CPU (one definition of RNE)
    Twin t{c, g};
    std::vector<float> v = randn(40003);
    for (size_t i = 0; i < v.size(); ++i)  // normal, fp16-subnormal and large magnitudes
      v[i] *= i % 3 == 0 ? 1000.0f : i % 3 == 1 ? 1e-6f : 1.0f;
    for (HalfType h : {HalfType::BF16, HalfType::F16}) {
      auto x = t.f32(v);  // unrounded, in every mode
      c.round_half(x.fc(), v.size(), h);
      g.round_half(x.fg(), v.size(), h);
      t.check_f32(h == HalfType::BF16 ? "round_half bf16" : "round_half fp16", x, kExact);
      std::vector<float> big = {70000.0f, -1e30f, 0.0f};
      auto y = t.f32(big);
      g.round_half(y.fg(), big.size(), h);
      std::vector<float> back(big.size());
      g.to_host(back.data(), y.fg(), big.size() * sizeof(float));
      expect_true("round_half overflow", h == HalfType::F16 ? std::isinf(back[0]) && std::isinf(back[1])
                                                            : !std::isinf(back[0]) && !std::isinf(back[1]));
    }
  }
  {  // AdamW, two steps
    Twin t{c, g};
    const size_t n = 4099;
    // master weights, gradients and moments: fp32 in every mode
    auto p = t.f32(randn(n)), gr = t.f32(randn(n)), m = t.zeros_f(n), v = t.zeros_f(n);
    for (int64_t step = 1; step <= 2; ++step) {
      const Backend::AdamArgs a{3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, step};
      c.adamw(p.fc(), gr.fc(), m.fc(), v.fc(), n, a);
      g.adamw(p.fg(), gr.fg(), m.fg(), v.fg(), n, a);
    }
    t.check_f32("adamw p", p, kElem);
    t.check_f32("adamw m", m, kElem);
    t.check_f32("adamw v", v, kElem);
  }
  // Multi-tensor AdamW (one launch on the GPU) against the CPU reference,
  // which is adamw() per tensor: sizes across the chunk boundary (16384), an
  // empty tensor, per-tensor weight decay; three steps, the second with the
  // same table (the GPU reuses its uploaded table), the third with one tensor
  // left out (the table changes).
  {
    Twin t{c, g};
    const std::vector<size_t> sizes = {1, 257, 16384, 16385, 0, 40000};
    std::vector<Twin::Buf> P, G, M, V;
    for (size_t n : sizes) {
      P.push_back(t.f32(randn(n + 1)));
      G.push_back(t.f32(randn(n + 1)));
      M.push_back(t.zeros_f(n + 1));
      V.push_back(t.zeros_f(n + 1));
    }
    auto table = [&](bool gpu, size_t count) {
      std::vector<Backend::AdamTensor> ts;
      for (size_t i = 0; i < count; ++i)
        ts.push_back({gpu ? P[i].fg() : P[i].fc(), gpu ? G[i].fg() : G[i].fc(),
                      gpu ? M[i].fg() : M[i].fc(), gpu ? V[i].fg() : V[i].fc(), sizes[i],
                      i % 2 ? 0.0f : 0.1f});
      return ts;
    };
    for (int64_t step = 1; step <= 3; ++step) {
      const size_t count = step == 3 ? sizes.size() - 1 : sizes.size();
      const Backend::AdamArgs a{3e-3f, 0.9f, 0.95f, 1e-8f, 123.0f /* ignored */, 0.5f, step};
      const auto tc = table(false, count), tg = table(true, count);
      c.adamw_multi(tc.data(), tc.size(), a);
      g.adamw_multi(tg.data(), tg.size(), a);
    }
    for (size_t i = 0; i < sizes.size(); ++i) {
      const std::string s = " n" + std::to_string(sizes[i]);
      t.check_f32("adamw_multi p" + s, P[i], kElem);  // element n (past the tensor) untouched
      t.check_f32("adamw_multi m" + s, M[i], kElem);
      t.check_f32("adamw_multi v" + s, V[i], kElem);
    }
  }
}

// ---- linear layer (cuBLASLt with bias / GELU epilogues on the GPU) ------------------
// linear_fwd against the reference sequence (gemm, add_bias, gelu_fwd):
// shapes whose GELU pre-activation width is a multiple of 8 take the fused
// epilogue, others (257) the fallback; `shift` offsets every pointer by one
// float (4-byte aligned operands, as an expert's rows inside a buffer).
void test_linear(Backend& c, Backend& g, Backend& g_bf16) {
  struct Case { int n, in, out; bool bias, gelu; int shift; };
  const Case cases[] = {{1, 8, 16, true, true, 0},    {37, 259, 257, true, true, 0},
                        {64, 256, 768, true, true, 0}, {5, 24, 72, false, true, 1},
                        {33, 96, 40, true, false, 1},  {7, 64, 256, false, false, 0},
                        {0, 8, 8, true, true, 0}};
  // fp32 mode: a second pass on the bf16 tensor-core backend with bf16
  // operands. Half mode: one pass, operands rounded by Twin::f, the GPU
  // backend configured as the trainer configures it.
  for (bool half : g_half ? std::vector<bool>{false} : std::vector<bool>{false, true}) {
    Backend& gg = half ? g_bf16 : g;
    for (const Case& k : cases) {
      Twin t{c, gg};
      const size_t nx = static_cast<size_t>(k.n) * k.in + 1, nw = static_cast<size_t>(k.out) * k.in + 1;
      const size_t ny = static_cast<size_t>(k.n) * k.out + 1;
      std::vector<float> hx = randn(nx), hw = randn(nw, 0.2f), hb = randn(k.out + 1);
      if (half)  // bf16 operands: the tensor cores' conversion is then exact
        for (auto* v : {&hx, &hw, &hb})
          for (float& e : *v) e = bf16_to_f32(f32_to_bf16(e));
      auto x = t.f(hx), w = t.f(hw), b = t.f(hb), y = t.zeros_f(ny), act = t.zeros_f(ny);
      const int s = k.shift;
      c.linear_fwd(y.fc() + s, k.gelu ? act.fc() + s : nullptr, x.fc() + s, w.fc() + s,
                   k.bias ? b.fc() + s : nullptr, k.n, k.in, k.out);
      gg.linear_fwd(y.fg() + s, k.gelu ? act.fg() + s : nullptr, x.fg() + s, w.fg() + s,
                    k.bias ? b.fg() + s : nullptr, k.n, k.in, k.out);
      char name[128];
      std::snprintf(name, sizeof name, "linear_fwd%s n%d in%d out%d%s%s%s", half ? " bf16" : "",
                    k.n, k.in, k.out, k.bias ? " bias" : "", k.gelu ? " gelu" : "",
                    s ? " unaligned" : "");
      const double ga = gemm_abs(k.in, hx, hw);
      t.check_f(std::string(name) + " y", y, kGemm, ga);
      if (k.gelu) t.check_f(std::string(name) + " act", act, kGemm, ga);
      {  // deterministic mode: a second run gives the same bits
        std::vector<float> first(ny), second(ny);
        gg.to_host(first.data(), y.g, ny * 4);
        gg.linear_fwd(y.fg() + s, k.gelu ? act.fg() + s : nullptr, x.fg() + s, w.fg() + s,
                      k.bias ? b.fg() + s : nullptr, k.n, k.in, k.out);
        t.round_g(y);  // half mode: `first` was rounded by check_f
        gg.to_host(second.data(), y.g, ny * 4);
        expect_true(std::string(name) + " reproducible bit for bit",
                    std::memcmp(first.data(), second.data(), ny * 4) == 0);
      }
    }
  }
}

// Half mode only: the router's linear layer, whose weight keeps an fp32
// compute copy (README "Mixed precision"): rounded input x, fp32 weight, fp32
// logits; backward dx += dlogits W (fp32 dlogits, into the MoE layer's input
// gradient, rounded after) and dW += dlogits^T x (fp32). Under Fp32Gemms as
// in MoeLayer; a backend that still fed these fp32 operands to the bf16
// tensor cores would round them and fail here. The guard restores the
// backend's setting when it ends.
void test_router_linear(Backend& c, Backend& g) {
  Twin t{c, g};
  const int n = 37, in = 96, E = 8;
  const std::vector<float> hx = randn(static_cast<size_t>(n) * in),
                           hw = randn(static_cast<size_t>(E) * in, 0.2f),
                           hd = randn(static_cast<size_t>(n) * E);
  auto x = t.f(hx), w = t.f32(hw);
  auto y = t.zeros_f(static_cast<size_t>(n) * E);
  {
    Fp32Gemms fc(c), fg(g);
    c.linear_fwd(y.fc(), nullptr, x.fc(), w.fc(), nullptr, n, in, E);
    g.linear_fwd(y.fg(), nullptr, x.fg(), w.fg(), nullptr, n, in, E);
  }
  t.check_f32("router linear_fwd (fp32 weight) logits", y, kGemm, gemm_abs(in, hx, hw));
  auto dl = t.f32(hd), dx = t.f(randn(static_cast<size_t>(n) * in));
  auto dw = t.f32(randn(static_cast<size_t>(E) * in));
  {
    Fp32Gemms fc(c), fg(g);
    linear_bwd(c, dx.fc(), GradMode::Accumulate, dw.fc(), nullptr, dl.fc(), x.fc(), w.fc(), n, in,
               E);
    linear_bwd(g, dx.fg(), GradMode::Accumulate, dw.fg(), nullptr, dl.fg(), x.fg(), w.fg(), n, in,
               E);
  }
  t.check_f("router linear_bwd dx (fp32 dlogits, weight)", dx, kGemm, gemm_abs(E, hd, hw));
  t.check_f32("router linear_bwd dw", dw, kGemm, gemm_abs(n, hd, hx));
  expect_true("Fp32Gemms restores the backend's GEMM mode",
              !g.set_fp32_gemms(false) && !c.set_fp32_gemms(false));
}

// The experts' grouped linear (one grouped cuBLAS call + one bias/GELU kernel
// on the GPU) against linear_fwd per group: empty groups, a group without
// bias, gaps between the groups' rows (left untouched), GELU on and off.
void test_linear_grouped(Backend& c, Backend& g, Backend& g_bf16) {
  for (bool half : g_half ? std::vector<bool>{false} : std::vector<bool>{false, true}) {
    Backend& gg = half ? g_bf16 : g;
    for (auto [in, out, gelu] : {std::tuple{24, 72, true}, std::tuple{40, 257, false}}) {
      Twin t{c, gg};
      const int rows[] = {3, 0, 17, 1, 40}, gap = 2;
      const int E = 5;
      int64_t total = 0;
      std::vector<int64_t> at(E);
      for (int e = 0; e < E; ++e) at[e] = total, total += rows[e] + gap;
      std::vector<float> hx = randn(static_cast<size_t>(total) * in);
      std::vector<std::vector<float>> hw(E), hb(E);
      for (int e = 0; e < E; ++e) hw[e] = randn(static_cast<size_t>(out) * in, 0.2f), hb[e] = randn(out);
      if (half) {
        for (float& v : hx) v = bf16_to_f32(f32_to_bf16(v));
        for (int e = 0; e < E; ++e)
          for (auto* vec : {&hw[e], &hb[e]})
            for (float& v : *vec) v = bf16_to_f32(f32_to_bf16(v));
      }
      auto x = t.f(hx);
      std::vector<Twin::Buf> w, b;
      for (int e = 0; e < E; ++e) w.push_back(t.f(hw[e])), b.push_back(t.f(hb[e]));
      const std::vector<float> poison(static_cast<size_t>(total) * out, 7.0f);
      auto y = t.f(poison), act = t.f(poison);
      std::vector<Backend::LinearGroup> gc, gg_;
      for (int e = 0; e < E; ++e) {
        gc.push_back({w[e].fc(), e == 3 ? nullptr : b[e].fc(), at[e], rows[e]});
        gg_.push_back({w[e].fg(), e == 3 ? nullptr : b[e].fg(), at[e], rows[e]});
      }
      c.linear_fwd_grouped(y.fc(), gelu ? act.fc() : nullptr, x.fc(), gc.data(), E, in, out);
      gg.linear_fwd_grouped(y.fg(), gelu ? act.fg() : nullptr, x.fg(), gg_.data(), E, in, out);
      char name[96];
      std::snprintf(name, sizeof name, "linear_fwd_grouped%s in%d out%d%s", half ? " bf16" : "",
                    in, out, gelu ? " gelu" : "");
      double ga = 0.0;
      for (int e = 0; e < E; ++e) ga = std::max(ga, gemm_abs(in, hx, hw[e]));
      t.check_f(std::string(name) + " y", y, kGemm, ga);
      if (gelu) t.check_f(std::string(name) + " act", act, kGemm, ga);
    }
  }
}

// The residual add fused with the LayerNorm after it, against the CPU's add +
// layernorm_fwd, and against the same backend's two separate ops bit for bit.
void test_add_layernorm(Backend& c, Backend& g) {
  for (auto [N, d] : {std::pair{1, 259}, std::pair{257, 768}, std::pair{3, 8}}) {
    Twin t{c, g};
    const size_t nd = static_cast<size_t>(N) * d;
    auto x = t.f(randn(nd)), delta = t.f(randn(nd, 0.5f)), w = t.f32(randn(d)), b = t.f32(randn(d));
    auto xo = t.zeros_f(nd), y = t.zeros_f(nd), mean = t.zeros_f(N), rstd = t.zeros_f(N);
    auto xo2 = t.zeros_f(nd), y2 = t.zeros_f(nd), mean2 = t.zeros_f(N), rstd2 = t.zeros_f(N);
    c.add_layernorm_fwd(xo.fc(), y.fc(), mean.fc(), rstd.fc(), x.fc(), delta.fc(), w.fc(), b.fc(),
                        N, d);
    g.add_layernorm_fwd(xo.fg(), y.fg(), mean.fg(), rstd.fg(), x.fg(), delta.fg(), w.fg(), b.fg(),
                        N, d);
    const std::string s = " N" + std::to_string(N) + " d" + std::to_string(d);
    t.check_f("add_layernorm_fwd x_out" + s, xo, kElem);
    t.check_f("add_layernorm_fwd y" + s, y, kReduce);
    t.check_f32("add_layernorm_fwd mean" + s, mean, kReduce);
    t.check_f32("add_layernorm_fwd rstd" + s, rstd, kReduce);
    // (the fused op normalises the unrounded sum: so does this reference)
    g.add(xo2.fg(), x.fg(), delta.fg(), nd);
    g.layernorm_fwd(y2.fg(), mean2.fg(), rstd2.fg(), xo2.fg(), w.fg(), b.fg(), N, d);
    t.round_g(y2);
    std::vector<float> a1(nd), a2(nd);
    g.to_host(a1.data(), y.g, nd * 4);
    g.to_host(a2.data(), y2.g, nd * 4);
    expect_true("add_layernorm_fwd = add + layernorm_fwd bit for bit" + s,
                std::memcmp(a1.data(), a2.data(), nd * 4) == 0);
  }
  // The half variant (precision.compute): the sum and y rounded in the same
  // pass; against the CPU, and bit for bit against the GPU's op sequence.
  for (const HalfType h : {HalfType::BF16, HalfType::F16}) {
    const int N = 257, d = 768;
    const size_t nd = static_cast<size_t>(N) * d;
    const std::string s = std::string(" ") + half_name(h);
    std::vector<float> hx = randn(nd), hdelta = randn(nd, 0.5f);
    for (float& v : hx) v = round_half(v, h);
    for (float& v : hdelta) v = round_half(v, h);
    const std::vector<float> hw = randn(d), hb = randn(d);
    struct Out {
      std::vector<float> xo, y, mean, rstd;
    };
    auto run = [&](Backend& be, bool fused) {
      auto up = [&](const std::vector<float>& v) {
        float* p = static_cast<float*>(be.alloc(v.size() * 4));
        be.to_device(p, v.data(), v.size() * 4);
        return p;
      };
      float *x = up(hx), *delta = up(hdelta), *w = up(hw), *b = up(hb);
      float *xo = up(std::vector<float>(nd)), *y = up(std::vector<float>(nd));
      float *mean = up(std::vector<float>(N)), *rstd = up(std::vector<float>(N));
      if (fused) {
        be.add_layernorm_fwd_half(xo, y, mean, rstd, x, delta, w, b, N, d, h);
      } else {
        be.add(xo, x, delta, nd);
        be.round_half(xo, nd, h);
        be.layernorm_fwd(y, mean, rstd, xo, w, b, N, d);
        be.round_half(y, nd, h);
      }
      Out o{std::vector<float>(nd), std::vector<float>(nd), std::vector<float>(N),
            std::vector<float>(N)};
      be.to_host(o.xo.data(), xo, nd * 4);
      be.to_host(o.y.data(), y, nd * 4);
      be.to_host(o.mean.data(), mean, N * 4);
      be.to_host(o.rstd.data(), rstd, N * 4);
      for (float* p : {x, delta, w, b, xo, y, mean, rstd}) be.release(p);
      return o;
    };
    const Out oc = run(c, true), og = run(g, true), seq = run(g, false);
    expect_close("add_layernorm_fwd_half x_out" + s, og.xo, oc.xo, kExact);
    expect_close("add_layernorm_fwd_half y" + s, og.y, oc.y, kReduce, h);
    expect_close("add_layernorm_fwd_half mean" + s, og.mean, oc.mean, kReduce);
    expect_close("add_layernorm_fwd_half rstd" + s, og.rstd, oc.rstd, kReduce);
    bool same = true, rounded = true;
    for (size_t k = 0; k < nd; ++k) {
      same = same && og.xo[k] == seq.xo[k] && og.y[k] == seq.y[k];
      rounded = rounded && round_half(oc.y[k], h) == oc.y[k] && round_half(oc.xo[k], h) == oc.xo[k];
    }
    expect_true("add_layernorm_fwd_half = add, round, layernorm, round bit for bit" + s, same);
    expect_true("add_layernorm_fwd_half outputs are " + std::string(half_name(h)) + " values",
                rounded);
  }
}

// ---- transformer ----------------------------------------------------------------
void test_transformer(Backend& c, Backend& g) {
  for (auto [B, T, d] : {std::tuple{1, 1, 8}, std::tuple{2, 5, 259}}) {
    Twin t{c, g};
    const int V = 11;
    const std::string s = " B" + std::to_string(B) + " T" + std::to_string(T) + " d" +
                          std::to_string(d);
    auto tok = t.i(randi(static_cast<size_t>(B) * T, V));
    auto wte = t.f(randn(static_cast<size_t>(V) * d)), wpe = t.f(randn(static_cast<size_t>(T) * d));
    auto x = t.zeros_f(static_cast<size_t>(B) * T * d);
    c.embedding_fwd(x.fc(), tok.ic(), wte.fc(), wpe.fc(), B, T, d);
    g.embedding_fwd(x.fg(), tok.ig(), wte.fg(), wpe.fg(), B, T, d);
    t.check_f("embedding_fwd" + s, x, kElem);
    c.embedding_bwd(wte.fc(), wpe.fc(), x.fc(), tok.ic(), B, T, d);
    g.embedding_bwd(wte.fg(), wpe.fg(), x.fg(), tok.ig(), B, T, d);
    t.check_f32("embedding_bwd dwte" + s, wte, kReduce);  // weight gradients: fp32
    t.check_f32("embedding_bwd dwpe" + s, wpe, kReduce);
  }
  for (auto [N, d] :
       {std::pair{1, 259}, std::pair{257, 259}, std::pair{3, 257}, std::pair{9001, 67}}) {
    Twin t{c, g};
    const std::string s = " N" + std::to_string(N) + " d" + std::to_string(d);
    const size_t nd = static_cast<size_t>(N) * d;
    auto x = t.f(randn(nd, 2.0f)), w = t.f32(randn(d)), b = t.f32(randn(d)), y = t.zeros_f(nd);
    auto mean = t.zeros_f(N), rstd = t.zeros_f(N);
    c.layernorm_fwd(y.fc(), mean.fc(), rstd.fc(), x.fc(), w.fc(), b.fc(), N, d);
    g.layernorm_fwd(y.fg(), mean.fg(), rstd.fg(), x.fg(), w.fg(), b.fg(), N, d);
    t.check_f("layernorm_fwd y" + s, y, kReduce);
    t.check_f32("layernorm_fwd mean" + s, mean, kReduce);
    t.check_f32("layernorm_fwd rstd" + s, rstd, kReduce);
    auto dy = t.f(randn(nd)), dx = t.f(randn(nd)), dw = t.f32(randn(d)), db = t.f32(randn(d));
    c.layernorm_bwd(dx.fc(), dw.fc(), db.fc(), dy.fc(), x.fc(), mean.fc(), rstd.fc(), w.fc(), N, d);
    g.layernorm_bwd(dx.fg(), dw.fg(), db.fg(), dy.fg(), x.fg(), mean.fg(), rstd.fg(), w.fg(), N, d);
    t.check_f("layernorm_bwd dx" + s, dx, kReduce);
    t.check_f32("layernorm_bwd dw" + s, dw, kReduce);
    t.check_f32("layernorm_bwd db" + s, db, kReduce);
  }
  {
    Twin t{c, g};
    const size_t n = 1031;
    auto x = t.f(randn(n, 3.0f)), y = t.zeros_f(n), dy = t.f(randn(n));
    c.gelu_fwd(y.fc(), x.fc(), n);
    g.gelu_fwd(y.fg(), x.fg(), n);
    t.check_f("gelu_fwd", y, kElem);
    c.gelu_bwd(dy.fc(), x.fc(), dy.fc(), n);  // dx aliasing dy
    g.gelu_bwd(dy.fg(), x.fg(), dy.fg(), n);
    t.check_f("gelu_bwd (dx = dy)", dy, kElem);
  }
  // The GELU with precision.compute's rounding in one pass: the rounded
  // input in place (exact: the same rounding of the same floats), the output
  // within one ulp of the format plus the fp32 tolerance.
  for (const HalfType h : {HalfType::BF16, HalfType::F16}) {
    const size_t n = 1031;
    const std::string s = std::string(" ") + half_name(h);
    const std::vector<float> x0 = randn(n, 3.0f), dy0 = randn(n);
    auto run = [&](Backend& be, std::vector<float>& x, std::vector<float>& y,
                   std::vector<float>& dy) {
      float* dx_ = static_cast<float*>(be.alloc(n * 4));
      float* dy_ = static_cast<float*>(be.alloc(n * 4));
      float* dq = static_cast<float*>(be.alloc(n * 4));
      be.to_device(dx_, x0.data(), n * 4);
      be.to_device(dy_, dy0.data(), n * 4);
      be.gelu_fwd_half(dq, dx_, n, h);
      x.resize(n), y.resize(n), dy.resize(n);
      be.to_host(x.data(), dx_, n * 4);
      be.to_host(y.data(), dq, n * 4);
      be.gelu_bwd_half(dy_, dx_, dy_, n, h);  // dx aliasing dy
      be.to_host(dy.data(), dy_, n * 4);
      for (float* p : {dx_, dy_, dq}) be.release(p);
    };
    std::vector<float> xc, yc, dc, xg, yg, dg;
    run(c, xc, yc, dc);
    run(g, xg, yg, dg);
    expect_close("gelu_fwd_half x rounded in place" + s, xg, xc, kExact);
    expect_close("gelu_fwd_half y" + s, yg, yc, kElem, h);
    expect_close("gelu_bwd_half (dx = dy)" + s, dg, dc, kElem, h);
    bool rounded = true, moved = false;
    for (size_t i = 0; i < n; ++i) {
      rounded = rounded && round_half(yc[i], h) == yc[i] && round_half(dc[i], h) == dc[i];
      moved = moved || xc[i] != x0[i];
    }
    expect_true("gelu_*_half outputs are " + std::string(half_name(h)) + " values" + s,
                rounded && moved);
  }
  // attention: tests/cuda/test_cuda_attention.cpp (its own binary)
  for (auto [N, V] : {std::pair{1, 259}, std::pair{7, 257}}) {
    Twin t{c, g};
    const std::string s = " N" + std::to_string(N) + " V" + std::to_string(V);
    std::vector<int32_t> tg = randi(N, V);
    tg[0] = N > 1 ? -1 : tg[0];  // an ignored position
    auto targets = t.i(tg), logits = t.f(randn(static_cast<size_t>(N) * V, 3.0f));
    auto loss = t.f32(randn(N));
    c.crossentropy_fwd(loss.fc(), logits.fc(), logits.fc(), targets.ic(), N, V);  // probs = logits
    g.crossentropy_fwd(loss.fg(), logits.fg(), logits.fg(), targets.ig(), N, V);
    t.check_f32("crossentropy_fwd loss" + s, loss, kReduce);  // loss, probabilities: fp32
    t.check_f32("crossentropy_fwd probs (= logits)" + s, logits, kReduce);
    c.crossentropy_bwd(logits.fc(), logits.fc(), targets.ic(), 0.25f, N, V);  // dlogits = probs
    g.crossentropy_bwd(logits.fg(), logits.fg(), targets.ig(), 0.25f, N, V);
    t.check_f("crossentropy_bwd (= probs)" + s, logits, kReduce);
  }
  {  // a target >= V throws, as on the CPU (CUDA: deferred to check_errors)
    Twin t{c, g};
    auto targets = t.i({0, 5}), logits = t.f(randn(2 * 4)), loss = t.zeros_f(2);
    bool threw = false;
    try {
      g.crossentropy_fwd(loss.fg(), logits.fg(), logits.fg(), targets.ig(), 2, 4);
      g.check_errors();
    } catch (const Error&) {
      threw = true;
    }
    expect_true("crossentropy_fwd throws on target >= vocab", threw);
  }
}

}  // namespace

void test_moe(Backend& c, Backend& g);         // test_cuda_moe.cpp
void test_model_step(Backend& c, Backend& g);  // test_cuda_moe.cpp
void test_offload(Backend& g);                 // test_cuda_offload.cpp
void test_linear_bwd_grouped(Backend& c, Backend& g, Backend& g_bf16);  // test_cuda_grouped.cpp
void test_sum_squares_multi(Backend& c, Backend& g);                    // test_cuda_grouped.cpp
void test_stream_results(Backend& c, Backend& g);                       // test_cuda_graphs.cpp
void test_deferred_errors(Backend& c, Backend& g);                      // test_cuda_graphs.cpp
void test_staged_copies(Backend& g);                                    // test_cuda_graphs.cpp
void test_graphs(Backend& c, Backend& g);                               // test_cuda_graphs.cpp
void test_model_graphs(Backend& g);                                     // test_cuda_graphs.cpp

// --cpu-vs-cpu: a second CpuBackend, in the recording backend (graphs as
// closures), stands in for CUDA, which checks this harness (buffer sizes,
// the flow of the MoE and graph checks) on a machine without a GPU.
//
// --compute fp32|bf16|fp16: the compute precision (default fp32). bf16 and
// fp16 run every op under precision.compute's semantics (cuda_test_util.h,
// "Half precision"): inputs rounded where the model stores them rounded,
// outputs rounded on each backend where the model rounds them, compared
// within one ulp of the format plus the op's fp32 tolerance; the GPU backend
// is configured as the trainer configures it (bf16: GEMMs on the bf16 tensor
// cores; fp16: fp32 GEMMs on fp16 values, exact). Also checked: the half
// mode differs from fp32, and most rounded outputs were changed by rounding.
//
// Exit codes (scripts/gpu-check.sh reads them): 0 all passed, 1 a check
// failed, 2 usage, 77 no CUDA device.
int main(int argc, char** argv) {
  bool cpu_vs_cpu = false;
  std::string compute = "fp32";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--cpu-vs-cpu") {
      cpu_vs_cpu = true;
    } else if (a == "--compute" && i + 1 < argc) {
      compute = argv[++i];
    } else {
      std::printf("usage: %s [--cpu-vs-cpu] [--compute fp32|bf16|fp16]\n", argv[0]);
      return 2;
    }
  }
  if (compute == "bf16") {
    g_half = HalfType::BF16;
  } else if (compute == "fp16") {
    g_half = HalfType::F16;
  } else if (compute != "fp32") {
    std::printf("--compute %s: expected fp32, bf16 or fp16\n", compute.c_str());
    return 2;
  }
  if (!cpu_vs_cpu && cuda_device_count() == 0) {
    std::printf("no CUDA device: skipping [cuda] tests\n");
    return 77;
  }
  try {
    auto cpu = make_cpu_backend(2);
    const bool tensor_cores = g_half == HalfType::BF16;  // as make_backend in trainer.cpp
    auto gpu = cpu_vs_cpu ? make_recording_backend(make_cpu_backend(1))
                          : make_cuda_backend(0, {tensor_cores, true});
    std::printf("comparing %s against %s, compute %s\n", gpu->name().c_str(),
                cpu->name().c_str(), compute.c_str());
    test_dense(*cpu, *gpu);
    {
      auto gpu_bf16 = g_half ? nullptr
                      : cpu_vs_cpu ? make_cpu_backend(1)
                                   : make_cuda_backend(0, {true, true});
      Backend& gb = g_half ? *gpu : *gpu_bf16;
      test_linear(*cpu, *gpu, gb);
      if (g_half) test_router_linear(*cpu, *gpu);
      test_linear_grouped(*cpu, *gpu, gb);
      test_linear_bwd_grouped(*cpu, *gpu, gb);
      test_add_layernorm(*cpu, *gpu);
    }
    test_transformer(*cpu, *gpu);
    test_moe(*cpu, *gpu);
    test_model_step(*cpu, *gpu);
    test_sum_squares_multi(*cpu, *gpu);
    test_offload(*gpu);
    test_stream_results(*cpu, *gpu);
    test_deferred_errors(*cpu, *gpu);
    test_staged_copies(*gpu);
    test_graphs(*cpu, *gpu);
    test_model_graphs(*gpu);
    if (g_half) {
      char what[128];
      std::snprintf(what, sizeof what, "rounding changed %zu of %zu rounded outputs (> 1/2)",
                    g_rounded_changed, g_rounded_total);
      expect_true(what, 2 * g_rounded_changed > g_rounded_total);
    }
  } catch (const std::exception& e) {
    std::printf("FAIL exception: %s\n", e.what());
    return 1;
  }
  std::printf("%d of %d checks failed\n", g_failures, g_checks);
  return g_failures == 0 ? 0 : 1;
}
