// Whole-model gradients against central finite differences, on tiny configs:
// dense, MoE top-1 / top-2 / top_k = E, prototypes, with and without dropping,
// and with shared layer sets. The model computes in fp32, so each tensor is
// checked by directional derivatives (along the analytic gradient and along a
// random direction) rather than element by element: the directional
// derivative is large enough to rise above fp32 rounding of the loss.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>

#include "core/model/model.h"
#include "tests/random_batch.h"

using namespace m6;

namespace {

// Tolerances for this file (one table): derivative along a unit direction
// must match to kRel of the tensor's gradient norm plus kAbs.
constexpr double kRel = 2e-2;
constexpr double kAbs = 3e-4;
constexpr float kSteps[] = {1e-2f, 3e-3f, 1e-3f};

Config tiny_config() {
  Config c;
  c.model.vocab_size = 29;
  c.model.max_seq_len = 7;
  c.model.d_model = 12;
  c.model.n_heads = 3;
  c.model.n_layers = 2;
  c.model.d_ff = 10;
  c.train.seq_len = 5;
  c.train.micro_batch = 2;
  c.train.global_batch = 2;
  c.train.threads = 1;
  c.train.seed = 7;
  // Large auxiliary coefficients so that their gradients are visible above
  // the tolerance (defaults 0.01 / 0.001 would hide a bug in them).
  c.model.moe.aux_loss_coef = 0.3;
  c.model.moe.z_loss_coef = 0.1;
  c.data.train = c.data.val = "unused";
  return c;
}

Batch make_batch(const Config& c, uint32_t seed) {
  Batch b = test::random_batch(c, seed);
  b.targets[3] = -1;  // an ignored position
  return b;
}

std::vector<std::vector<int64_t>> loads(const MicroStats& st) {
  std::vector<std::vector<int64_t>> l;
  for (const auto& m : st.moe) {
    l.push_back(m.load);
    l.push_back(m.demand);
  }
  return l;
}

// Checks every tensor of every chunk; returns the number of checks done.
int check_model(const Config& cfg) {
  auto be = make_cpu_backend(1);
  const int E = cfg.model.moe.every > 0 ? cfg.model.moe.experts : 0;
  Model model(cfg, *be, ExpertRange{0, E});
  model.init_params(cfg.train.seed);
  // Larger weights than the 0.02 init make every path matter numerically.
  for (auto& c : model.chunks()) {
    std::vector<float> p(c.numel);
    be->to_host(p.data(), c.param, c.numel * 4);
    std::mt19937 rng(11);
    std::normal_distribution<float> nd(0.0f, 0.3f);
    for (const auto& t : c.tensors)
      for (size_t i = 0; i < t.numel; ++i) p[t.offset + i] += nd(rng);
    be->to_device(c.param, p.data(), c.numel * 4);
  }
  const Batch batch = make_batch(cfg, 5);
  model.zero_grads();
  const MicroStats base = model.forward(batch, Phase::Train);
  model.backward(1.0f);
  const auto base_load = loads(base);

  int checks = 0;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  for (auto& c : model.chunks()) {
    std::vector<float> p(c.numel), g(c.numel);
    be->to_host(p.data(), c.param, c.numel * 4);
    be->to_host(g.data(), c.grad, c.numel * 4);
    for (const auto& t : c.tensors) {
      double gnorm = 0;
      for (size_t i = 0; i < t.numel; ++i) gnorm += double(g[t.offset + i]) * g[t.offset + i];
      gnorm = std::sqrt(gnorm);
      for (int dir = 0; dir < 2; ++dir) {
        std::vector<float> v(t.numel);
        double vn = 0;
        for (size_t i = 0; i < t.numel; ++i) {
          v[i] = dir == 0 && gnorm > 0 ? g[t.offset + i] : nd(rng);
          vn += double(v[i]) * v[i];
        }
        vn = std::sqrt(vn);
        double analytic = 0;
        for (size_t i = 0; i < t.numel; ++i) {
          v[i] = static_cast<float>(v[i] / vn);
          analytic += double(v[i]) * g[t.offset + i];
        }
        // Central difference along v; the step shrinks when routing (a
        // discrete choice) would change inside it. fp32 rounding of the loss
        // grows as 1/h, so the absolute tolerance scales with it.
        double fd = 0, h = 0;
        bool same_routing = false;
        for (float step : kSteps) {
          double lp = 0, lm = 0;
          same_routing = true;
          for (int sgn : {1, -1}) {
            std::vector<float> q = p;
            for (size_t i = 0; i < t.numel; ++i) q[t.offset + i] += sgn * step * v[i];
            be->to_device(c.param, q.data(), c.numel * 4);
            const MicroStats st = model.forward(batch, Phase::Train);
            same_routing = same_routing && loads(st) == base_load;
            (sgn > 0 ? lp : lm) = st.loss(cfg.model.moe);
          }
          be->to_device(c.param, p.data(), c.numel * 4);
          fd = (lp - lm) / (2.0 * step);
          h = step;
          if (same_routing) break;
        }
        INFO("routing changed under every step tried for " << t.name);
        REQUIRE(same_routing);
        INFO(t.name << " direction " << dir << ": analytic " << analytic << " fd " << fd
                    << " |g| " << gnorm << " h " << h);
        CHECK(std::abs(fd - analytic) <= kRel * gnorm + kAbs * (kSteps[0] / h));
        ++checks;
      }
    }
  }
  return checks;
}

}  // namespace

TEST_CASE("model gradients: dense", "[model][grad]") {
  Config c = tiny_config();
  CHECK(check_model(c) > 20);
}

TEST_CASE("model gradients: MoE top-1", "[model][grad]") {
  Config c = tiny_config();
  c.model.moe.every = 1;
  c.model.moe.experts = 3;
  c.model.moe.top_k = 1;
  c.model.moe.capacity_factor = 0;
  CHECK(check_model(c) > 20);
}

TEST_CASE("model gradients: MoE top-2 normalised, every other layer", "[model][grad]") {
  Config c = tiny_config();
  c.model.moe.every = 2;
  c.model.moe.experts = 4;
  c.model.moe.top_k = 2;
  c.model.moe.capacity_factor = 0;
  CHECK(check_model(c) > 20);
}

TEST_CASE("model gradients: MoE top_k = E, gates not normalised", "[model][grad]") {
  Config c = tiny_config();
  c.model.moe.every = 1;
  c.model.moe.experts = 3;
  c.model.moe.top_k = 3;
  c.model.moe.normalize_gates = GateNorm::Off;
  c.model.moe.capacity_factor = 0;
  CHECK(check_model(c) > 20);
}

TEST_CASE("model gradients: expert prototyping (2 groups of 2)", "[model][grad]") {
  Config c = tiny_config();
  c.model.moe.every = 1;
  c.model.moe.experts = 4;
  c.model.moe.router = RouterKind::Prototypes;
  c.model.moe.prototypes = 2;
  c.model.moe.capacity_factor = 0;
  CHECK(check_model(c) > 20);
}

TEST_CASE("model gradients: top-2 with capacity dropping", "[model][grad]") {
  Config c = tiny_config();
  c.model.moe.every = 1;
  c.model.moe.experts = 4;
  c.model.moe.top_k = 2;
  c.model.moe.capacity_factor = 0.5;  // C = ceil(0.5 * 10 * 2 / 4) = 3 < 20 slots / 4
  c.model.moe.min_capacity = 1;
  // The test is only meaningful if slots are really dropped.
  auto be = make_cpu_backend(1);
  Model m(c, *be, ExpertRange{0, 4});
  m.init_params(c.train.seed);
  const MicroStats st = m.forward(make_batch(c, 5), Phase::Train);
  int64_t dropped = 0;
  for (const auto& x : st.moe) dropped += x.dropped;
  REQUIRE(dropped > 0);
  CHECK(check_model(c) > 20);
}

TEST_CASE("model gradients: two logical layers sharing one set", "[model][grad]") {
  Config c = tiny_config();
  c.model.n_layers = 2;
  c.model.sharing.groups = 1;
  CHECK(check_model(c) > 10);
}
