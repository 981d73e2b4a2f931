// The KV-cache inference path against recomputation: the logits of a token
// decoded against the cache equal those of running the whole sequence
// again, the full-sequence logits give the cross-entropy the training model
// computes on the same weights, and greedy generation with the cache picks
// the same tokens as recomputing the sequence at every step.
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "core/backend/backend.h"
#include "core/config/config.h"
#include "core/infer/generate.h"
#include "core/infer/kv_model.h"
#include "core/model/model.h"
#include "core/model/params.h"
#include "core/model/sharing.h"

namespace {

m6::Config small_config(bool moe, int sharing_groups) {
  m6::Config c;
  m6::ModelConfig& m = c.model;
  m.vocab_size = 256;
  m.max_seq_len = 24;
  m.d_model = 32;
  m.n_heads = 4;
  m.n_layers = 3;
  m.d_ff = 40;
  if (moe) {
    m.moe.every = sharing_groups > 0 ? 1 : 2;  // shared sets hold layers of one kind
    m.moe.experts = 4;
    m.moe.top_k = 2;
    m.moe.eval_capacity_factor = 0;  // dropless, as inference routes
  }
  m.sharing.groups = sharing_groups;
  c.train.micro_batch = 1;
  c.train.global_batch = 1;
  c.train.seq_len = m.max_seq_len;
  return c;
}

// Weights of every chunk drawn U(-0.3, 0.3) (LayerNorm weights around 1), so
// the logits spread far beyond the near-uniform ones of a fresh model.
std::vector<std::vector<float>> random_weights(const std::vector<m6::Chunk>& chunks, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-0.3f, 0.3f);
  std::vector<std::vector<float>> out;
  for (const auto& c : chunks) {
    std::vector<float> h(c.numel);
    for (auto& v : h) v = u(rng);
    for (const auto& t : c.tensors)
      if (t.name.find("ln") != std::string::npos && t.name.ends_with("weight"))
        for (size_t i = 0; i < t.numel; ++i) h[t.offset + i] += 1.0f;
    out.push_back(std::move(h));
  }
  return out;
}

void upload(m6::Backend& be, std::vector<m6::Chunk>& chunks,
            const std::vector<std::vector<float>>& w) {
  REQUIRE(chunks.size() == w.size());
  for (size_t i = 0; i < chunks.size(); ++i)
    be.to_device(chunks[i].param, w[i].data(), w[i].size() * sizeof(float));
}

std::vector<int32_t> random_tokens(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % 256);
  return t;
}

double max_abs(const float* a, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(static_cast<double>(a[i])));
  return m;
}

struct Setup {
  m6::Config cfg;
  std::unique_ptr<m6::Backend> be = m6::make_cpu_backend(2);
  std::vector<m6::Chunk> chunks;
  std::unique_ptr<m6::ChunkStorage> store;
  std::vector<std::vector<float>> weights;
  Setup(bool moe, int groups) : cfg(small_config(moe, groups)) {
    const int E = moe ? cfg.model.moe.experts : 0;
    chunks = m6::plan_chunks(cfg.model, m6::ExpertRange{0, E});
    store = std::make_unique<m6::ChunkStorage>(*be, chunks);
    weights = random_weights(chunks, 7 + groups + (moe ? 100 : 0));
    upload(*be, chunks, weights);
  }
};

}  // namespace

TEST_CASE("KV-cache decode logits equal full recomputation", "[infer]") {
  for (auto [moe, groups] : {std::pair{true, 0}, std::pair{false, 0}, std::pair{true, 2}}) {
    CAPTURE(moe, groups);
    Setup s(moe, groups);
    m6::KvModel kv(s.cfg.model, *s.be, s.chunks);
    const int T = kv.capacity(), V = s.cfg.model.vocab_size;
    REQUIRE(T == 24);
    const std::vector<int32_t> tokens = random_tokens(T, 11);
    const std::vector<float> full = kv.prefill(tokens);
    REQUIRE(full.size() == static_cast<size_t>(T) * V);
    const double scale = std::max(1.0, max_abs(full.data(), full.size()));
    CHECK(scale > 2.0);  // logits far from uniform: a wrong cache would show
    for (int start : {1, 5}) {
      CAPTURE(start);
      const std::vector<float> pre = kv.prefill({tokens.begin(), tokens.begin() + start});
      for (size_t i = 0; i < pre.size(); ++i) REQUIRE(pre[i] == Approx(full[i]).margin(1e-5 * scale));
      for (int t = start; t < T; ++t) {
        CAPTURE(t);
        const std::vector<float> row = kv.decode(tokens[t]);
        REQUIRE(row.size() == static_cast<size_t>(V));
        REQUIRE(kv.length() == t + 1);
        double worst = 0;
        for (int v = 0; v < V; ++v)
          worst = std::max(worst, std::fabs(static_cast<double>(row[v]) - full[static_cast<size_t>(t) * V + v]));
        CHECK(worst <= 1e-5 * scale);
      }
    }
    // The cache is full now.
    CHECK_THROWS_WITH(kv.decode(1), Catch::Contains("cache is full"));
    CHECK_THROWS_WITH(kv.prefill(random_tokens(T + 1, 3)), Catch::Contains("max_seq_len"));

    // Changing an earlier token changes the later logits (the cache is used).
    std::vector<int32_t> other = tokens;
    other[0] = (other[0] + 1) % 256;
    const std::vector<float> full2 = kv.prefill(other);
    CHECK(max_abs(full2.data() + static_cast<size_t>(T - 1) * V, V) > 0);
    double diff = 0;
    for (int v = 0; v < V; ++v)
      diff = std::max(diff, std::fabs(double(full2[size_t(T - 1) * V + v]) - full[size_t(T - 1) * V + v]));
    CHECK(diff > 1e-3);
  }
}

TEST_CASE("KV-model logits give the training model's cross-entropy", "[infer]") {
  for (auto [moe, groups] : {std::pair{true, 0}, std::pair{false, 2}}) {
    CAPTURE(moe, groups);
    Setup s(moe, groups);
    m6::KvModel kv(s.cfg.model, *s.be, s.chunks);
    const int T = kv.capacity(), V = s.cfg.model.vocab_size;
    const std::vector<int32_t> seq = random_tokens(T + 1, 5);
    const std::vector<int32_t> inputs(seq.begin(), seq.end() - 1);
    const std::vector<float> logits = kv.prefill(inputs);
    double ce = 0;
    for (int t = 0; t < T; ++t) {
      const float* l = logits.data() + static_cast<size_t>(t) * V;
      double mx = l[0], z = 0;
      for (int v = 0; v < V; ++v) mx = std::max(mx, double(l[v]));
      for (int v = 0; v < V; ++v) z += std::exp(double(l[v]) - mx);
      ce += std::log(z) + mx - l[seq[t + 1]];
    }
    m6::Model model(s.cfg, *s.be, m6::ExpertRange{0, moe ? s.cfg.model.moe.experts : 0});
    upload(*s.be, model.chunks(), s.weights);
    m6::Batch b;
    b.B = 1, b.T = T;
    b.inputs = inputs;
    b.targets.assign(seq.begin() + 1, seq.end());
    const m6::MicroStats st = model.forward(b, m6::Phase::Eval);
    REQUIRE(st.n_valid == T);
    CHECK(st.ce_sum == Approx(ce).epsilon(1e-5));
    CHECK(ce / T > 1.0);  // not a trivial value
  }
}

TEST_CASE("greedy generation with the cache equals recomputing every step", "[infer]") {
  Setup s(true, 0);
  m6::KvModel kv(s.cfg.model, *s.be, s.chunks);
  const std::vector<int32_t> prompt = random_tokens(4, 9);
  m6::SampleOptions o;
  o.temperature = 0;
  std::vector<int32_t> cached;
  const int n = kv.capacity() - static_cast<int>(prompt.size());
  const m6::GenerateStats st = m6::generate(kv, prompt, n, o, [&](int32_t t) { cached.push_back(t); });
  CHECK(st.generated == n);
  CHECK(st.context_shifts == 0);
  m6::KvModel ref(s.cfg.model, *s.be, s.chunks);
  std::vector<int32_t> ctx = prompt;
  m6::SampleRng rng(0);
  for (int i = 0; i < n; ++i) {
    const std::vector<float> l = ref.prefill(ctx);
    ctx.push_back(m6::sample_token(l.data() + l.size() - 256, 256, o, rng));
  }
  CHECK(std::vector<int32_t>(ctx.begin() + prompt.size(), ctx.end()) == cached);
  // Past the context: generation goes on by shifting the context.
  std::vector<int32_t> more;
  const m6::GenerateStats st2 = m6::generate(kv, prompt, 3 * kv.capacity(), o, [&](int32_t t) { more.push_back(t); });
  CHECK(more.size() == size_t(3 * kv.capacity()));
  CHECK(st2.context_shifts >= 4);
}
