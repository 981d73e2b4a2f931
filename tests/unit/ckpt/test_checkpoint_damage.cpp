// Damaged checkpoints (issue item 6): each way a checkpoint directory can be
// broken is a CheckpointError whose message names the file at fault; and the
// resume decisions built on that (auto falls back past a damaged newest one,
// a path is all or nothing, the config must agree on the model).
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>

#include "ckpt_test_util.h"
#include "core/ckpt/checkpoint.h"
#include "core/ckpt/resume.h"
#include "core/parallel/comm.h"
#include "core/util/error.h"
#include "core/util/sha256.h"

using namespace m6;
using namespace m6::test;
using Catch::Matchers::Contains;

namespace {

struct Fixture {
  TempDir tmp;
  Config cfg = small_config(1);
  std::unique_ptr<Backend> be = make_cpu_backend(1);
  Model model{cfg, *be, experts_of(cfg, 0)};
  std::string dir;

  explicit Fixture(const std::string& tag) : tmp(tag) {
    fill_model(model, 3);
    TrainState st;
    for (int64_t s : {4, 8}) {
      st.step = s;
      dir = save_checkpoint(tmp.str(), cfg, st, *be, model.chunks());
    }
  }
  std::string file(const std::string& name) const { return dir + "/" + name; }
  nlohmann::json manifest() const {
    std::ifstream in(file("manifest.json"));
    return nlohmann::json::parse(in);
  }
  void write_manifest(const nlohmann::json& j) const {
    std::ofstream(file("manifest.json")) << j.dump(2);
  }
  // Loads `dir` into a fresh model; returns the error message ("" if it loaded).
  std::string load_error() {
    Model m(cfg, *be, experts_of(cfg, 0));
    try {
      load_checkpoint(dir, *be, m.chunks(), LoadParts::WeightsAndOptimizer);
    } catch (const CheckpointError& e) {
      return e.what();
    }
    return "";
  }
};

void flip_byte(const std::string& path, std::streamoff at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at);
  char c = 0;
  f.read(&c, 1);
  c ^= 0x10;
  f.seekp(at);
  f.write(&c, 1);
}

}  // namespace

TEST_CASE("damage: an intact checkpoint loads", "[ckpt][damage]") {
  Fixture fx("intact");
  CHECK(fx.load_error() == "");
  CHECK_NOTHROW(read_manifest(fx.dir, Verify::Full));
}

TEST_CASE("damage: a truncated file is refused by size, naming it", "[ckpt][damage]") {
  Fixture fx("truncated");
  const std::string f = fx.file("experts-ep0.adam_v.safetensors");
  fs::resize_file(f, fs::file_size(f) - 10);
  CHECK_THAT(fx.load_error(), Contains(f) && Contains("truncated"));
}

TEST_CASE("damage: a flipped bit is refused by sha256, naming the file", "[ckpt][damage]") {
  Fixture fx("bitflip");
  const std::string f = fx.file("dense.weights.safetensors");
  flip_byte(f, static_cast<std::streamoff>(fs::file_size(f) - 3));  // in the tensor data
  CHECK_THAT(fx.load_error(), Contains(f) && Contains("sha256"));
  CHECK_THROWS_WITH(read_manifest(fx.dir, Verify::Full), Contains(f) && Contains("sha256"));
  CHECK_NOTHROW(read_manifest(fx.dir, Verify::Sizes));  // the size is unchanged
}

TEST_CASE("damage: a missing file is refused, naming it", "[ckpt][damage]") {
  Fixture fx("missing");
  fs::remove(fx.file("experts-ep0.weights.safetensors"));
  CHECK_THAT(fx.load_error(), Contains("experts-ep0.weights.safetensors") && Contains("missing"));
}

TEST_CASE("damage: an extra file is refused, naming it", "[ckpt][damage]") {
  Fixture fx("extra");
  std::ofstream(fx.file("stray.bin")) << "x";
  CHECK_THAT(fx.load_error(), Contains("stray.bin") && Contains("extra file"));
}

TEST_CASE("damage: bad manifests are refused, naming manifest.json", "[ckpt][damage]") {
  Fixture fx("manifest");
  const auto good = fx.manifest();
  const std::string mpath = fx.file("manifest.json");
  SECTION("not JSON") { std::ofstream(mpath) << "{\"format\": \"m6train-checkpoint\", "; }
  SECTION("missing") { fs::remove(mpath); }
  SECTION("wrong format") {
    auto j = good;
    j["format"] = "something-else";
    fx.write_manifest(j);
  }
  SECTION("format of the wrong type") {
    auto j = good;
    j["format"] = 3;
    fx.write_manifest(j);
  }
  SECTION("no step") {
    auto j = good;
    j.erase("step");
    fx.write_manifest(j);
  }
  SECTION("negative step") {
    auto j = good;
    j["step"] = -1;
    fx.write_manifest(j);
  }
  SECTION("file entry without sha256") {
    auto j = good;
    j["files"]["dense.weights.safetensors"].erase("sha256");
    fx.write_manifest(j);
  }
  SECTION("a file name that escapes the directory") {
    auto j = good;
    j["files"]["../escape"] = j["files"]["dense.weights.safetensors"];
    fx.write_manifest(j);
  }
  SECTION("a part without its expert files") {
    auto j = good;
    j["files"].erase("experts-ep0.adam_m.safetensors");
    fx.write_manifest(j);
  }
  SECTION("unreadable config") {
    auto j = good;
    j["config"]["model"]["d_model"] = "wide";
    fx.write_manifest(j);
  }
  CHECK_THAT(fx.load_error(), Contains(mpath));
}

TEST_CASE("damage: a future format version is refused with an upgrade hint", "[ckpt][damage]") {
  Fixture fx("future");
  auto j = fx.manifest();
  j["format_version"] = kCheckpointFormatVersion + 1;
  fx.write_manifest(j);
  CHECK_THAT(fx.load_error(), Contains("manifest.json") && Contains("newer m6train"));
}

TEST_CASE("damage: a tensor whose shape differs from the config is refused, naming the file",
          "[ckpt][damage]") {
  Fixture fx("shape");
  // Rewrite the dense weights with one tensor of another shape and a manifest
  // that matches the new file, so only the shape check can catch it.
  const std::string f = fx.file("dense.weights.safetensors");
  std::vector<StTensorView> views;
  std::vector<std::vector<float>> keep;
  {
    SafetensorsFile src(f);
    for (const auto& name : src.names()) {
      StTensorView v = src.get(name);
      int64_t n = 1;
      for (auto d : v.shape) n *= d;
      const float* p = static_cast<const float*>(v.data);
      keep.emplace_back(p, p + n);
      if (name == "ln_f.weight") v.shape = {2, static_cast<int64_t>(n / 2)};
      views.push_back({name, v.dtype, v.shape, keep.back().data()});
    }
  }
  write_safetensors(f, views, {});
  auto j = fx.manifest();
  j["files"]["dense.weights.safetensors"]["size"] = fs::file_size(f);
  j["files"]["dense.weights.safetensors"]["sha256"] = sha256_file(f);
  fx.write_manifest(j);
  CHECK_THAT(fx.load_error(), Contains(f) && Contains("ln_f.weight") && Contains("[2,4]"));
}

TEST_CASE("resume: model shape and data order are fixed, the schedule may change",
          "[ckpt][resume]") {
  CHECK(resume_key_is_fixed("model.d_model"));
  CHECK(resume_key_is_fixed("model.moe.experts"));
  CHECK(resume_key_is_fixed("train.seed"));
  CHECK(resume_key_is_fixed("train.global_batch"));
  CHECK_FALSE(resume_key_is_fixed("train.steps"));
  CHECK_FALSE(resume_key_is_fixed("optim.lr"));
  CHECK_FALSE(resume_key_is_fixed("parallel.ep"));
  CHECK_FALSE(resume_key_is_fixed("model.moe.capacity_factor"));

  Fixture fx("config");
  const auto man = read_manifest(fx.dir);
  Config c = fx.cfg;
  c.optim.lr = 1e-4;
  c.train.steps = 5000;
  c.checkpoint.every = 7;
  CHECK_NOTHROW(check_resume_config(man, fx.dir, c));
  c.model.d_ff = 32;
  c.train.seed = 99;
  CHECK_THROWS_WITH(check_resume_config(man, fx.dir, c), Contains("manifest.json") &&
                                                             Contains("model.d_ff 16 -> 32") &&
                                                             Contains("train.seed 1234 -> 99"));
  CHECK_THROWS_AS(check_resume_config(man, fx.dir, c), CheckpointError);
}

TEST_CASE("resume: auto falls back past a damaged newest checkpoint and sets it aside",
          "[ckpt][resume]") {
  Fixture fx("auto");
  fs::resize_file(fx.file("dense.adam_m.safetensors"), 100);
  auto comm = make_self_comm();
  Model m(fx.cfg, *fx.be, experts_of(fx.cfg, 0));
  const ResumeResult r =
      resume_training(fx.tmp.str(), {ResumeMode::Auto, ""}, fx.cfg, *fx.be, m.chunks(), *comm);
  CHECK(r.resumed);
  CHECK(r.state.step == 4);
  CHECK(fs::exists(fx.dir + ".corrupt"));
  CHECK(list_checkpoints(fx.tmp.str()).back().step == 4);
}

TEST_CASE("resume: the flag's modes", "[ckpt][resume]") {
  Fixture fx("modes");
  auto comm = make_self_comm();
  Model m(fx.cfg, *fx.be, experts_of(fx.cfg, 0));
  const std::string run = fx.tmp.str();
  auto resume = [&](ResumeRequest req, const std::string& run_dir) {
    return resume_training(run_dir, req, fx.cfg, *fx.be, m.chunks(), *comm);
  };
  CHECK(parse_resume_flag("").mode == ResumeMode::None);
  CHECK(parse_resume_flag("auto").mode == ResumeMode::Auto);
  CHECK(parse_resume_flag("runs/x/checkpoints/step_00000004").mode == ResumeMode::Path);

  // None on a run directory that holds checkpoints: refused (usage error).
  CHECK_THROWS_AS(resume({ResumeMode::None, ""}, run), ConfigError);
  // Auto on an empty run directory: a fresh start.
  TempDir empty("modes_empty");
  CHECK_FALSE(resume({ResumeMode::Auto, ""}, empty.str()).resumed);
  // Path: that checkpoint; newer ones of the run are set aside.
  const std::string older = run + "/checkpoints/step_00000004";
  const ResumeResult r = resume({ResumeMode::Path, older}, run);
  CHECK(r.state.step == 4);
  CHECK(fs::exists(fx.dir + ".abandoned"));
  // Path: missing, uncommitted, or damaged is an error, never a fallback.
  CHECK_THROWS_WITH(resume({ResumeMode::Path, run + "/nope"}, run), Contains(run + "/nope"));
  fs::create_directories(run + "/checkpoints/step_00000009.tmp");
  CHECK_THROWS_WITH(resume({ResumeMode::Path, run + "/checkpoints/step_00000009.tmp"}, run),
                    Contains("uncommitted"));
  fs::remove(older + "/dense.weights.safetensors");
  CHECK_THROWS_AS(resume({ResumeMode::Path, older}, run), CheckpointError);
  // Auto when every committed checkpoint is damaged: an error listing them.
  CHECK_THROWS_WITH(resume({ResumeMode::Auto, ""}, run), Contains("no committed checkpoint"));
}
