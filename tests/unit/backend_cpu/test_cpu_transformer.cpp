// Transformer ops of the CPU reference, in double: forwards against naive
// formulas (layernorm mean/var, softmax, causal mask, -log softmax) and every
// backward against central finite differences of L = sum(R * output).
#include <cmath>
#include <vector>

#include "core/backend/cpu/cpu_ops.h"
#include "tests/unit/backend_cpu/backend_test_util.h"

using namespace m6;
using namespace m6::test;

TEST_CASE("embedding forward and backward (repeated tokens accumulate)",
          "[backend_cpu][embedding][grad]") {
  Rng rng = Rng::for_test();
  const int V = 11, B = 2, T = 3, d = 13;
  std::vector<int32_t> tokens(B * T);
  for (auto& t : tokens) t = rng.below(V);
  tokens[4] = tokens[0];  // a token seen twice
  std::vector<double> wte = rng.vec(V * d), wpe = rng.vec(T * d), r = rng.vec(B * T * d);
  std::vector<double> x(B * T * d);
  cpu::embedding_fwd(x.data(), tokens.data(), wte.data(), wpe.data(), B, T, d);
  for (int i = 0; i < B * T; i++)
    for (int j = 0; j < d; j++)
      CHECK(x[i * d + j] == wte[tokens[i] * d + j] + wpe[(i % T) * d + j]);

  auto loss = [&] {
    std::vector<double> y(B * T * d);
    cpu::embedding_fwd(y.data(), tokens.data(), wte.data(), wpe.data(), B, T, d);
    return dot(r, y);
  };
  const std::vector<double> prev_te = rng.vec(V * d), prev_pe = rng.vec(T * d);
  std::vector<double> dwte = prev_te, dwpe = prev_pe;
  cpu::embedding_bwd(dwte.data(), dwpe.data(), r.data(), tokens.data(), B, T, d);
  for (size_t i = 0; i < dwte.size(); i++) dwte[i] -= prev_te[i];
  for (size_t i = 0; i < dwpe.size(); i++) dwpe[i] -= prev_pe[i];
  M6_CHECK_ERR(max_norm_err(dwte, fd_grad(wte, loss)), Tol::fd_grad);
  M6_CHECK_ERR(max_norm_err(dwpe, fd_grad(wpe, loss)), Tol::fd_grad);
}

TEST_CASE("layernorm forward matches the mean/variance formula", "[backend_cpu][layernorm]") {
  Rng rng = Rng::for_test();
  for (auto [N, d] : {std::pair{1, 7}, std::pair{3, 257}}) {
    std::vector<double> x = rng.vec(N * d, 2.0, 4.0), w = rng.vec(d, 0.5, 1.5), b = rng.vec(d);
    std::vector<double> y(N * d), mean(N), rstd(N);
    cpu::layernorm_fwd(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, d);
    std::vector<double> want_y(N * d), want_mean(N), want_rstd(N);
    for (int i = 0; i < N; i++) {
      double mu = 0.0, var = 0.0;
      for (int j = 0; j < d; j++) mu += x[i * d + j] / d;
      for (int j = 0; j < d; j++) var += (x[i * d + j] - mu) * (x[i * d + j] - mu) / d;
      want_mean[i] = mu;
      want_rstd[i] = 1.0 / std::sqrt(var + 1e-5);
      for (int j = 0; j < d; j++)
        want_y[i * d + j] = (x[i * d + j] - mu) / std::sqrt(var + 1e-5) * w[j] + b[j];
    }
    M6_CHECK_ERR(max_norm_err(y, want_y), Tol::fwd_double);
    M6_CHECK_ERR(max_norm_err(mean, want_mean), Tol::fwd_double);
    M6_CHECK_ERR(max_norm_err(rstd, want_rstd), Tol::fwd_double);
  }
}

TEST_CASE("layernorm backward matches finite differences", "[backend_cpu][layernorm][grad]") {
  Rng rng = Rng::for_test();
  for (auto [N, d] : {std::pair{1, 7}, std::pair{3, 257}, std::pair{4, 13}}) {
    INFO("N " << N << " d " << d);
    std::vector<double> x = rng.vec(N * d, -1.0, 3.0), w = rng.vec(d, 0.5, 1.5), b = rng.vec(d);
    std::vector<double> r = rng.vec(N * d);
    auto loss = [&] {
      std::vector<double> y(N * d), mean(N), rstd(N);
      cpu::layernorm_fwd(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, d);
      return dot(r, y);
    };
    std::vector<double> y(N * d), mean(N), rstd(N);
    cpu::layernorm_fwd(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, d);
    const std::vector<double> px = rng.vec(N * d), pw = rng.vec(d), pb = rng.vec(d);
    std::vector<double> dx = px, dw = pw, db = pb;  // the op accumulates
    cpu::layernorm_bwd(dx.data(), dw.data(), db.data(), r.data(), x.data(), mean.data(),
                       rstd.data(), w.data(), N, d);
    for (size_t i = 0; i < dx.size(); i++) dx[i] -= px[i];
    for (int j = 0; j < d; j++) {
      dw[j] -= pw[j];
      db[j] -= pb[j];
    }
    M6_CHECK_ERR(max_norm_err(dx, fd_grad(x, loss)), Tol::fd_grad);
    M6_CHECK_ERR(max_norm_err(dw, fd_grad(w, loss)), Tol::fd_grad);
    M6_CHECK_ERR(max_norm_err(db, fd_grad(b, loss)), Tol::fd_grad);
  }
}

TEST_CASE("gelu forward is the tanh formula and backward matches finite differences",
          "[backend_cpu][gelu][grad]") {
  Rng rng = Rng::for_test();
  const int n = 257;
  std::vector<double> x = rng.vec(n, -5.0, 5.0), r = rng.vec(n), y(n), want(n);
  cpu::gelu_fwd(y.data(), x.data(), n);
  const double pi = std::acos(-1.0);
  for (int i = 0; i < n; i++)
    want[i] =
        0.5 * x[i] * (1 + std::tanh(std::sqrt(2 / pi) * (x[i] + 0.044715 * std::pow(x[i], 3))));
  M6_CHECK_ERR(max_norm_err(y, want), Tol::fwd_double);

  auto loss = [&] {
    std::vector<double> yy(n);
    cpu::gelu_fwd(yy.data(), x.data(), n);
    return dot(r, yy);
  };
  std::vector<double> dx(n, 123.0);  // overwritten
  cpu::gelu_bwd(dx.data(), x.data(), r.data(), n);
  M6_CHECK_ERR(max_norm_err(dx, fd_grad(x, loss)), Tol::fd_grad);
  std::vector<double> inplace = r;  // dx may alias dy
  cpu::gelu_bwd(inplace.data(), x.data(), inplace.data(), n);
  CHECK(inplace == dx);
}

namespace {

struct AttnShape {
  int B, T, H, d;
};
const AttnShape kAttnShapes[] = {{1, 1, 1, 7}, {2, 5, 3, 9}, {1, 6, 2, 8}};

// Naive causal attention: out[B,T,d], att[B,H,T,T].
void naive_attention(std::vector<double>& out, std::vector<double>& att,
                     const std::vector<double>& qkv, const AttnShape& s) {
  const int dh = s.d / s.H, row = 3 * s.d;
  out.assign(s.B * s.T * s.d, 0.0);
  att.assign(s.B * s.H * s.T * s.T, 0.0);
  for (int b = 0; b < s.B; b++)
    for (int h = 0; h < s.H; h++)
      for (int t = 0; t < s.T; t++) {
        std::vector<double> e(t + 1);
        double z = 0.0;
        for (int u = 0; u <= t; u++) {
          double sc = 0.0;
          for (int i = 0; i < dh; i++)
            sc +=
                qkv[(b * s.T + t) * row + h * dh + i] * qkv[(b * s.T + u) * row + s.d + h * dh + i];
          e[u] = std::exp(sc / std::sqrt(double(dh)));
          z += e[u];
        }
        for (int u = 0; u <= t; u++) {
          const double p = e[u] / z;
          att[((b * s.H + h) * s.T + t) * s.T + u] = p;
          for (int i = 0; i < dh; i++)
            out[(b * s.T + t) * s.d + h * dh + i] +=
                p * qkv[(b * s.T + u) * row + 2 * s.d + h * dh + i];
        }
      }
}

}  // namespace

TEST_CASE("attention forward matches naive softmax attention", "[backend_cpu][attention]") {
  Rng rng = Rng::for_test();
  for (const AttnShape& s : kAttnShapes) {
    INFO("B " << s.B << " T " << s.T << " H " << s.H << " d " << s.d);
    std::vector<double> qkv = rng.vec(s.B * s.T * 3 * s.d, -2.0, 2.0);
    std::vector<double> out(s.B * s.T * s.d), att(s.B * s.H * s.T * s.T, 5.0);
    cpu::attention_fwd(out.data(), att.data(), qkv.data(), s.B, s.T, s.H, s.d);
    std::vector<double> want_out, want_att;
    naive_attention(want_out, want_att, qkv, s);
    M6_CHECK_ERR(max_norm_err(out, want_out), Tol::fwd_double);
    M6_CHECK_ERR(max_norm_err(att, want_att), Tol::fwd_double);
    for (int row = 0; row < s.B * s.H * s.T; row++) {  // rows sum to 1, zero above diagonal
      const int t = row % s.T;
      double z = 0.0;
      for (int u = 0; u < s.T; u++) {
        z += att[row * s.T + u];
        if (u > t) CHECK(att[row * s.T + u] == 0.0);
      }
      CHECK(std::abs(z - 1.0) <= 1e-12);
    }
  }
}

TEST_CASE("attention is causal: a future token changes no earlier output",
          "[backend_cpu][attention]") {
  Rng rng = Rng::for_test();
  const int B = 2, T = 6, H = 2, d = 10;
  std::vector<double> qkv = rng.vec(B * T * 3 * d), out(B * T * d), att(B * H * T * T);
  cpu::attention_fwd(out.data(), att.data(), qkv.data(), B, T, H, d);
  for (int changed = 1; changed < T; changed++) {
    std::vector<double> qkv2 = qkv, out2(out.size()), att2(att.size());
    for (int j = 0; j < 3 * d; j++) qkv2[(1 * T + changed) * 3 * d + j] += 0.5;  // batch 1
    cpu::attention_fwd(out2.data(), att2.data(), qkv2.data(), B, T, H, d);
    for (int b = 0; b < B; b++)
      for (int t = 0; t < T; t++) {
        bool same = true;
        for (int j = 0; j < d; j++)
          same = same && out2[(b * T + t) * d + j] == out[(b * T + t) * d + j];
        INFO("changed token " << changed << ", output b " << b << " t " << t);
        CHECK(same == (b == 0 || t < changed));
      }
  }
}

TEST_CASE("attention backward matches finite differences", "[backend_cpu][attention][grad]") {
  Rng rng = Rng::for_test();
  for (const AttnShape& s : kAttnShapes) {
    INFO("B " << s.B << " T " << s.T << " H " << s.H << " d " << s.d);
    std::vector<double> qkv = rng.vec(s.B * s.T * 3 * s.d, -2.0, 2.0);
    std::vector<double> r = rng.vec(s.B * s.T * s.d);
    auto loss = [&] {
      std::vector<double> out(s.B * s.T * s.d), att(s.B * s.H * s.T * s.T);
      cpu::attention_fwd(out.data(), att.data(), qkv.data(), s.B, s.T, s.H, s.d);
      return dot(r, out);
    };
    std::vector<double> out(s.B * s.T * s.d), att(s.B * s.H * s.T * s.T);
    cpu::attention_fwd(out.data(), att.data(), qkv.data(), s.B, s.T, s.H, s.d);
    std::vector<double> dqkv(qkv.size(), 77.0), datt(att.size(), -9.0);  // garbage: overwritten
    cpu::attention_bwd(dqkv.data(), datt.data(), r.data(), qkv.data(), att.data(), s.B, s.T, s.H,
                       s.d);
    M6_CHECK_ERR(max_norm_err(dqkv, fd_grad(qkv, loss)), Tol::fd_grad);
  }
}

TEST_CASE("crossentropy forward is -log softmax, ignored targets give 0",
          "[backend_cpu][crossentropy]") {
  Rng rng = Rng::for_test();
  const int N = 4, V = 257;
  const std::vector<int32_t> targets = {3, -1, 256, 0};
  std::vector<double> logits = rng.vec(N * V, -3.0, 3.0), probs(N * V), loss(N, 9.0);
  cpu::crossentropy_fwd(loss.data(), probs.data(), logits.data(), targets.data(), N, V);
  std::vector<double> want_loss(N), want_probs(N * V);
  for (int i = 0; i < N; i++) {
    double z = 0.0;
    for (int j = 0; j < V; j++) z += std::exp(logits[i * V + j]);
    double rowsum = 0.0;
    for (int j = 0; j < V; j++) {
      want_probs[i * V + j] = std::exp(logits[i * V + j]) / z;
      rowsum += probs[i * V + j];
    }
    CHECK(std::abs(rowsum - 1.0) <= 1e-12);
    want_loss[i] = targets[i] < 0 ? 0.0 : -std::log(want_probs[i * V + targets[i]]);
  }
  CHECK(loss[1] == 0.0);
  M6_CHECK_ERR(max_norm_err(loss, want_loss), Tol::fwd_double);
  M6_CHECK_ERR(max_norm_err(probs, want_probs), Tol::fwd_double);

  std::vector<double> inplace = logits, loss2(N);  // probs may alias logits
  cpu::crossentropy_fwd(loss2.data(), inplace.data(), inplace.data(), targets.data(), N, V);
  CHECK(inplace == probs);
  CHECK(loss2 == loss);

  std::vector<double> big = {1000.0, 999.0}, pbig(2), lbig(1);  // no overflow
  const int32_t t0 = 0;
  cpu::crossentropy_fwd(lbig.data(), pbig.data(), big.data(), &t0, 1, 2);
  CHECK(std::abs(lbig[0] - std::log1p(std::exp(-1.0))) <= 1e-12);

  const int32_t bad = V;
  CHECK_THROWS_AS(cpu::crossentropy_fwd(lbig.data(), probs.data(), logits.data(), &bad, 1, V),
                  Error);
}

TEST_CASE("crossentropy backward matches finite differences, ignored rows get 0",
          "[backend_cpu][crossentropy][grad]") {
  Rng rng = Rng::for_test();
  const double dscale = 0.37;
  for (int N : {1, 4}) {
    const int V = 257;
    std::vector<int32_t> targets = {5, -1, 256, 0};
    targets.resize(N);
    std::vector<double> logits = rng.vec(N * V, -3.0, 3.0);
    auto loss = [&] {
      std::vector<double> l(N), p(N * V);
      cpu::crossentropy_fwd(l.data(), p.data(), logits.data(), targets.data(), N, V);
      double s = 0.0;
      for (double v : l) s += v;
      return dscale * s;
    };
    std::vector<double> l(N), probs(N * V), dlogits(N * V, 5.0);
    cpu::crossentropy_fwd(l.data(), probs.data(), logits.data(), targets.data(), N, V);
    cpu::crossentropy_bwd(dlogits.data(), probs.data(), targets.data(), dscale, N, V);
    M6_CHECK_ERR(max_norm_err(dlogits, fd_grad(logits, loss)), Tol::fd_grad);
    if (N > 1)
      for (int j = 0; j < V; j++) CHECK(dlogits[V + j] == 0.0);
    std::vector<double> inplace = probs;  // dlogits may alias probs
    cpu::crossentropy_bwd(inplace.data(), inplace.data(), targets.data(), dscale, N, V);
    CHECK(inplace == dlogits);
  }
}
