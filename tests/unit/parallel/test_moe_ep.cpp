// Expert parallelism at the layer level (hidden [.mpi]; run under mpirun by
// tests/cli/mpi_unit.sh): an MoE layer whose experts are spread over the
// ranks of the world (ep = W) must give every rank the output, input
// gradient and router gradient that the same layer with all experts local
// gives on that rank's tokens, and each expert's gradient must equal the sum
// over ranks of the local gradients. Awkward cases: a rank with a single
// token, an expert no token chooses, capacity that drops, dropless, k top-1.
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "core/model/moe.h"
#include "core/model/params.h"
#include "mpi_world.h"

using namespace m6;

namespace {

struct Chunks {
  std::vector<Chunk> chunks;
  Backend& be;
  Chunks(Backend& b, const ModelConfig& m, ExpertRange r, uint64_t seed) : be(b) {
    chunks = plan_chunks(m, r);
    for (auto& c : chunks) {
      c.param = static_cast<float*>(be.alloc(c.numel * sizeof(float)));
      c.grad = static_cast<float*>(be.alloc(c.numel * sizeof(float)));
      std::vector<float> h(c.numel);
      init_chunk_host(c, seed, h.data());
      if (c.kind == ChunkKind::Layer) {
        // Feature 0 of every token is 1 (below); expert 3 gets -40 on it, so no token chooses it.
        float* w = h.data() + c.tensor("router.weight").offset;
        w[3 * m.d_model + 0] = -40.0f;
        for (int e = 0; e < 3; ++e) w[e * m.d_model + 0] = 0.0f;
      }
      be.to_device(c.param, h.data(), c.numel * sizeof(float));
    }
  }
  ~Chunks() {
    for (auto& c : chunks) be.release(c.param), be.release(c.grad);
  }
  const Chunk& router() const {
    for (const auto& c : chunks)
      if (c.kind == ChunkKind::Layer) return c;
    throw Error("no layer chunk");
  }
  std::vector<const Chunk*> experts() const {
    std::vector<const Chunk*> v;
    for (const auto& c : chunks)
      if (c.kind == ChunkKind::Expert) v.push_back(&c);
    return v;
  }
  const Chunk* expert(int e) const {
    for (const auto& c : chunks)
      if (c.kind == ChunkKind::Expert && c.expert == e) return &c;
    return nullptr;
  }
};

std::vector<float> host(Backend& be, const float* p, size_t n) {
  std::vector<float> h(n);
  be.to_host(h.data(), p, n * sizeof(float));
  return h;
}

// Largest |a-b| / (max|a| + 1e-6) over the buffer.
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double mx = 0, d = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    mx = std::max(mx, std::fabs(static_cast<double>(a[i])));
    d = std::max(d, std::fabs(static_cast<double>(a[i]) - b[i]));
  }
  return d / (mx + 1e-6);
}

void check_layer(const ModelConfig& m) {
  Comm& world = test::mpi_world();
  REQUIRE(world.size() >= 2);
  const int P = world.size(), r = world.rank(), E = m.moe.experts, d = m.d_model;
  REQUIRE(E % P == 0);
  auto be = make_cpu_backend(1);
  const int n = r == 1 ? 1 : 6;  // rank 1 brings a single token
  std::mt19937 rng(1234 + r);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n) * d), dy(x.size());
  for (auto& v : x) v = nd(rng);
  for (auto& v : dy) v = nd(rng);
  for (int t = 0; t < n; ++t) x[static_cast<size_t>(t) * d] = 1.0f;
  float* xd = static_cast<float*>(be->alloc(x.size() * 4));
  float* dyd = static_cast<float*>(be->alloc(x.size() * 4));
  float* y = static_cast<float*>(be->alloc(x.size() * 4));
  float* dx = static_cast<float*>(be->alloc(x.size() * 4));
  be->to_device(xd, x.data(), x.size() * 4);
  be->to_device(dyd, dy.data(), x.size() * 4);

  // Reference: every expert local, this rank's tokens only.
  Chunks full(*be, m, ExpertRange{0, E}, 7);
  MoeLayer ref(*be, m, 6, 0);
  const MoeStats st_ref = ref.forward(y, xd, n, full.router(), full.experts(), Phase::Train);
  be->zero(dx, x.size() * 4);
  ref.backward(dx, dyd, full.router(), full.experts(), 0.5f);
  const auto y_ref = host(*be, y, x.size()), dx_ref = host(*be, dx, x.size());
  const auto gr_ref = host(*be, full.router().grad, full.router().numel);

  // Expert parallel over the world.
  const int El = E / P;
  Chunks mine(*be, m, ExpertRange{r * El, El}, 7);
  MoeLayer ep(*be, m, 6, 0, MoeExchange{&world, CommDType::F32});
  const MoeStats st = ep.forward(y, xd, n, mine.router(), mine.experts(), Phase::Train);
  be->zero(dx, x.size() * 4);
  ep.backward(dx, dyd, mine.router(), mine.experts(), 0.5f);
  CHECK(st.load == st_ref.load);
  CHECK(st.dropped == st_ref.dropped);
  CHECK(st_ref.load[3] == 0);  // the expert nobody chooses
  CHECK(rel_err(y_ref, host(*be, y, x.size())) < 1e-6);
  CHECK(rel_err(dx_ref, host(*be, dx, x.size())) < 1e-6);
  CHECK(rel_err(gr_ref, host(*be, mine.router().grad, mine.router().numel)) < 1e-6);
  // Each local expert's gradient is the sum over ranks of the reference ones.
  for (int e = 0; e < E; ++e) {
    auto g = host(*be, full.expert(e)->grad, full.expert(e)->numel);
    world.all_reduce(g.data(), g.size(), CommDType::F32, ReduceOp::Sum);
    if (const Chunk* c = mine.expert(e)) CHECK(rel_err(g, host(*be, c->grad, c->numel)) < 1e-6);
  }
  for (float* p : {xd, dyd, y, dx}) be->release(p);
}

ModelConfig layer_config() {
  ModelConfig m;
  m.d_model = 8;
  m.d_ff = 12;
  m.n_layers = 1;
  m.moe.every = 1;
  m.moe.experts = 4;
  return m;
}

}  // namespace

TEST_CASE("mpi moe ep: top-2 with a capacity that drops tokens", "[.mpi][moe]") {
  ModelConfig m = layer_config();
  m.moe.top_k = 2;
  m.moe.capacity_factor = 0.5;
  m.moe.min_capacity = 1;
  check_layer(m);
}

TEST_CASE("mpi moe ep: top-2 dropless", "[.mpi][moe]") {
  ModelConfig m = layer_config();
  m.moe.top_k = 2;
  m.moe.capacity_factor = 0;
  check_layer(m);
}

TEST_CASE("mpi moe ep: prototypes (k top-1), dropless", "[.mpi][moe]") {
  ModelConfig m = layer_config();
  m.moe.router = RouterKind::Prototypes;
  m.moe.prototypes = 2;
  m.moe.top_k = 1;
  m.moe.capacity_factor = 0;
  check_layer(m);
}
