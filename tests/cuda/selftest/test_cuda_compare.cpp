// Host-only self-test of the half-precision comparison of the CUDA op tests
// (tests/cuda/cuda_test_util.h, "Half precision"), so that the logic a GPU
// run relies on is tested in CI without a GPU. Two CpuBackends stand in for
// the CPU reference and the GPU, in bf16 and in fp16 mode: a few ops
// (GEMM, LayerNorm, GELU) go through Twin::check_f, and a difference is
// injected into the "GPU" side's rounded output before the comparison:
//   none, or 1 ulp on every element              -> every check passes
//   4 ulps on every element, or on the largest   -> every check fails
//   the "GPU" side's output left unrounded       -> every check fails
// and the bound itself over a sweep of values: one ulp always within
// half_limit, four ulps never (for values not near zero).
//
// Exit 0 when every expectation holds, 1 otherwise.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "tests/cuda/cuda_test_util.h"

using namespace m6;
using namespace m6::cuda_test;

namespace {

int g_bad = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) ++g_bad;
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
}

// The ops whose rounded outputs are compared (inputs through Twin::f/f32).
void run_ops(Backend& c, Backend& g) {
  Twin t{c, g};
  {
    const int m = 33, n = 40, k = 259;
    auto A = t.f(randn(static_cast<size_t>(m) * k)), B = t.f(randn(static_cast<size_t>(k) * n));
    auto C = t.zeros_f(static_cast<size_t>(m) * n);
    GemmArgs a;
    a.m = m, a.n = n, a.k = k;
    a.a = A.fc(), a.b = B.fc(), a.c = C.fc();
    c.gemm(a);
    a.a = A.fg(), a.b = B.fg(), a.c = C.fg();
    g.gemm(a);
    t.check_f("gemm NN m33 n40 k259", C, kGemm);
  }
  {
    const int N = 17, d = 259;
    const size_t nd = static_cast<size_t>(N) * d;
    auto x = t.f(randn(nd, 2.0f)), w = t.f32(randn(d)), b = t.f32(randn(d)), y = t.zeros_f(nd);
    auto mean = t.zeros_f(N), rstd = t.zeros_f(N);
    c.layernorm_fwd(y.fc(), mean.fc(), rstd.fc(), x.fc(), w.fc(), b.fc(), N, d);
    g.layernorm_fwd(y.fg(), mean.fg(), rstd.fg(), x.fg(), w.fg(), b.fg(), N, d);
    t.check_f("layernorm_fwd y", y, kReduce);
  }
  {
    const size_t n = 1031;
    auto x = t.f(randn(n, 3.0f)), y = t.zeros_f(n);
    c.gelu_fwd(y.fc(), x.fc(), n);
    g.gelu_fwd(y.fg(), x.fg(), n);
    t.check_f("gelu_fwd", y, kElem);
  }
}

// Runs the ops under `inj`; returns {failed checks, checks}.
std::pair<int, int> run_case(Backend& c, Backend& g, const Inject& inj) {
  g_failures = g_checks = 0;
  g_inject = inj;
  g_rng.seed(99);
  run_ops(c, g);
  g_inject = {};
  return {g_failures, g_checks};
}

void test_mode(Backend& c, Backend& g, HalfType h) {
  g_half = h;
  const std::string m = std::string(" (") + half_name(h) + ")";
  struct Case {
    const char* name;
    Inject inj;
    bool pass;
  };
  const Case cases[] = {
      {"no difference passes", {}, true},
      {"1 ulp on every element passes", {1, false, false}, true},
      {"4 ulps on every element fail", {4, false, false}, false},
      {"4 ulps on the largest element fail", {4, true, false}, false},
      {"an unrounded GPU output fails", {0, false, true}, false},
  };
  for (const Case& k : cases) {
    const auto [failed, checks] = run_case(c, g, k.inj);
    char what[160];
    std::snprintf(what, sizeof what, "%s%s: %d of %d checks failed", k.name, m.c_str(), failed,
                  checks);
    expect(checks == 3 && failed == (k.pass ? 0 : checks), what);
  }

  // The bound over a sweep of half values from 2^-10 to 2^10 (every 7th
  // bit pattern of the half format's normal range; both signs), for each
  // tolerance kind: one ulp within, four ulps outside.
  size_t n = 0, one_out = 0, four_in = 0;
  for (float base = std::ldexp(1.0f, -10); base < 1024.0f; base *= 1.37f) {
    for (int j = 0; j < 64; j += 7) {
      for (float sgn : {1.0f, -1.0f}) {
        const float w = half_step(round_half(sgn * base, h), j, h);
        for (TolKind kind : {kExact, kElem, kReduce}) {
          ++n;
          const double lim = half_limit(kTol[kind], h, w);
          one_out += !(std::fabs(half_step(w, 1, h) - static_cast<double>(w)) <= lim);
          four_in += std::fabs(half_step(w, 4, h) - static_cast<double>(w)) <= lim;
        }
      }
    }
  }
  expect(n > 1000 && one_out == 0, "half_limit admits one ulp" + m + ": " +
                                       std::to_string(one_out) + " of " + std::to_string(n) +
                                       " outside");
  expect(four_in == 0, "half_limit rejects four ulps" + m + ": " + std::to_string(four_in) +
                           " of " + std::to_string(n) + " inside");
  g_half.reset();
}

}  // namespace

int main() {
  try {
    auto cpu = make_cpu_backend(2), other = make_cpu_backend(1);
    for (HalfType h : {HalfType::BF16, HalfType::F16}) test_mode(*cpu, *other, h);
    // fp32 mode: the same ops compared unrounded, no half tolerance.
    const auto [failed, checks] = run_case(*cpu, *other, {});
    expect(checks == 3 && failed == 0, "fp32 mode: " + std::to_string(failed) + " of " +
                                           std::to_string(checks) + " checks failed");
  } catch (const std::exception& e) {
    std::printf("FAIL exception: %s\n", e.what());
    return 1;
  }
  std::printf("%s\n", g_bad == 0 ? "all expectations hold" : "some expectations failed");
  return g_bad == 0 ? 0 : 1;
}
