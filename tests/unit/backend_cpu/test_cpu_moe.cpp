// MoE ops of the CPU reference, in double: router forward (group softmax,
// ties to the lower index, prototypes), slot-major capacity on hand-worked
// examples, the auxiliary losses by hand, and the backward of permute,
// unpermute and the router (gate, aux and z terms) against finite differences.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/backend/cpu/cpu_ops.h"
#include "tests/unit/backend_cpu/backend_test_util.h"

using namespace m6;
using namespace m6::test;

namespace {

struct Routed {
  std::vector<double> probs, lse, gate;
  std::vector<int32_t> expert;
};

Routed route(const std::vector<double>& logits, const RouterArgs& a) {
  const int S = a.groups * a.top_k;
  Routed r{std::vector<double>(a.n * a.e), std::vector<double>(a.n * a.groups),
           std::vector<double>(a.n * S), std::vector<int32_t>(a.n * S)};
  cpu::router_fwd(r.probs.data(), r.lse.data(), r.expert.data(), r.gate.data(), logits.data(), a);
  return r;
}

RouterArgs router_args(int n, int e, int groups, int top_k, bool normalize) {
  RouterArgs a;
  a.n = n;
  a.e = e;
  a.groups = groups;
  a.top_k = top_k;
  a.normalize = normalize;
  return a;
}

}  // namespace

TEST_CASE("router_fwd: group softmax, lse and top-k by probability", "[backend_cpu][router]") {
  Rng rng = Rng::for_test();
  for (RouterArgs a : {router_args(6, 7, 1, 2, false), router_args(5, 12, 3, 2, true),
                       router_args(1, 8, 2, 1, false)}) {
    const int Eg = a.e / a.groups, S = a.groups * a.top_k;
    std::vector<double> logits = rng.vec(a.n * a.e, -3.0, 3.0);
    Routed r = route(logits, a);
    for (int n = 0; n < a.n; n++) {
      double gate_sum = 0.0;
      for (int g = 0; g < a.groups; g++) {
        double z = 0.0, psum = 0.0;
        for (int e = g * Eg; e < (g + 1) * Eg; e++) z += std::exp(logits[n * a.e + e]);
        for (int e = g * Eg; e < (g + 1) * Eg; e++) {
          CHECK(std::abs(r.probs[n * a.e + e] - std::exp(logits[n * a.e + e]) / z) <= 1e-15);
          psum += r.probs[n * a.e + e];
        }
        CHECK(std::abs(psum - 1.0) <= 1e-12);
        CHECK(std::abs(r.lse[n * a.groups + g] - std::log(z)) <= 1e-12);
        // expected choice: indices of the group sorted by (prob desc, index asc)
        std::vector<int> idx(Eg);
        std::iota(idx.begin(), idx.end(), g * Eg);
        std::stable_sort(idx.begin(), idx.end(),
                         [&](int i, int j) { return r.probs[n * a.e + i] > r.probs[n * a.e + j]; });
        for (int k = 0; k < a.top_k; k++) {
          CHECK(r.expert[n * S + g * a.top_k + k] == idx[k]);
          gate_sum += r.gate[n * S + g * a.top_k + k];
        }
      }
      if (a.normalize) CHECK(std::abs(gate_sum - 1.0) <= 1e-12);
      if (!a.normalize)
        for (int s = 0; s < S; s++)
          CHECK(r.gate[n * S + s] == r.probs[n * a.e + r.expert[n * S + s]]);
    }
  }
}

TEST_CASE("router_fwd: ties go to the lower index, prototypes pick one expert per group",
          "[backend_cpu][router]") {
  const std::vector<double> tied = {1, 3, 3, 0, 3};
  CHECK(route(tied, router_args(1, 5, 1, 2, false)).expert == std::vector<int32_t>{1, 2});
  CHECK(route(tied, router_args(1, 5, 1, 3, false)).expert == std::vector<int32_t>{1, 2, 4});

  Routed all = route(std::vector<double>(4, 0.5), router_args(1, 4, 1, 4, true));  // top_k = E
  CHECK(all.expert == std::vector<int32_t>{0, 1, 2, 3});
  for (double g : all.gate) CHECK(std::abs(g - 0.25) <= 1e-15);

  const std::vector<double> proto = {5, 0, 0, 0, 0, 1};  // two groups of three
  Routed p = route(proto, router_args(1, 6, 2, 1, false));
  CHECK(p.expert == std::vector<int32_t>{0, 5});  // global ids
  CHECK(std::abs(p.gate[0] - std::exp(5.0) / (std::exp(5.0) + 2)) <= 1e-15);
  CHECK(std::abs(p.gate[1] - std::exp(1.0) / (std::exp(1.0) + 2)) <= 1e-15);

  std::vector<double> logits(6), probs(6), lse(2), gate(4);
  std::vector<int32_t> expert(4);
  RouterArgs bad = router_args(1, 6, 4, 1, false);  // 6 experts, 4 groups
  CHECK_THROWS_AS(
      cpu::router_fwd(probs.data(), lse.data(), expert.data(), gate.data(), logits.data(), bad),
      Error);
  bad = router_args(1, 6, 2, 4, false);  // top_k 4 > 3 experts per group
  CHECK_THROWS_AS(
      cpu::router_fwd(probs.data(), lse.data(), expert.data(), gate.data(), logits.data(), bad),
      Error);
}

TEST_CASE("moe_assign: slot-major capacity on a hand-worked example", "[backend_cpu][moe]") {
  // 4 tokens, 2 slots, 4 experts (expert 3 receives nothing).
  const std::vector<int32_t> expert = {0, 1,   // token 0
                                       0, 2,   // token 1
                                       1, 0,   // token 2
                                       0, 1};  // token 3
  std::vector<int32_t> pos(8, 99), count(4, 99), demand(4, 99);
  // Capacity 2. Slot 0: t0->e0 row 0, t1->e0 row 1, t2->e1 row 0, t3->e0 full.
  // Slot 1: t0->e1 row 1, t1->e2 row 0, t2->e0 full, t3->e1 full.
  cpu::moe_assign(pos.data(), count.data(), demand.data(), expert.data(), 4, 2, 4, 2);
  CHECK(pos == std::vector<int32_t>{0, 1, 1, 0, 0, -1, -1, -1});
  CHECK(count == std::vector<int32_t>{2, 2, 1, 0});
  CHECK(demand == std::vector<int32_t>{4, 3, 1, 0});
  // Capacity 0 (and negative): no drops. Slot 0: e0 rows 0,1,2 (t0,t1,t3), e1 row 0 (t2);
  // slot 1: t0->e1 row 1, t1->e2 row 0, t2->e0 row 3, t3->e1 row 2.
  for (int capacity : {0, -1}) {
    cpu::moe_assign(pos.data(), count.data(), demand.data(), expert.data(), 4, 2, 4, capacity);
    CHECK(pos == std::vector<int32_t>{0, 1, 1, 0, 0, 3, 2, 2});
    CHECK(count == std::vector<int32_t>{4, 3, 1, 0});
    CHECK(demand == std::vector<int32_t>{4, 3, 1, 0});
  }
  const std::vector<int32_t> out_of_range = {0, 4};
  CHECK_THROWS_AS(
      cpu::moe_assign(pos.data(), count.data(), demand.data(), out_of_range.data(), 1, 2, 4, 0),
      Error);
}

TEST_CASE("router_aux_fwd matches a hand computation", "[backend_cpu][router]") {
  // N=2, E=2, top-1, demand {2,0}: f = {1,0}, P = {0.55,0.45}, aux = 2*(1*0.55) = 1.1;
  // z = (1^2 + 2^2)/2 = 2.5
  const std::vector<double> probs = {0.7, 0.3, 0.4, 0.6}, lse = {1.0, 2.0};
  const std::vector<int32_t> demand = {2, 0};
  auto l =
      cpu::router_aux_fwd(probs.data(), lse.data(), demand.data(), router_args(2, 2, 1, 1, false));
  CHECK(std::abs(l.aux - 1.1) <= 1e-15);
  CHECK(l.z == 2.5);
  // Prototypes, N=1, 2 groups of 2: per group 2*0.75 and 2*0.5, averaged: 1.25; z = (1+9)/2
  const std::vector<double> p2 = {0.25, 0.75, 0.5, 0.5}, lse2 = {1.0, 3.0};
  const std::vector<int32_t> d2 = {0, 1, 1, 0};
  l = cpu::router_aux_fwd(p2.data(), lse2.data(), d2.data(), router_args(1, 4, 2, 1, false));
  CHECK(l.aux == 1.25);
  CHECK(l.z == 5.0);
  l = cpu::router_aux_fwd(p2.data(), lse2.data(), d2.data(), router_args(0, 4, 2, 1, false));
  CHECK(l.aux == 0.0);
  CHECK(l.z == 0.0);
}

namespace {

struct PermuteCase {
  int N, S, E, capacity;
  std::vector<int32_t> expert;
};

}  // namespace

TEST_CASE("moe_permute / moe_unpermute forward and backward", "[backend_cpu][moe][grad]") {
  Rng rng = Rng::for_test();
  const int d = 7;
  const PermuteCase cases[] = {
      {5, 2, 4, 2, {0, 1, 0, 2, 1, 0, 0, 1, 2, 0}},  // drops; expert 3 gets nothing
      {1, 2, 4, 0, {3, 1}},                          // one token
  };
  for (const PermuteCase& c : cases) {
    INFO("N " << c.N << " capacity " << c.capacity);
    const int NS = c.N * c.S;
    std::vector<int32_t> pos(NS), count(c.E), demand(c.E), offset(c.E);
    cpu::moe_assign(pos.data(), count.data(), demand.data(), c.expert.data(), c.N, c.S, c.E,
                    c.capacity);
    // padded blocks: expert e owns rows [e*cap, (e+1)*cap), some stay unused
    const int cap = c.capacity > 0 ? c.capacity : c.N * c.S;
    for (int e = 0; e < c.E; e++) offset[e] = e * cap;
    const int rows = c.E * cap;
    std::vector<char> used(rows, 0);
    int kept = 0;
    for (int i = 0; i < NS; i++)
      if (pos[i] >= 0) {
        used[offset[c.expert[i]] + pos[i]] = 1;
        kept++;
      }
    if (c.capacity > 0) CHECK(kept < NS);  // the case really drops

    // permute: kept rows are copies, unused rows untouched
    std::vector<double> x = rng.vec(c.N * d), xp(rows * d, 42.0);
    cpu::moe_permute(xp.data(), x.data(), c.expert.data(), pos.data(), offset.data(), c.N, c.S, d);
    for (int i = 0; i < NS; i++)
      for (int j = 0; j < d; j++)
        if (pos[i] >= 0) CHECK(xp[(offset[c.expert[i]] + pos[i]) * d + j] == x[(i / c.S) * d + j]);
    for (int row = 0; row < rows; row++)
      if (!used[row])
        for (int j = 0; j < d; j++) CHECK(xp[row * d + j] == 42.0);

    const std::vector<double> rp = rng.vec(rows * d);
    auto loss_p = [&] {
      std::vector<double> out(rows * d, 0.0);
      cpu::moe_permute(out.data(), x.data(), c.expert.data(), pos.data(), offset.data(), c.N, c.S,
                       d);
      return dot(rp, out);
    };
    const std::vector<double> prev = rng.vec(c.N * d);
    std::vector<double> dx = prev;  // accumulates
    cpu::moe_permute_bwd(dx.data(), rp.data(), c.expert.data(), pos.data(), offset.data(), c.N, c.S,
                         d);
    for (size_t i = 0; i < dx.size(); i++) dx[i] -= prev[i];
    M6_CHECK_ERR(max_norm_err(dx, fd_grad(x, loss_p)), Tol::fd_grad);

    // unpermute: y = y0 + sum_kept gate * yp
    std::vector<double> yp = rng.vec(rows * d), gate = rng.vec(NS, 0.1, 1.0);
    const std::vector<double> y0 = rng.vec(c.N * d), ry = rng.vec(c.N * d);
    auto loss_u = [&] {
      std::vector<double> y = y0;
      cpu::moe_unpermute(y.data(), yp.data(), gate.data(), c.expert.data(), pos.data(),
                         offset.data(), c.N, c.S, d);
      return dot(ry, y);
    };
    std::vector<double> dyp(rows * d, 0.0), dgate(NS, 5.0);
    cpu::moe_unpermute_bwd(dyp.data(), dgate.data(), ry.data(), yp.data(), gate.data(),
                           c.expert.data(), pos.data(), offset.data(), c.N, c.S, d);
    M6_CHECK_ERR(max_norm_err(dyp, fd_grad(yp, loss_u)), Tol::fd_grad);
    M6_CHECK_ERR(max_norm_err(dgate, fd_grad(gate, loss_u)), Tol::fd_grad);
    for (int i = 0; i < NS; i++)
      if (pos[i] < 0) CHECK(dgate[i] == 0.0);
    std::vector<double> dyp7(rows * d, 7.0);  // rows of no kept slot stay untouched
    cpu::moe_unpermute_bwd(dyp7.data(), dgate.data(), ry.data(), yp.data(), gate.data(),
                           c.expert.data(), pos.data(), offset.data(), c.N, c.S, d);
    for (int row = 0; row < rows; row++)
      if (!used[row])
        for (int j = 0; j < d; j++) CHECK(dyp7[row * d + j] == 7.0);
  }
}

// L(logits) = sum dgate*gate + aux_coef*aux + z_coef*z with the expert choice and
// demand of the unperturbed logits held fixed (as router_bwd documents).
TEST_CASE("router_bwd matches finite differences (gate, aux and z terms)",
          "[backend_cpu][router][grad]") {
  Rng rng = Rng::for_test();
  const RouterArgs cases[] = {
      router_args(6, 7, 1, 2, false),                                  // top-k, not normalised
      router_args(1, 7, 1, 1, false),                                  // one token, top-1
      router_args(6, 7, 1, 2, true),                                   // top-2, normalised
      router_args(6, 5, 1, 5, true),                                   // top_k = E, normalised
      router_args(1, 5, 1, 5, true),  router_args(6, 8, 2, 1, false),  // prototypes, 2 groups
      router_args(5, 12, 3, 2, true),                                  // 3 groups of top-2
  };
  enum Term { kGate, kAux, kZ, kAll };
  for (const RouterArgs& a : cases) {
    const int S = a.groups * a.top_k;
    std::vector<double> logits = rng.vec(a.n * a.e, -2.0, 2.0);
    const Routed base = route(logits, a);
    std::vector<int32_t> pos(a.n * S), count(a.e), demand(a.e);
    cpu::moe_assign(pos.data(), count.data(), demand.data(), base.expert.data(), a.n, S, a.e, 0);
    const std::vector<double> rg = rng.vec(a.n * S);
    for (Term term : {kGate, kAux, kZ, kAll}) {
      INFO("n " << a.n << " e " << a.e << " groups " << a.groups << " top_k " << a.top_k
                << " normalize " << a.normalize << " term " << term);
      const bool use_gate = term == kGate || term == kAll;
      const double aux_coef = (term == kAux || term == kAll) ? 0.7 : 0.0;
      const double z_coef = (term == kZ || term == kAll) ? 0.3 : 0.0;
      bool choice_changed = false;
      auto loss = [&] {
        Routed r = route(logits, a);
        choice_changed = choice_changed || r.expert != base.expert;
        const auto l = cpu::router_aux_fwd(r.probs.data(), r.lse.data(), demand.data(), a);
        return (use_gate ? dot(rg, r.gate) : 0.0) + aux_coef * l.aux + z_coef * l.z;
      };
      std::vector<double> dlogits(a.n * a.e, 3.0);  // overwritten
      cpu::router_bwd(dlogits.data(), use_gate ? rg.data() : nullptr, base.probs.data(),
                      base.lse.data(), base.expert.data(), base.gate.data(), demand.data(),
                      aux_coef, z_coef, a);
      const std::vector<double> fd = fd_grad(logits, loss);
      REQUIRE_FALSE(choice_changed);
      if (term == kAux && a.top_k == a.e / a.groups) {
        // every expert is chosen by every token: aux = sum_e P_e = 1 is constant,
        // so both gradients are zero up to rounding (a normalised error is meaningless)
        for (size_t i = 0; i < fd.size(); i++) {
          CHECK(std::abs(dlogits[i]) <= 1e-15);
          CHECK(std::abs(fd[i]) <= 1e-8);
        }
        continue;
      }
      M6_CHECK_ERR(max_norm_err(dlogits, fd), Tol::fd_grad);
    }
  }
}
