// Checkpoint save/load: exact round trips of weights, moments and state; the
// multi-writer layout (dense once by rank 0, each expert block once by its
// lowest rank) with N threads as ranks; loading on another layout; the
// commit protocol's housekeeping (latest, keep, leftovers).
#include <catch2/catch.hpp>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>

#include "ckpt_test_util.h"
#include "core/ckpt/checkpoint.h"
#include "core/util/error.h"
#include "thread_comm.h"

using namespace m6;
using namespace m6::test;

namespace {

nlohmann::json manifest_json(const std::string& dir) {
  std::ifstream in(dir + "/manifest.json");
  return nlohmann::json::parse(in);
}

TrainState sample_state(int64_t step) {
  TrainState st;
  st.step = step;
  st.tokens_seen = step * 32;
  st.adam_t = step - 1;
  st.skipped_steps = 1;
  st.consecutive_skips = 0;
  st.loss_scaler = {true, 512.0, 17, 2};
  st.spike_window = {3.25, 0.1 + 0.2, 1.0 / 3.0};  // values that need all 17 digits
  return st;
}

// Saves a checkpoint from `world` thread-ranks with parallel.ep = ep, every
// rank holding its EP share initialised from `seed`.
std::string save_from_layout(const std::string& run, int world, int ep, int64_t step,
                             uint64_t seed) {
  std::string dir;
  std::mutex mu;
  run_ranks(world, [&](Comm& comm) {
    const Config cfg = small_config(ep);
    auto be = make_cpu_backend(1);
    Model model(cfg, *be, experts_of(cfg, comm.rank() % ep));
    fill_model(model, seed);
    const std::string d = save_checkpoint(run, cfg, sample_state(step), *be, model.chunks(), comm);
    std::lock_guard<std::mutex> lock(mu);
    dir = d;
  });
  return dir;
}

// Loads `dir` on `world` thread-ranks with ep and checks every rank's
// tensors against a full reference model from `seed`.
void check_load_on_layout(const std::string& dir, int world, int ep, uint64_t seed) {
  const Config full_cfg = small_config(1);
  auto ref_be = make_cpu_backend(1);
  Model ref(full_cfg, *ref_be, experts_of(full_cfg, 0));
  fill_model(ref, seed);
  std::map<std::string, std::vector<float>> want[3];
  for (int p = 0; p < 3; ++p) want[p] = snapshot(ref, p);
  std::mutex mu;
  int checked = 0;
  run_ranks(world, [&](Comm& comm) {
    const Config cfg = small_config(ep);
    auto be = make_cpu_backend(1);
    Model model(cfg, *be, experts_of(cfg, comm.rank() % ep));
    model.init_params(999);  // different from the checkpoint's
    const TrainState st = load_checkpoint(dir, *be, model.chunks(), LoadParts::WeightsAndOptimizer);
    std::lock_guard<std::mutex> lock(mu);
    CHECK(st.step == 7);
    for (int p = 0; p < 3; ++p)
      for (const auto& [name, values] : snapshot(model, p)) {
        INFO("rank " << comm.rank() << " part " << p << " tensor " << name);
        REQUIRE(want[p].count(name));
        CHECK(values == want[p].at(name));
        ++checked;
      }
  });
  CHECK(checked > 0);
}

}  // namespace

TEST_CASE("checkpoint: weights, moments and state round-trip exactly", "[ckpt]") {
  TempDir tmp("roundtrip");
  const Config cfg = small_config(1);
  auto be = make_cpu_backend(1);
  Model a(cfg, *be, experts_of(cfg, 0));
  fill_model(a, 5);
  const TrainState st = sample_state(12);
  const std::string dir = save_checkpoint(tmp.str(), cfg, st, *be, a.chunks());
  CHECK(dir == tmp.str() + "/checkpoints/step_00000012");
  CHECK(latest_checkpoint(tmp.str()) == dir);

  Model b(cfg, *be, experts_of(cfg, 0));
  b.init_params(6);
  const TrainState got = load_checkpoint(dir, *be, b.chunks(), LoadParts::WeightsAndOptimizer);
  for (int p = 0; p < 3; ++p) CHECK(snapshot(a, p) == snapshot(b, p));
  CHECK(got.step == 12);
  CHECK(got.tokens_seen == st.tokens_seen);
  CHECK(got.adam_t == st.adam_t);
  CHECK(got.skipped_steps == 1);
  CHECK(got.loss_scaler.active);
  CHECK(got.loss_scaler.scale == 512.0);
  CHECK(got.loss_scaler.good_steps == 17);
  CHECK(got.loss_scaler.hysteresis_left == 2);
  CHECK(got.spike_window == st.spike_window);  // bit-exact through JSON

  const auto man = manifest_json(dir);
  CHECK(man["format_version"] == kCheckpointFormatVersion);
  CHECK(man["layout"]["world"] == 1);
  CHECK(man["data"]["next_step"] == 12);
  CHECK(man["files"].size() == 6);  // dense + experts-ep0, three parts each
  CHECK(man["files"]["experts-ep0.weights.safetensors"]["experts"] == nlohmann::json({0, 4}));
  CHECK(man["files"]["dense.adam_v.safetensors"]["experts"].is_null());
}

TEST_CASE("checkpoint: weights-only load leaves the moments alone", "[ckpt]") {
  TempDir tmp("weights_only");
  const Config cfg = small_config(1);
  auto be = make_cpu_backend(1);
  Model a(cfg, *be, experts_of(cfg, 0));
  fill_model(a, 5);
  const std::string dir = save_checkpoint(tmp.str(), cfg, sample_state(3), *be, a.chunks());
  Model b(cfg, *be, experts_of(cfg, 0));
  fill_model(b, 8);
  const auto m_before = snapshot(b, 1);
  load_checkpoint(dir, *be, b.chunks(), LoadParts::Weights);
  CHECK(snapshot(b, 0) == snapshot(a, 0));
  CHECK(snapshot(b, 1) == m_before);
}

TEST_CASE("checkpoint: 2 ranks with ep 2 write the dense part once and one file per expert block",
          "[ckpt][layout]") {
  TempDir tmp("ep2");
  const std::string dir = save_from_layout(tmp.str(), 2, 2, 7, 11);
  const auto man = manifest_json(dir);
  CHECK(man["layout"]["world"] == 2);
  CHECK(man["layout"]["ep"] == 2);
  CHECK(man["files"].size() == 9);
  CHECK(man["files"]["experts-ep0.weights.safetensors"]["experts"] == nlohmann::json({0, 2}));
  CHECK(man["files"]["experts-ep1.adam_m.safetensors"]["experts"] == nlohmann::json({2, 2}));
  SafetensorsFile dense(dir + "/dense.weights.safetensors");
  CHECK(dense.has("layers.1.moe.router.weight"));
  CHECK_FALSE(dense.has("layers.1.moe.experts.0.fc1.weight"));
  SafetensorsFile ep1(dir + "/experts-ep1.weights.safetensors");
  CHECK(ep1.has("layers.1.moe.experts.3.fc2.bias"));
  CHECK_FALSE(ep1.has("layers.1.moe.experts.1.fc2.bias"));
  check_load_on_layout(dir, 1, 1, 11);
  check_load_on_layout(dir, 4, 4, 11);
}

TEST_CASE("checkpoint: 4 ranks with ep 2 -- the expert-DP replicas do not write twice",
          "[ckpt][layout]") {
  TempDir tmp("w4ep2");
  const std::string dir = save_from_layout(tmp.str(), 4, 2, 7, 21);
  const auto man = manifest_json(dir);
  CHECK(man["layout"]["world"] == 4);
  CHECK(man["files"].size() == 9);  // dense, experts-ep0, experts-ep1
  check_load_on_layout(dir, 2, 2, 21);
  check_load_on_layout(dir, 1, 1, 21);
}

TEST_CASE("checkpoint: a 1-rank checkpoint loads on 4 ranks with ep 4 and 2 with ep 1",
          "[ckpt][layout]") {
  TempDir tmp("w1");
  const std::string dir = save_from_layout(tmp.str(), 1, 1, 7, 31);
  check_load_on_layout(dir, 4, 4, 31);
  check_load_on_layout(dir, 2, 1, 31);
}

TEST_CASE("checkpoint: keep prunes older committed checkpoints and leftovers, never newer ones",
          "[ckpt]") {
  TempDir tmp("keep");
  Config cfg = small_config(1);
  cfg.checkpoint.keep = 2;
  auto be = make_cpu_backend(1);
  Model a(cfg, *be, experts_of(cfg, 0));
  fill_model(a, 5);
  const std::string root = tmp.str() + "/checkpoints";
  fs::create_directories(root + "/step_00000001.tmp");  // a crashed save
  std::ofstream(root + "/latest.tmp.12345") << "x";     // a crashed latest update
  for (int64_t s : {2, 4, 6}) save_checkpoint(tmp.str(), cfg, sample_state(s), *be, a.chunks());
  std::vector<int64_t> steps;
  for (const auto& c : list_checkpoints(tmp.str())) steps.push_back(c.step);
  CHECK(steps == std::vector<int64_t>{4, 6});
  CHECK_FALSE(fs::exists(root + "/step_00000001.tmp"));
  CHECK_FALSE(fs::exists(root + "/latest.tmp.12345"));
  CHECK_FALSE(fs::exists(root + "/step_00000002.old"));
  CHECK(latest_checkpoint(tmp.str()) == root + "/step_00000006");

  // list_checkpoints never reports an uncommitted or set-aside directory.
  fs::create_directories(root + "/step_00000009.tmp");
  fs::create_directories(root + "/step_00000008.corrupt");
  CHECK(list_checkpoints(tmp.str()).back().step == 6);

  // Saving the same step again replaces it whole.
  save_checkpoint(tmp.str(), cfg, sample_state(6), *be, a.chunks());
  CHECK(list_checkpoints(tmp.str()).size() == 2);
  CHECK_FALSE(fs::exists(root + "/step_00000006.old"));
}
