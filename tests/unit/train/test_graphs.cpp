// Graphs (train.graphs) and the host reads of a training step, on the CPU:
// the recording backend (core/backend/graph_recorder.cpp) is the twin of CUDA
// graphs, so the model's captured code path is checked here for replay
// (bit-identical to eager) and for what a capture forbids.
#include <catch2/catch.hpp>

#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>

#include "core/backend/forwarding_backend.h"
#include "core/model/model.h"
#include "tests/random_batch.h"
#include "core/train/optimizer.h"
#include "core/util/error.h"

using namespace m6;

namespace {

Config graph_config(int moe_every) {
  Config c;
  c.model.vocab_size = 31;
  c.model.max_seq_len = 8;
  c.model.d_model = 16;
  c.model.n_heads = 2;
  c.model.n_layers = 2;
  c.model.d_ff = 24;
  if (moe_every > 0) {
    c.model.moe.every = moe_every;
    c.model.moe.experts = 4;
    c.model.moe.top_k = 2;
  }
  c.train.seq_len = 6;
  c.train.micro_batch = 2;
  c.train.global_batch = 4;  // two micro-batches per step on one rank
  c.train.threads = 1;
  c.train.seed = 5;
  c.data.train = c.data.val = "unused";
  return c;
}

Batch batch_of(const Config& c, uint32_t seed, bool ignore_one) {
  Batch b = test::random_batch(c, seed);
  if (ignore_one) b.targets[4] = -1;
  return b;
}

std::vector<float> params_of(Backend& be, const Model& m) {
  std::vector<float> all;
  for (const auto& c : m.chunks()) {
    std::vector<float> h(c.numel);
    be.to_host(h.data(), c.param, c.numel * sizeof(float));
    all.insert(all.end(), h.begin(), h.end());
  }
  return all;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Steps of two micro-batches; returns every micro-batch's loss sum.
std::vector<double> train_steps(Model& m, Backend& be, const Config& c, int steps) {
  std::vector<double> ce;
  for (int s = 0; s < steps; ++s) {
    m.zero_grads();
    MicroStats st[2];
    // Step 2 has an ignored target: another key (n_valid), first eager,
    // then recorded anew.
    for (int a = 0; a < 2; ++a)
      st[a] = m.train_micro(batch_of(c, 100 * s + a, s >= 2), 0.5f, a);
    m.collect_stats(st, 2);
    for (const auto& x : st) ce.push_back(x.ce_sum);
    adamw_step(be, m.chunks(), c.optim, 1e-2, 1.0f, s + 1);
  }
  return ce;
}

}  // namespace

TEST_CASE("graphs: replayed micro-batches train bit-identically to eager ones", "[graphs]") {
  for (const Recompute rc : {Recompute::None, Recompute::Layer}) {
    CAPTURE(static_cast<int>(rc));
    Config on = graph_config(0), off = graph_config(0);
    on.train.graphs = GraphMode::On;
    off.train.graphs = GraphMode::Off;
    on.train.recompute = off.train.recompute = rc;
    auto be_on = make_recording_backend(make_cpu_backend(1));
    auto be_off = make_cpu_backend(1);
    Model m_on(on, *be_on, ExpertRange{0, 0}), m_off(off, *be_off, ExpertRange{0, 0});
    REQUIRE(m_on.graphs_on());
    REQUIRE_FALSE(m_off.graphs_on());
    m_on.init_params(on.train.seed);
    m_off.init_params(off.train.seed);
    const std::vector<double> ce_on = train_steps(m_on, *be_on, on, 5);
    const std::vector<double> ce_off = train_steps(m_off, *be_off, off, 5);
    // Step 0: warm-up, then recorded and run; step 1 replays twice; step 2's
    // new key (an ignored target) warms up, then is recorded; steps 3, 4 replay.
    CHECK(m_on.graph_replays() == 8);
    REQUIRE(ce_on.size() == ce_off.size());
    for (size_t i = 0; i < ce_on.size(); ++i) {
      CAPTURE(i);
      CHECK(std::memcmp(&ce_on[i], &ce_off[i], sizeof(double)) == 0);
    }
    CHECK(same_bits(params_of(*be_on, m_on), params_of(*be_off, m_off)));
  }
}

// More stats slots than reserved, after a graph was recorded: the slots
// move to a larger buffer, and a recording made before (it writes the old
// buffer's address) must not be replayed. One slot is reserved at
// construction; slot 1 grows the buffer, then micro-batch 1 is recorded;
// slots 2 and 3 grow it again, and each is recorded anew.
TEST_CASE("graphs: growing the stats slots after a recording keeps replays right", "[graphs]") {
  Config on = graph_config(0), off = graph_config(0);
  on.train.graphs = GraphMode::On;
  off.train.graphs = GraphMode::Off;
  auto be_on = make_recording_backend(make_cpu_backend(1));
  auto be_off = make_cpu_backend(1);
  Model m_on(on, *be_on, ExpertRange{0, 0}), m_off(off, *be_off, ExpertRange{0, 0});
  m_on.init_params(on.train.seed);
  m_off.init_params(off.train.seed);
  MicroStats st_on[4], st_off[4];
  for (int a = 0; a < 4; ++a) {
    st_on[a] = m_on.train_micro(batch_of(on, 40 + a, false), 0.5f, a);
    st_off[a] = m_off.train_micro(batch_of(off, 40 + a, false), 0.5f, a);
  }
  m_on.collect_stats(st_on, 4);
  m_off.collect_stats(st_off, 4);
  CHECK(m_on.graph_replays() == 3);
  for (int a = 0; a < 4; ++a) {
    CAPTURE(a);
    CHECK(std::memcmp(&st_on[a].ce_sum, &st_off[a].ce_sum, sizeof(double)) == 0);
  }
  CHECK(same_bits(params_of(*be_on, m_on), params_of(*be_off, m_off)));
}

TEST_CASE("graphs: a recording replays its ops on the buffers' current contents", "[graphs]") {
  auto be = make_recording_backend(make_cpu_backend(1));
  REQUIRE(be->graphs_available());
  float* x = static_cast<float*>(be->alloc(4 * sizeof(float)));
  float* y = static_cast<float*>(be->alloc(4 * sizeof(float)));
  double* s = static_cast<double*>(be->alloc(sizeof(double)));
  const float x0[4] = {1, 2, 3, 4};
  be->to_device(x, x0, sizeof x0);
  be->capture_begin();
  be->add(y, x, x, 4);
  be->scale(y, 3.0f, 4);
  be->sum_to(s, y, 4);
  auto g = be->capture_end();
  REQUIRE(g != nullptr);
  double got = -1;
  be->to_host(&got, s, sizeof got);
  CHECK(got == 0.0);  // recorded, not run
  be->graph_launch(*g);
  be->to_host(&got, s, sizeof got);
  CHECK(got == 60.0);
  const float x1[4] = {-1, 0, 0, 0};
  be->to_device(x, x1, sizeof x1);
  be->graph_launch(*g);
  be->to_host(&got, s, sizeof got);
  CHECK(got == -6.0);
  be->release(x);
  be->release(y);
  be->release(s);
}

TEST_CASE("graphs: a host read, allocation or upload inside a capture abandons it", "[graphs]") {
  auto be = make_recording_backend(make_cpu_backend(1));
  float* x = static_cast<float*>(be->alloc(4 * sizeof(float)));
  float h[4] = {};
  be->capture_begin();
  be->zero(x, sizeof h);
  CHECK_THROWS_WITH(be->to_host(h, x, sizeof h),
                    Catch::Contains("to_host inside a graph capture"));
  CHECK(be->capture_end() == nullptr);
  be->capture_begin();
  CHECK_THROWS_WITH(be->alloc(8), Catch::Contains("alloc inside a graph capture"));
  CHECK(be->capture_end() == nullptr);
  be->capture_begin();
  CHECK_THROWS_WITH(be->to_device(x, h, sizeof h), Catch::Contains("to_device"));
  CHECK(be->capture_end() == nullptr);
  be->capture_begin();  // a clean capture after the failed ones
  be->scale(x, 2.0f, 4);
  CHECK(be->capture_end() != nullptr);
  be->release(x);
}

namespace {
// Throws std::runtime_error (not an m6::Error) from the first attention_fwd after
// arm(): an exception the model's capture does not handle.
class ThrowingBackend final : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  std::string name() const override { return "throwing(" + inner().name() + ")"; }
  void arm() { armed_ = true; }

 protected:
  void run(const char* op, std::function<void()> f) override {
    if (armed_ && std::strcmp(op, "attention_fwd") == 0) {
      armed_ = false;
      throw std::runtime_error("injected failure in attention_fwd");
    }
    f();
  }

 private:
  bool armed_ = false;
};
}  // namespace

// An exception other than m6::Error inside the capture (out of memory, ...)
// propagates, and the capture is closed first: the backend is usable after
// it (a host read works, a new capture can begin), as on CUDA, where a stream
// left capturing would record every later op instead of running it.
TEST_CASE("graphs: any exception inside a capture leaves no capture open", "[graphs]") {
  Config c = graph_config(0);
  c.train.graphs = GraphMode::On;
  auto owned = std::make_unique<ThrowingBackend>(make_recording_backend(make_cpu_backend(1)));
  ThrowingBackend& be = *owned;
  Model m(c, be, ExpertRange{0, 0});
  m.init_params(c.train.seed);
  MicroStats st = m.train_micro(batch_of(c, 7, false), 0.5f, 0);  // warm-up: eager
  CHECK(m.graph_replays() == 0);
  be.arm();  // the next micro-batch of this key is captured, and fails inside
  CHECK_THROWS_WITH(m.train_micro(batch_of(c, 8, false), 0.5f, 0),
                    Catch::Contains("injected failure in attention_fwd"));
  float h = 0.0f;
  const float* any = m.chunks().front().param;
  CHECK_NOTHROW(be.to_host(&h, any, sizeof h));  // a host read: no capture open
  CHECK_NOTHROW(be.capture_begin());
  CHECK(be.capture_end() != nullptr);
  (void)st;
}

TEST_CASE("graphs: train.graphs on needs a static micro-batch", "[graphs]") {
  Config c = graph_config(2);
  c.train.graphs = GraphMode::On;
  CHECK_THROWS_WITH(validate_config(c, 1),
                    Catch::Contains("train.graphs") && Catch::Contains("model.moe.every is 2"));
  Config d = graph_config(0);
  d.train.graphs = GraphMode::On;
  d.offload.optimizer = d.offload.params = 0.5;
  CHECK_THROWS_WITH(validate_config(d, 1), Catch::Contains("offload.params is 0.5"));
  d.offload.params = 0;
  CHECK_NOTHROW(validate_config(d, 1));
  // auto: off on a backend without graphs, with the reason
  Config a = graph_config(0);
  auto cpu = make_cpu_backend(1);
  Model m(a, *cpu, ExpertRange{0, 0});
  CHECK_FALSE(m.graphs_on());
  CHECK_THAT(m.graphs_off_reason(), Catch::Contains("records no graphs"));
}

// The host reads of a step: none in a dense micro-batch, one per MoE layer
// in an MoE micro-batch (the loads and demand the capacity logic needs),
// two for the step's statistics (collect_stats: the deferred error check,
// then the values).
TEST_CASE("graphs: a training micro-batch reads to the host only for the MoE capacity logic",
          "[graphs]") {
  for (const int every : {0, 1, 2}) {
    CAPTURE(every);
    Config c = graph_config(every);
    c.train.graphs = GraphMode::Off;
    auto be = make_recording_backend(make_cpu_backend(1));
    Model m(c, *be, ExpertRange{0, every > 0 ? 4 : 0});
    m.init_params(c.train.seed);
    const int moe_layers = every == 0 ? 0 : every == 1 ? 2 : 1;
    MicroStats st[2];
    for (int a = 0; a < 2; ++a) {
      const int64_t before = be->host_reads();
      st[a] = m.train_micro(batch_of(c, 7 + a, false), 1.0f, a);
      CHECK(be->host_reads() - before == moe_layers);
    }
    const int64_t before = be->host_reads();
    m.collect_stats(st, 2);
    CHECK(be->host_reads() - before == 2);
    // The deferred values equal the reading forward's.
    for (int a = 0; a < 2; ++a) {
      const MicroStats ref = m.forward(batch_of(c, 7 + a, false), Phase::Train);
      CHECK(std::memcmp(&ref.ce_sum, &st[a].ce_sum, sizeof(double)) == 0);
      REQUIRE(ref.moe.size() == st[a].moe.size());
      for (size_t j = 0; j < ref.moe.size(); ++j) {
        CHECK(std::memcmp(&ref.moe[j].aux, &st[a].moe[j].aux, sizeof(double)) == 0);
        CHECK(std::memcmp(&ref.moe[j].z, &st[a].moe[j].z, sizeof(double)) == 0);
        CHECK(ref.moe[j].routing == st[a].moe[j].routing);
        CHECK(ref.moe[j].routing != 0);
        CHECK(ref.moe[j].load == st[a].moe[j].load);
      }
    }
  }
}

TEST_CASE("graphs: the split router statistics equal router_aux_fwd bit for bit", "[graphs]") {
  auto be = make_cpu_backend(1);
  const int N = 9, E = 6;
  for (const int groups : {1, 2}) {
    RouterArgs a;
    a.n = N, a.e = E, a.groups = groups, a.top_k = groups == 1 ? 2 : 1;
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> u(0.01f, 1.0f);
    std::vector<float> probs(N * E), lse(N * groups);
    for (float& p : probs) p = u(rng);
    for (float& l : lse) l = u(rng) * 3;
    std::vector<int32_t> demand(E);
    for (int e = 0; e < E; ++e) demand[e] = static_cast<int32_t>(rng() % 7);
    float* dp = static_cast<float*>(be->alloc(probs.size() * 4));
    float* dl = static_cast<float*>(be->alloc(lse.size() * 4));
    int32_t* dd = static_cast<int32_t*>(be->alloc(E * 4));
    double* ds = static_cast<double*>(be->alloc((E + 1) * 8));
    be->to_device(dp, probs.data(), probs.size() * 4);
    be->to_device(dl, lse.data(), lse.size() * 4);
    be->to_device(dd, demand.data(), E * 4);
    const Backend::AuxLosses ref = be->router_aux_fwd(dp, dl, dd, a);
    be->router_aux_sums(ds, dp, dl, a);
    std::vector<double> sums(E + 1);
    be->to_host(sums.data(), ds, sums.size() * 8);
    const Backend::AuxLosses got = Backend::router_aux_combine(sums.data(), demand.data(), a);
    CHECK(std::memcmp(&ref.aux, &got.aux, sizeof(double)) == 0);
    CHECK(std::memcmp(&ref.z, &got.z, sizeof(double)) == 0);
    CHECK(got.aux > 0);
    for (void* p : {static_cast<void*>(dp), static_cast<void*>(dl), static_cast<void*>(dd),
                    static_cast<void*>(ds)})
      be->release(p);
  }
}
