// Pseudo-to-Real delinking (core/model/sharing.h, Model::delink): the
// delinked model computes exactly the same function -- the loss on a fixed
// batch is bit-identical before and after, for dense, MoE top-k and expert
// prototyping layers -- every logical layer gets its own copy of its set's
// weights, Adam moments are copied or zeroed as asked, and the real model's
// layer gradients add up to the pseudo model's set gradients.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>

#include "core/model/model.h"
#include "core/model/sharing.h"
#include "tests/random_batch.h"

using namespace m6;

namespace {

Config small_config() {
  Config c;
  c.model.vocab_size = 31;
  c.model.max_seq_len = 9;
  c.model.d_model = 16;
  c.model.n_heads = 2;
  c.model.n_layers = 4;
  c.model.d_ff = 24;
  c.model.sharing.groups = 2;  // layers 0,1 -> set 0; layers 2,3 -> set 1
  c.train.seq_len = 7;
  c.train.micro_batch = 3;
  c.train.global_batch = 3;
  c.train.threads = 1;
  c.train.seed = 21;
  c.model.moe.aux_loss_coef = 0.1;
  c.model.moe.z_loss_coef = 0.01;
  c.data.train = c.data.val = "unused";
  return c;
}

Config moe_config() {
  Config c = small_config();
  c.model.moe.every = 1;
  c.model.moe.experts = 4;
  c.model.moe.top_k = 2;
  c.model.moe.capacity_factor = 1.0;  // some slots dropped: dropping must match too
  c.model.moe.min_capacity = 1;
  return c;
}

Batch make_batch(const Config& c, uint32_t seed) { return test::random_batch(c, seed); }

std::vector<float> host_of(Backend& be, const float* p, size_t n) {
  std::vector<float> h(n);
  be.to_host(h.data(), p, n * sizeof(float));
  return h;
}

// Random parameters (larger than the 0.02 init, so every path matters) and
// random Adam moments, so that copying them is visible.
void randomise(Model& model, uint32_t seed) {
  Backend& be = model.backend();
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  for (auto& c : model.chunks()) {
    for (float* buf : {c.param, c.adam_m, c.adam_v}) {
      std::vector<float> h = host_of(be, buf, c.numel);
      for (auto& x : h) x = buf == c.adam_v ? std::abs(nd(rng)) : x + nd(rng);
      be.to_device(buf, h.data(), c.numel * sizeof(float));
    }
  }
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// Every number a forward reports, compared bit for bit.
void require_identical(const MicroStats& a, const MicroStats& b, const MoeConfig& moe) {
  INFO("loss before " << a.loss(moe) << " after " << b.loss(moe));
  REQUIRE(same_bits(a.loss(moe), b.loss(moe)));
  REQUIRE(same_bits(a.ce_sum, b.ce_sum));
  REQUIRE(a.n_valid == b.n_valid);
  REQUIRE(a.moe.size() == b.moe.size());
  for (size_t i = 0; i < a.moe.size(); ++i) {
    REQUIRE(same_bits(a.moe[i].aux, b.moe[i].aux));
    REQUIRE(same_bits(a.moe[i].z, b.moe[i].z));
    REQUIRE(a.moe[i].load == b.moe[i].load);
    REQUIRE(a.moe[i].dropped == b.moe[i].dropped);
  }
}

// Trains nothing: checks delinking on fixed batches in both phases, the
// exported tensors, the moments and the gradients. Returns the number of
// logical layers checked.
int check_delink(const Config& cfg, DelinkOptimizer opt) {
  auto be = make_cpu_backend(1);
  const ModelConfig pseudo = cfg.model;
  const int L = pseudo.n_layers, E = pseudo.moe.every > 0 ? pseudo.moe.experts : 0;
  Model model(cfg, *be, ExpertRange{0, E});
  model.init_params(cfg.train.seed);
  randomise(model, 99);
  const Batch batch = make_batch(cfg, 5), batch2 = make_batch(cfg, 6);

  const MicroStats eval_before = model.forward(batch2, Phase::Eval);
  const auto tensors_before = model.logical_tensors(false);
  model.zero_grads();
  const MicroStats before = model.forward(batch, Phase::Train);
  model.backward(1.0f);
  const std::vector<Chunk> pseudo_chunks = model.chunks();  // descriptors; buffers die at delink
  std::vector<std::vector<float>> set_grads, set_m, set_v;
  for (const auto& c : pseudo_chunks) {
    set_grads.push_back(host_of(*be, c.grad, c.numel));
    set_m.push_back(host_of(*be, c.adam_m, c.numel));
    set_v.push_back(host_of(*be, c.adam_v, c.numel));
  }

  model.delink(opt);
  REQUIRE(model.mcfg().sharing.groups == 0);
  size_t want_chunks = 2;  // embedding, head
  for (int l = 0; l < L; ++l) want_chunks += 1 + (pseudo.is_moe_layer(l) ? E : 0);
  REQUIRE(model.chunks().size() == want_chunks);

  const MicroStats after = model.forward(batch, Phase::Train);
  require_identical(before, after, pseudo.moe);
  const MicroStats eval_after = model.forward(batch2, Phase::Eval);
  require_identical(eval_before, eval_after, pseudo.moe);

  // The export lists the same logical tensors with the same values.
  const auto tensors_after = model.logical_tensors(false);
  REQUIRE(tensors_after.size() == tensors_before.size());
  for (size_t i = 0; i < tensors_after.size(); ++i) {
    REQUIRE(tensors_after[i].name == tensors_before[i].name);
    REQUIRE(tensors_after[i].values == tensors_before[i].values);
  }

  // Moments: copied from the set (Copy) or zero (Reset) for layers; the
  // embedding and the head keep theirs either way. Gradients start at zero.
  model.zero_grads();
  model.forward(batch, Phase::Train);
  model.backward(1.0f);
  std::vector<std::vector<double>> grad_sum(pseudo_chunks.size());
  for (const auto& c : model.chunks()) {
    size_t src = pseudo_chunks.size();
    const int set = c.layer >= 0 ? layer_set(pseudo, c.layer) : -1;
    for (size_t i = 0; i < pseudo_chunks.size(); ++i)
      if (pseudo_chunks[i].kind == c.kind && pseudo_chunks[i].layer == set &&
          pseudo_chunks[i].expert == c.expert)
        src = i;
    REQUIRE(src < pseudo_chunks.size());
    const bool layer = c.kind == ChunkKind::Layer || c.kind == ChunkKind::Expert;
    const auto m = host_of(*be, c.adam_m, c.numel), v = host_of(*be, c.adam_v, c.numel);
    if (layer && opt == DelinkOptimizer::Reset) {
      REQUIRE(m == std::vector<float>(c.numel, 0.0f));
      REQUIRE(v == std::vector<float>(c.numel, 0.0f));
    } else {
      REQUIRE(m == set_m[src]);
      REQUIRE(v == set_v[src]);
    }
    const auto g = host_of(*be, c.grad, c.numel);
    auto& sum = grad_sum[src];
    sum.resize(c.numel, 0.0);
    for (size_t i = 0; i < c.numel; ++i) sum[i] += g[i];
  }
  // A set's gradient is the sum of its layers' gradients (up to fp32 rounding:
  // the pseudo model accumulates inside the GEMMs, the real one in separate buffers).
  for (size_t s = 0; s < pseudo_chunks.size(); ++s) {
    double err = 0, norm = 0;
    for (size_t i = 0; i < grad_sum[s].size(); ++i) {
      err = std::max(err, std::abs(grad_sum[s][i] - set_grads[s][i]));
      norm = std::max(norm, std::abs(double(set_grads[s][i])));
    }
    INFO(pseudo_chunks[s].name << ": max |sum of layer grads - set grad| " << err << ", max |g| "
                               << norm);
    CHECK(err <= 1e-4 * norm + 1e-7);
  }
  return L;
}

}  // namespace

TEST_CASE("delink: dense layers, 2 sets of 2, moments copied", "[model][sharing]") {
  CHECK(check_delink(small_config(), DelinkOptimizer::Copy) == 4);
}

TEST_CASE("delink: dense layers, uneven sets (5 layers, 2 sets), moments reset",
          "[model][sharing]") {
  Config c = small_config();
  c.model.n_layers = 5;  // sets: layers 0-2 -> 0, 3-4 -> 1
  CHECK(check_delink(c, DelinkOptimizer::Reset) == 5);
}

TEST_CASE("delink: MoE top-2 with dropping, one set for all layers", "[model][sharing]") {
  Config c = moe_config();
  c.model.sharing.groups = 1;
  CHECK(check_delink(c, DelinkOptimizer::Copy) == 4);
}

TEST_CASE("delink: expert prototyping, 2 sets, moments reset", "[model][sharing]") {
  Config c = moe_config();
  c.model.moe.router = RouterKind::Prototypes;
  c.model.moe.prototypes = 2;
  c.model.moe.top_k = 1;
  CHECK(check_delink(c, DelinkOptimizer::Reset) == 4);
}

TEST_CASE("delink: MoE every other layer (sets of one layer each)", "[model][sharing]") {
  Config c = moe_config();
  c.model.moe.every = 2;
  c.model.sharing.groups = 4;  // a set holds one kind of layer: groups = n_layers
  CHECK(check_delink(c, DelinkOptimizer::Copy) == 4);
}

TEST_CASE("sharing with MoE every k layers: groups share blocks of k layers", "[model][sharing]") {
  Config c = moe_config();
  c.model.moe.every = 2;
  c.model.n_layers = 6;        // blocks (0,1) (2,3) (4,5): dense, MoE in each
  c.model.sharing.groups = 2;  // block b -> group floor(b*2/3): 0, 0, 1
  const ModelConfig& m = c.model;
  REQUIRE(sharing_block(m) == 2);
  REQUIRE(num_layer_sets(m) == 4);
  const int want_group[6] = {0, 0, 0, 0, 1, 1};
  const int want_set[6] = {0, 1, 0, 1, 2, 3};
  const int want_first[4] = {0, 1, 4, 5};
  for (int l = 0; l < 6; ++l) {
    CHECK(layer_group(m, l) == want_group[l]);
    CHECK(layer_set(m, l) == want_set[l]);
    // A set holds layers of one kind, named after its first layer.
    CHECK(m.is_moe_layer(l) == m.is_moe_layer(first_layer_of_set(m, layer_set(m, l))));
  }
  for (int s = 0; s < 4; ++s) CHECK(first_layer_of_set(m, s) == want_first[s]);
  // Parameters: 2 groups of (dense layer + MoE layer) stored, 6 layers logical.
  const ParamCounts pc = count_params(m);
  const ParamCounts real = count_params(delinked_model(m));
  CHECK(pc.logical == real.logical);
  CHECK(pc.unique < real.unique);
  const auto chunks = plan_chunks(m, ExpertRange{0, 4});
  int dense = 0, moe = 0, experts = 0;
  for (const auto& ch : chunks) {
    if (ch.kind == ChunkKind::Expert) ++experts;
    if (ch.kind != ChunkKind::Layer) continue;
    (m.is_moe_layer(first_layer_of_set(m, ch.layer)) ? moe : dense) += 1;
  }
  CHECK(dense == 2);
  CHECK(moe == 2);
  CHECK(experts == 2 * 4);

  // groups = n_layers shares nothing, for every `every`.
  c.model.sharing.groups = 6;
  for (int l = 0; l < 6; ++l) CHECK(layer_set(c.model, l) == l);
  CHECK(num_layer_sets(c.model) == 6);
}

TEST_CASE("delink: MoE every other layer, one (dense, MoE) set for all pairs", "[model][sharing]") {
  Config c = moe_config();
  c.model.moe.every = 2;
  c.model.sharing.groups = 1;
  CHECK(check_delink(c, DelinkOptimizer::Copy) == 4);
}

TEST_CASE("delink: MoE every other layer, uneven groups of pairs, moments reset",
          "[model][sharing]") {
  Config c = moe_config();
  c.model.moe.every = 2;
  c.model.n_layers = 6;
  c.model.sharing.groups = 2;  // pairs (0,1) (2,3) -> group 0, (4,5) -> group 1
  CHECK(check_delink(c, DelinkOptimizer::Reset) == 6);
}

TEST_CASE("delink: MoE every third layer with expert prototyping, one group", "[model][sharing]") {
  Config c = moe_config();
  c.model.moe.every = 3;
  c.model.n_layers = 6;
  c.model.sharing.groups = 1;  // (dense, dense, MoE) twice, one set each position
  c.model.moe.router = RouterKind::Prototypes;
  c.model.moe.prototypes = 2;
  c.model.moe.top_k = 1;
  CHECK(check_delink(c, DelinkOptimizer::Copy) == 6);
}

TEST_CASE("delink: training continues and the loss keeps falling", "[model][sharing]") {
  Config c = moe_config();
  c.model.sharing.groups = 1;
  auto be = make_cpu_backend(1);
  Model model(c, *be, ExpertRange{0, 4});
  model.init_params(c.train.seed);
  const Batch batch = make_batch(c, 8);
  // Plain SGD on one batch: the loss must keep falling across the delink.
  auto sgd = [&](int steps) {
    double loss = 0;
    for (int s = 0; s < steps; ++s) {
      model.zero_grads();
      loss = model.forward(batch, Phase::Train).loss(c.model.moe);
      model.backward(1.0f);
      for (auto& ch : model.chunks()) {
        auto p = host_of(*be, ch.param, ch.numel), g = host_of(*be, ch.grad, ch.numel);
        for (size_t i = 0; i < ch.numel; ++i) p[i] -= 0.5f * g[i];
        be->to_device(ch.param, p.data(), ch.numel * sizeof(float));
      }
    }
    return loss;
  };
  const double l0 = sgd(1), l1 = sgd(5);
  const double at_delink = model.forward(batch, Phase::Train).loss(c.model.moe);
  model.delink(DelinkOptimizer::Copy);
  REQUIRE(same_bits(at_delink, model.forward(batch, Phase::Train).loss(c.model.moe)));
  const double l2 = sgd(6);
  INFO("loss " << l0 << " -> " << l1 << " (delink) -> " << l2);
  CHECK(l1 < l0);
  CHECK(l2 < at_delink);
}

TEST_CASE("delink: an EP rank's expert slice is copied from its own experts", "[model][sharing]") {
  Config c = moe_config();
  const ExpertRange r{2, 2};  // EP rank 1 of ep = 2
  auto be = make_cpu_backend(1);
  std::vector<Chunk> from = plan_chunks(c.model, r);
  ChunkStorage from_store(*be, from);
  for (auto& ch : from) {
    std::vector<float> h(ch.numel);
    init_chunk_host(ch, 5, h.data());
    be->to_device(ch.param, h.data(), ch.numel * sizeof(float));
  }
  std::vector<Chunk> to = plan_chunks(delinked_model(c.model), r);
  ChunkStorage to_store(*be, to);
  delink_chunks(*be, c.model, from, to, DelinkOptimizer::Copy);
  int experts = 0;
  for (const auto& ch : to) {
    if (ch.kind != ChunkKind::Expert) continue;
    ++experts;
    REQUIRE(ch.expert >= 2);
    // layers.3.moe.experts.2 holds what layers.2.moe.experts.2 held (set 1 is named after layer 2).
    const std::string src =
        "layers." + std::to_string(first_layer_of_set(c.model, layer_set(c.model, ch.layer))) +
        ".moe.experts." + std::to_string(ch.expert);
    const Chunk* f = nullptr;
    for (const auto& x : from)
      if (x.name == src) f = &x;
    REQUIRE(f);
    REQUIRE(host_of(*be, ch.param, ch.numel) == host_of(*be, f->param, f->numel));
  }
  CHECK(experts == 4 * 2);
}

TEST_CASE("delink: refused without sharing, config_at_step switches at the delink step",
          "[model][sharing]") {
  Config c = small_config();
  c.model.sharing.groups = 0;
  auto be = make_cpu_backend(1);
  Model model(c, *be, ExpertRange{0, 0});
  CHECK_THROWS_WITH(model.delink(DelinkOptimizer::Copy), Catch::Contains("shares no layers"));

  Config p = small_config();
  p.model.sharing.delink_at_step = 10;
  CHECK(config_at_step(p, 9).model.sharing.groups == 2);
  CHECK(config_at_step(p, 10).model.sharing.groups == 0);
  CHECK(config_at_step(p, 10).model.sharing.delink_at_step == 0);
  p.model.sharing.delink_at_step = 0;  // never delinked in this run
  CHECK(config_at_step(p, 1000).model.sharing.groups == 2);
}
