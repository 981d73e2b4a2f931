// Mixed precision (precision.compute: bf16|fp16) op by op: each op run the
// way the model runs it in half precision -- inputs that are stored in half
// rounded, the op in fp32, its stored output rounded -- against the same op
// in double on the unrounded inputs. The bound is derived per element, not
// tuned: u |y| for rounding the output, plus u times the op's first-order
// sensitivity to rounding each stored input (|a||b| terms of a GEMM, |gelu'|
// |x| for GELU, the LayerNorm and softmax Jacobians bounded in absolute
// value), plus the fp32 tolerance of the table; u = 2^-8 (bf16), 2^-11
// (fp16). Each case also checks that rounding really happened (the error
// exceeds the fp32 level) and that every stored output is a half value.
#include <cmath>
#include <vector>

#include "core/backend/backend.h"
#include "core/backend/cpu/cpu_ops.h"
#include "tests/unit/backend_cpu/backend_test_util.h"

using namespace m6;
using namespace m6::test;

namespace {

struct Case {
  HalfType t;
  double u;
  const char* name;
};
const Case kCases[] = {{HalfType::BF16, 0x1.0p-8, "bf16"}, {HalfType::F16, 0x1.0p-11, "fp16"}};

// An error this large (relative to the output's scale) cannot come from fp32
// arithmetic (~1e-7): the half rounding really happened.
constexpr double kVisible = 1e-5;

std::vector<float> to_f(const std::vector<double>& v) { return {v.begin(), v.end()}; }
std::vector<float> rounded(const std::vector<double>& v, HalfType t) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); i++) f[i] = round_half(static_cast<float>(v[i]), t);
  return f;
}

// The backend's round_half on a host vector (through device memory).
void round_on(Backend& be, std::vector<float>& x, HalfType t) {
  float* p = static_cast<float*>(be.alloc(x.size() * sizeof(float) + 4));
  be.to_device(p, x.data(), x.size() * sizeof(float));
  be.round_half(p, x.size(), t);
  be.to_host(x.data(), p, x.size() * sizeof(float));
  be.release(p);
}

// Checks |got - want| <= u|want| + u*sens + fp32 slack element-wise; the
// first-order bound gets 2% for second-order terms. Returns the largest
// error relative to the largest |want| (to show that rounding happened).
double check_bound(const std::vector<float>& got, const std::vector<double>& want,
                   const std::vector<double>& sens, double u, HalfType t, bool output_rounded) {
  REQUIRE(got.size() == want.size());
  double scale = 0, worst = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  int bad = 0, not_half = 0;
  for (size_t i = 0; i < got.size(); i++) {
    const double err = std::abs(static_cast<double>(got[i]) - want[i]);
    const double bound =
        1.02 * ((output_rounded ? u * std::abs(want[i]) : 0.0) + u * sens[i]) +
        Tol::float_vs_double * scale;
    if (!(err <= bound) && bad++ < 3)
      FAIL_CHECK("element " << i << ": got " << got[i] << " want " << want[i] << " err " << err
                            << " bound " << bound);
    if (output_rounded && round_half(got[i], t) != got[i]) ++not_half;
    worst = std::max(worst, err);
  }
  CHECK(bad == 0);
  CHECK(not_half == 0);
  return scale > 0 ? worst / scale : 0.0;
}

}  // namespace

TEST_CASE("round_half on the backend: bit-exact RNE with NaN, Inf and subnormals",
          "[backend_cpu][half]") {
  auto be = make_cpu_backend(2);
  Rng rng = Rng::for_test();
  std::vector<float> x;
  for (int i = 0; i < 100000; i++) {
    const uint32_t bits = static_cast<uint32_t>(rng.next());
    x.push_back(half_float_of(bits));
  }
  const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 65504.0f, 65520.0f, 65519.99f,
                            0x1.0p-24f, 0x1.0p-25f, 0x1.8p-25f, 0x1.0p-14f, 0x1.ffcp-15f,
                            1.0f + 0x1.0p-8f, 1.0f + 0x1.8p-8f, 3.0e38f, 1e-40f};
  x.insert(x.end(), std::begin(specials), std::end(specials));
  for (HalfType t : {HalfType::BF16, HalfType::F16}) {
    std::vector<float> y = x;
    round_on(*be, y, t);
    int wrong = 0;
    for (size_t i = 0; i < x.size(); i++) {
      const uint16_t h = t == HalfType::BF16 ? f32_to_bf16(x[i]) : f32_to_f16(x[i]);
      const float want = t == HalfType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
      if (std::isnan(want)) {
        wrong += !std::isnan(y[i]);
      } else {
        wrong += half_bits_of(y[i]) != half_bits_of(want);  // sign of zero included
      }
    }
    CHECK(wrong == 0);
  }
  // Named values: fp16 overflow and underflow, bf16 ties to even.
  std::vector<float> v = {65520.0f, 65519.0f, 0x1.0p-25f, 0x1.8p-25f};
  round_on(*be, v, HalfType::F16);
  CHECK(std::isinf(v[0]));
  CHECK(v[1] == 65504.0f);
  CHECK(v[2] == 0.0f);
  CHECK(v[3] == 0x1.0p-24f);
  std::vector<float> w = {1.0f + 0x1.0p-8f, 1.0f + 0x1.8p-7f, 3.4e38f};
  round_on(*be, w, HalfType::BF16);
  CHECK(w[0] == 1.0f);
  CHECK(w[1] == 1.0f + 0x1.0p-6f);
  CHECK(std::isinf(w[2]));
}

TEST_CASE("half ops: gemm and bias (linear) within the rounding bound", "[backend_cpu][half]") {
  auto be = make_cpu_backend(2);
  Rng rng = Rng::for_test();
  const int n = 37, in = 65, out = 29;  // awkward sizes
  const auto x = rng.vec(static_cast<size_t>(n) * in), w = rng.vec(static_cast<size_t>(out) * in);
  const auto b = rng.vec(out);
  // reference y = x W^T + b in double; sensitivity 2 sum |x||w| + |b| (both
  // GEMM factors and the bias are stored rounded).
  std::vector<double> want(static_cast<size_t>(n) * out), sens(want.size());
  for (int i = 0; i < n; i++)
    for (int o = 0; o < out; o++) {
      double s = b[o], a = std::abs(b[o]);
      for (int k = 0; k < in; k++) {
        s += x[i * in + k] * w[o * in + k];
        a += 2 * std::abs(x[i * in + k] * w[o * in + k]);
      }
      want[i * out + o] = s;
      sens[i * out + o] = a;
    }
  for (const Case& c : kCases) {
    INFO(c.name);
    auto xh = rounded(x, c.t), wh = rounded(w, c.t), bh = rounded(b, c.t);
    std::vector<float> y(want.size());
    GemmArgs g;
    g.trans_b = Trans::Yes;
    g.m = n, g.n = out, g.k = in;
    g.a = xh.data(), g.lda = in, g.b = wh.data(), g.ldb = in, g.c = y.data(), g.ldc = out;
    be->gemm(g);
    be->add_bias(y.data(), bh.data(), n, out);
    round_on(*be, y, c.t);
    const double rel = check_bound(y, want, sens, c.u, c.t, true);
    CHECK(rel > kVisible);  // the half rounding is visible
  }
}

TEST_CASE("half ops: residual add, embedding and gelu within the rounding bound",
          "[backend_cpu][half]") {
  auto be = make_cpu_backend(2);
  Rng rng = Rng::for_test();
  const size_t n = 3001;
  const auto a = rng.vec(n, -3, 3), b = rng.vec(n, -3, 3);
  for (const Case& c : kCases) {
    INFO(c.name);
    // add: both inputs stored rounded
    std::vector<double> want(n), sens(n);
    for (size_t i = 0; i < n; i++) want[i] = a[i] + b[i], sens[i] = std::abs(a[i]) + std::abs(b[i]);
    auto ah = rounded(a, c.t), bh = rounded(b, c.t);
    std::vector<float> y(n);
    be->add(y.data(), ah.data(), bh.data(), n);
    round_on(*be, y, c.t);
    CHECK(check_bound(y, want, sens, c.u, c.t, true) > kVisible);
    // gelu: |gelu'(x)| <= 1.13 everywhere
    for (size_t i = 0; i < n; i++) {
      const double x = a[i];
      want[i] = 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
      sens[i] = 1.13 * std::abs(x);
    }
    be->gelu_fwd(y.data(), ah.data(), n);
    round_on(*be, y, c.t);
    CHECK(check_bound(y, want, sens, c.u, c.t, true) > kVisible);
  }
  // embedding: rows of rounded tables summed, output rounded
  const int B = 2, T = 5, d = 33, V = 11;
  const auto wte = rng.vec(static_cast<size_t>(V) * d), wpe = rng.vec(static_cast<size_t>(T) * d);
  std::vector<int32_t> tok(B * T);
  for (auto& t : tok) t = rng.below(V);
  for (const Case& c : kCases) {
    INFO(c.name);
    std::vector<double> want(static_cast<size_t>(B) * T * d), sens(want.size());
    for (int bt = 0; bt < B * T; bt++)
      for (int j = 0; j < d; j++) {
        const double e = wte[tok[bt] * d + j], p = wpe[(bt % T) * d + j];
        want[bt * d + j] = e + p;
        sens[bt * d + j] = std::abs(e) + std::abs(p);
      }
    auto eh = rounded(wte, c.t), ph = rounded(wpe, c.t);
    std::vector<float> y(want.size());
    be->embedding_fwd(y.data(), tok.data(), eh.data(), ph.data(), B, T, d);
    round_on(*be, y, c.t);
    CHECK(check_bound(y, want, sens, c.u, c.t, true) > kVisible);
  }
}

TEST_CASE("half ops: layernorm (fp32 inside) within the rounding bound", "[backend_cpu][half]") {
  auto be = make_cpu_backend(2);
  Rng rng = Rng::for_test();
  const int N = 9, d = 67;
  auto x = rng.vec(static_cast<size_t>(N) * d, -2, 2);
  for (int j = 0; j < d; j++) x[j] += 3.0;  // a row with a large mean
  const auto w = rng.vec(d, 0.5, 1.5), b = rng.vec(d);
  std::vector<double> want(x.size()), sens(x.size()), mean(N), rstd(N);
  cpu::layernorm_fwd(want.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, d);
  // LN weights stay fp32; x is stored rounded: |dx_j| <= u|x_j|, and
  // |d xhat_i| <= rstd (|dx_i| + mean|dx| + |xhat_i| mean(|xhat||dx|)).
  for (int i = 0; i < N; i++) {
    double mabs = 0, mxx = 0;
    for (int j = 0; j < d; j++) {
      const double xv = x[i * d + j], xhat = (xv - mean[i]) * rstd[i];
      mabs += std::abs(xv) / d;
      mxx += std::abs(xhat * xv) / d;
    }
    for (int j = 0; j < d; j++) {
      const double xv = x[i * d + j], xhat = (xv - mean[i]) * rstd[i];
      sens[i * d + j] = std::abs(w[j]) * rstd[i] * (std::abs(xv) + mabs + std::abs(xhat) * mxx);
    }
  }
  for (const Case& c : kCases) {
    INFO(c.name);
    auto xh = rounded(x, c.t);
    auto wf = to_f(w), bf = to_f(b);
    std::vector<float> y(x.size()), mu(N), rs(N);
    be->layernorm_fwd(y.data(), mu.data(), rs.data(), xh.data(), wf.data(), bf.data(), N, d);
    round_on(*be, y, c.t);
    CHECK(check_bound(y, want, sens, c.u, c.t, true) > kVisible);
  }
}

TEST_CASE("half ops: attention (softmax in fp32) within the rounding bound",
          "[backend_cpu][half]") {
  auto be = make_cpu_backend(2);
  Rng rng = Rng::for_test();
  const int B = 2, T = 7, H = 3, d = 24, dh = d / H;
  const auto qkv = rng.vec(static_cast<size_t>(B) * T * 3 * d, -2, 2);
  std::vector<double> want(static_cast<size_t>(B) * T * d), att(static_cast<size_t>(B) * H * T * T);
  cpu::attention_fwd(want.data(), att.data(), qkv.data(), B, T, H, d);
  // score s_j = scale q.k_j: |ds_j| <= u sig_j, sig_j = 2 scale sum|q||k_j|;
  // softmax: |dp_j| <= p_j (|ds_j| + sum_k p_k |ds_k|); out_c = sum_j p_j v_jc
  // with v rounded: |dout_c| <= sum_j (|dp_j| + u p_j) |v_jc|.
  std::vector<double> sens(want.size(), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  auto at = [&](int b, int t, int part, int c) { return qkv[((b * T + t) * 3 + part) * d + c]; };
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++)
      for (int t = 0; t < T; t++) {
        const double* p = &att[((b * H + h) * T + t) * T];
        std::vector<double> sig(t + 1);
        double psig = 0;
        for (int j = 0; j <= t; j++) {
          double s = 0;
          for (int c = 0; c < dh; c++) s += std::abs(at(b, t, 0, h * dh + c) * at(b, j, 1, h * dh + c));
          sig[j] = 2 * scale * s;
          psig += p[j] * sig[j];
        }
        for (int c = 0; c < dh; c++) {
          double s = 0;
          for (int j = 0; j <= t; j++)
            s += (p[j] * (sig[j] + psig) + p[j]) * std::abs(at(b, j, 2, h * dh + c));
          sens[(b * T + t) * d + h * dh + c] = s;
        }
      }
  for (const Case& c : kCases) {
    INFO(c.name);
    auto qh = rounded(qkv, c.t);
    std::vector<float> y(want.size()), a(att.size());
    be->attention_fwd(y.data(), a.data(), qh.data(), B, T, H, d);
    round_on(*be, y, c.t);
    CHECK(check_bound(y, want, sens, c.u, c.t, true) > kVisible);
  }
}

TEST_CASE("half ops: crossentropy on rounded logits, loss and probs fp32", "[backend_cpu][half]") {
  auto be = make_cpu_backend(2);
  Rng rng = Rng::for_test();
  const int N = 6, V = 50;
  const auto z = rng.vec(static_cast<size_t>(N) * V, -4, 4);
  std::vector<int32_t> tgt = {0, 7, 49, -1, 3, 20};
  std::vector<double> loss(N), probs(z.size());
  cpu::crossentropy_fwd(loss.data(), probs.data(), z.data(), tgt.data(), N, V);
  // Only the logits are rounded: |dloss| <= u (|z_t| + sum_k p_k |z_k|);
  // |dp_j| <= p_j u (|z_j| + sum_k p_k |z_k|). Neither output is rounded.
  std::vector<double> sl(N), sp(z.size());
  for (int i = 0; i < N; i++) {
    double pz = 0;
    for (int k = 0; k < V; k++) pz += probs[i * V + k] * std::abs(z[i * V + k]);
    sl[i] = tgt[i] < 0 ? 0.0 : std::abs(z[i * V + tgt[i]]) + pz;
    for (int k = 0; k < V; k++) sp[i * V + k] = probs[i * V + k] * (std::abs(z[i * V + k]) + pz);
  }
  for (const Case& c : kCases) {
    INFO(c.name);
    auto zh = rounded(z, c.t);
    std::vector<float> l(N), p(z.size());
    be->crossentropy_fwd(l.data(), p.data(), zh.data(), tgt.data(), N, V);
    check_bound(l, loss, sl, c.u, c.t, false);
    check_bound(p, probs, sp, c.u, c.t, false);
    // backward: dlogits from fp32 probs, stored rounded
    std::vector<double> dz(z.size()), zero(z.size(), 0.0);
    cpu::crossentropy_bwd(dz.data(), probs.data(), tgt.data(), 0.25, N, V);
    std::vector<double> sd(z.size());
    for (size_t k = 0; k < z.size(); k++) sd[k] = 0.25 * sp[k];
    std::vector<float> g(z.size());
    be->crossentropy_bwd(g.data(), p.data(), tgt.data(), 0.25f, N, V);
    round_on(*be, g, c.t);
    check_bound(g, dz, sd, c.u, c.t, true);
  }
}

TEST_CASE("half ops: MoE combine of rounded expert rows with fp32 gates", "[backend_cpu][half]") {
  auto be = make_cpu_backend(2);
  Rng rng = Rng::for_test();
  const int N = 5, S = 2, E = 3, d = 17;
  // token n -> experts (n % E, (n+1) % E), every slot kept, rows packed per expert
  std::vector<int32_t> expert(N * S), pos(N * S), offset(E), count(E, 0);
  for (int s = 0; s < S; s++)
    for (int n = 0; n < N; n++) {
      const int e = (n + s) % E;
      expert[n * S + s] = e;
      pos[n * S + s] = count[e]++;
    }
  for (int e = 1; e < E; e++) offset[e] = offset[e - 1] + count[e - 1];
  const auto yp = rng.vec(static_cast<size_t>(N) * S * d, -3, 3);
  const auto gate = rng.vec(static_cast<size_t>(N) * S, 0, 1);
  std::vector<double> want(static_cast<size_t>(N) * d, 0.0), sens(want.size(), 0.0);
  for (int n = 0; n < N; n++)
    for (int s = 0; s < S; s++) {
      const int row = offset[expert[n * S + s]] + pos[n * S + s];
      for (int j = 0; j < d; j++) {
        want[n * d + j] += gate[n * S + s] * yp[row * d + j];
        sens[n * d + j] += std::abs(gate[n * S + s] * yp[row * d + j]);
      }
    }
  for (const Case& c : kCases) {
    INFO(c.name);
    auto yh = rounded(yp, c.t);
    auto gf = to_f(gate);
    std::vector<float> y(want.size(), 0.0f);
    be->moe_unpermute(y.data(), yh.data(), gf.data(), expert.data(), pos.data(), offset.data(), N,
                      S, d);
    round_on(*be, y, c.t);
    CHECK(check_bound(y, want, sens, c.u, c.t, true) > kVisible);
  }
}
