// Loading valid configs: explicit values, defaults, --set overrides, and the
// JSON form (config_to_json / config_from_json) round trip.
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/config/config.h"
#include "core/util/error.h"

namespace fs = std::filesystem;
using m6::Config;
using m6::ConfigError;

namespace {

// A fresh directory per use, removed at scope exit; tests may run in parallel.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "m6cfg-XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string write(const std::string& name, const std::string& text) const {
    fs::path p = path / name;
    std::ofstream(p) << text;
    return p.string();
  }
};

const char* kFull = R"(# every key, none at its default
model:
  vocab_size: 512
  max_seq_len: 256
  d_model: 96
  n_heads: 6
  n_layers: 6
  d_ff: 384
  moe:
    every: 1
    experts: 8
    router: prototypes
    top_k: 1
    prototypes: 4
    capacity_factor: 1.5
    eval_capacity_factor: 0
    min_capacity: 2
    normalize_gates: false
    aux_loss_coef: 0.02
    z_loss_coef: 1e-4
  sharing:
    groups: 3
    delink_at_step: 500
    delink_optimizer: reset
data:
  train: data/fortunes/train_*.bin
  val: data/fortunes/val_*.bin
train:
  seed: 18446744073709551615
  steps: 2000
  seq_len: 200
  micro_batch: 2
  global_batch: 16
  device: cuda
  threads: 3
  max_skipped_steps: 7
  peak_tflops: 989.5
optim:
  lr: 3e-4
  min_lr: 3.0e-5
  warmup_steps: 50
  decay_steps: 1500
  weight_decay: 0.05
  beta1: 0.8
  beta2: 0.99
  eps: 1e-6
  grad_clip: 0.5
eval:
  every: 250
  batches: 3
log:
  every: 5
  tensorboard: true
precision:
  compute: bf16
  comm: fp16
parallel:
  ep: 2
  timeout_s: 30.5
checkpoint:
  every: 400
  keep: 5
)";

const char* kMinimal = "data:\n  train: a/train_*.bin\n  val: a/val_*.bin\n";

void check_full(const Config& c) {
  CHECK(c.model.vocab_size == 512);
  CHECK(c.model.max_seq_len == 256);
  CHECK(c.model.d_model == 96);
  CHECK(c.model.n_heads == 6);
  CHECK(c.model.n_layers == 6);
  CHECK(c.model.d_ff == 384);
  CHECK(c.model.moe.every == 1);
  CHECK(c.model.moe.experts == 8);
  CHECK(c.model.moe.router == m6::RouterKind::Prototypes);
  CHECK(c.model.moe.top_k == 1);
  CHECK(c.model.moe.prototypes == 4);
  CHECK(c.model.moe.capacity_factor == 1.5);
  CHECK(c.model.moe.eval_capacity_factor == 0.0);
  CHECK(c.model.moe.min_capacity == 2);
  CHECK(c.model.moe.normalize_gates == m6::GateNorm::Off);
  CHECK(c.model.moe.aux_loss_coef == 0.02);
  CHECK(c.model.moe.z_loss_coef == 1e-4);
  CHECK(c.model.sharing.groups == 3);
  CHECK(c.model.sharing.delink_at_step == 500);
  CHECK(c.model.sharing.delink_optimizer == m6::DelinkOptimizer::Reset);
  CHECK(c.data.train == "data/fortunes/train_*.bin");
  CHECK(c.data.val == "data/fortunes/val_*.bin");
  CHECK(c.train.seed == 18446744073709551615ull);
  CHECK(c.train.steps == 2000);
  CHECK(c.train.seq_len == 200);
  CHECK(c.train.micro_batch == 2);
  CHECK(c.train.global_batch == 16);
  CHECK(c.train.device == m6::DeviceKind::Cuda);
  CHECK(c.train.threads == 3);
  CHECK(c.train.max_skipped_steps == 7);
  CHECK(c.optim.lr == 3e-4);
  CHECK(c.optim.min_lr == 3e-5);
  CHECK(c.optim.warmup_steps == 50);
  CHECK(c.optim.decay_steps == 1500);
  CHECK(c.optim.weight_decay == 0.05);
  CHECK(c.optim.beta1 == 0.8);
  CHECK(c.optim.beta2 == 0.99);
  CHECK(c.optim.eps == 1e-6);
  CHECK(c.optim.grad_clip == 0.5);
  CHECK(c.eval.every == 250);
  CHECK(c.eval.batches == 3);
  CHECK(c.log.every == 5);
  CHECK(c.log.tensorboard);
  CHECK(c.train.peak_tflops == 989.5);
  CHECK(c.precision.compute == m6::Precision::Bf16);
  CHECK(c.precision.comm == m6::Precision::Fp16);
  CHECK(c.parallel.ep == 2);
  CHECK(c.parallel.timeout_s == 30.5);
  CHECK(c.checkpoint.every == 400);
  CHECK(c.checkpoint.keep == 5);
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  FAIL("no ConfigError thrown");
  return "";
}

}  // namespace

TEST_CASE("config: a file giving every key loads every value", "[config]") {
  TempDir dir;
  // world 2: global_batch 16 = micro_batch 2 x 2 ranks x 4 accumulation steps.
  Config c = m6::load_config(dir.write("full.yaml", kFull), {}, 2);
  check_full(c);
  CHECK(c.source == (dir.path / "full.yaml").string());
  CHECK(c.accum_steps(2) == 4);
}

TEST_CASE("config: keys left out take the struct's defaults", "[config]") {
  TempDir dir;
  Config c = m6::load_config(dir.write("min.yaml", kMinimal), {}, 1);
  Config d;  // the defaults of config.h
  d.data.train = "a/train_*.bin";
  d.data.val = "a/val_*.bin";
  CHECK(m6::config_to_json(c) == m6::config_to_json(d));
  // A few spelled out, so a change of config.h's defaults is seen here too.
  CHECK(c.model.vocab_size == 256);
  CHECK(c.model.moe.capacity_factor == 1.25);
  CHECK(c.optim.beta2 == 0.95);
  CHECK(c.train.device == m6::DeviceKind::Auto);
  CHECK(c.parallel.timeout_s == 600.0);
  CHECK(c.checkpoint.keep == 2);
}

TEST_CASE("config: an empty section (keys commented out) is allowed", "[config]") {
  TempDir dir;
  Config c = m6::load_config(
      dir.write("e.yaml", std::string(kMinimal) + "model:\n  moe:\n  # every: 2\n"), {}, 1);
  CHECK(c.model.moe.every == 0);
}

TEST_CASE("config: --set overrides apply on top of the file", "[config]") {
  TempDir dir;
  std::string f = dir.write("min.yaml", kMinimal);
  Config c = m6::load_config(
      f,
      {"optim.lr=3e-4", "model.moe.every=2", "model.moe.experts=4", "model.moe.router=prototypes",
       "model.moe.prototypes=2", "train.seq_len=64", "train.seq_len=32", "data.val=b/*.bin",
       "model.moe.normalize_gates=false", "train.seed=7"},
      1);
  CHECK(c.optim.lr == 3e-4);
  CHECK(c.model.moe.every == 2);
  CHECK(c.model.moe.experts == 4);
  CHECK(c.model.moe.router == m6::RouterKind::Prototypes);
  CHECK(c.model.moe.prototypes == 2);
  CHECK(c.model.moe.normalize_gates == m6::GateNorm::Off);
  CHECK(c.train.seq_len == 32);  // the later --set wins
  CHECK(c.data.val == "b/*.bin");
  CHECK(c.data.train == "a/train_*.bin");
  CHECK(c.train.seed == 7u);

  // An override replaces a value the file gave.
  std::string g = dir.write("g.yaml", std::string(kMinimal) + "train:\n  steps: 50\n");
  CHECK(m6::load_config(g, {"train.steps=70"}, 1).train.steps == 70);
  CHECK(m6::load_config(g, {}, 1).train.steps == 50);
}

TEST_CASE("config: --set overrides are checked and named in messages", "[config]") {
  TempDir dir;
  std::string f = dir.write("min.yaml", kMinimal);
  auto msg = [&](std::vector<std::string> sets) {
    return message_of([&] { m6::load_config(f, sets, 1); });
  };

  std::string m = msg({"train.seq_len=1000"});
  CHECK_THAT(m, Catch::Contains("--set train.seq_len=1000: train.seq_len:"));
  CHECK_THAT(m, Catch::Contains("model.max_seq_len (128)"));

  m = msg({"train.steps=abc"});
  CHECK_THAT(m, Catch::Contains("--set train.steps=abc: train.steps: not an integer (got abc)"));

  m = msg({"optim.lrr=0.1"});
  CHECK_THAT(
      m, Catch::Contains("--set optim.lrr=0.1: optim.lrr: unknown key; did you mean optim.lr?"));

  m = msg({"train.lr=0.1"});
  CHECK_THAT(m, Catch::Contains("train.lr: unknown key; did you mean optim.lr?"));

  m = msg({"optim.lr"});
  CHECK_THAT(m, Catch::Contains("--set optim.lr: malformed override"));

  m = msg({"=3"});
  CHECK_THAT(m, Catch::Contains("malformed override"));

  m = msg({"model.moe=2"});
  CHECK_THAT(m, Catch::Contains("model.moe: is a section"));

  m = msg({"train.micro_batch="});
  CHECK_THAT(m, Catch::Contains("--set train.micro_batch=: train.micro_batch: no value"));

  m = msg({"model.moe.router=top1"});
  CHECK_THAT(
      m, Catch::Contains("model.moe.router: unknown value (got top1); allowed: topk|prototypes"));

  m = msg({"train.global_batch=[1, 2]"});
  CHECK_THAT(m, Catch::Contains("train.global_batch: wrong type (got a list)"));

  m = msg({"data.train=\"\""});
  CHECK_THAT(m, Catch::Contains("--set data.train=\"\": data.train: empty"));
}

TEST_CASE("config: JSON has exactly the YAML keys and round-trips", "[config]") {
  TempDir dir;
  Config c = m6::load_config(dir.write("full.yaml", kFull), {}, 2);
  nlohmann::json j = m6::config_to_json(c);

  std::vector<std::string> sections;
  for (auto it = j.begin(); it != j.end(); ++it) sections.push_back(it.key());
  CHECK(sections == std::vector<std::string>{"checkpoint", "data", "eval", "log", "model", "offload",
                                             "optim", "parallel", "precision", "train"});
  CHECK(j["model"].size() == 8);  // 6 keys + moe + sharing
  CHECK(j["model"]["moe"].size() == 11);
  CHECK(j["model"]["sharing"].size() == 3);
  // 9 keys + spike_guard + recompute, device_memory, host_memory, allow_unfit
  CHECK(j["train"].size() == 15);  // + peak_tflops, graphs
  CHECK(j["train"]["graphs"] == "auto");
  CHECK(j["offload"].size() == 3);
  CHECK(j["train"]["recompute"] == "none");
  CHECK(j["train"]["allow_unfit"] == "false");
  CHECK(j["log"].size() == 3);  // every, tensorboard, profile
  CHECK(j["train"]["spike_guard"].size() == 2);
  CHECK(j["optim"].size() == 9);
  CHECK(j["model"]["moe"]["router"] == "prototypes");
  CHECK(j["model"]["moe"]["normalize_gates"] == "false");
  CHECK(j["model"]["sharing"]["delink_optimizer"] == "reset");
  CHECK(j["train"]["device"] == "cuda");
  CHECK(j["precision"]["compute"] == "bf16");
  CHECK(j["precision"]["comm"] == "fp16");
  CHECK(j["train"]["seed"].get<uint64_t>() == 18446744073709551615ull);
  CHECK(j["optim"]["lr"].get<double>() == 3e-4);

  Config back = m6::config_from_json(j);
  check_full(back);
  CHECK(back.source.empty());
  CHECK(m6::config_to_json(back) == j);
  // Through text too, as a manifest is written and read.
  CHECK(m6::config_to_json(m6::config_from_json(nlohmann::json::parse(j.dump()))) == j);

  // Every enum spelling survives the trip.
  Config e;
  e.model.moe.normalize_gates = m6::GateNorm::On;
  e.train.device = m6::DeviceKind::Cpu;
  e.precision.compute = m6::Precision::Fp16;
  e.model.sharing.delink_optimizer = m6::DelinkOptimizer::Copy;
  Config e2 = m6::config_from_json(m6::config_to_json(e));
  CHECK(e2.model.moe.normalize_gates == m6::GateNorm::On);
  CHECK(e2.train.device == m6::DeviceKind::Cpu);
  CHECK(e2.precision.compute == m6::Precision::Fp16);
  CHECK(m6::config_to_json(e)["model"]["moe"]["normalize_gates"] == "true");
}

TEST_CASE("config: config_from_json refuses what it does not understand", "[config]") {
  nlohmann::json j = m6::config_to_json(Config{});
  CHECK(m6::config_from_json(nlohmann::json{{"model", {{"d_model", 64}}}}).model.d_model == 64);

  auto bad = [&](nlohmann::json k) { return message_of([&] { m6::config_from_json(k); }); };
  nlohmann::json k = j;
  k["model"]["moe"]["expertz"] = 3;
  CHECK_THAT(bad(k), Catch::Contains("model.moe.expertz: unknown key"));
  k = j;
  k["model"]["d_model"] = 1.5;
  CHECK_THAT(bad(k), Catch::Contains("model.d_model"));
  k = j;
  k["model"]["vocab_size"] = int64_t(1) << 40;
  CHECK_THAT(bad(k), Catch::Contains("model.vocab_size"));
  k = j;
  k["train"]["seed"] = -1;
  CHECK_THAT(bad(k), Catch::Contains("train.seed"));
  k = j;
  k["model"]["moe"]["router"] = "top1";
  CHECK_THAT(bad(k), Catch::Contains("model.moe.router: unknown value"));
  k = j;
  k["optim"]["lr"] = "fast";
  CHECK_THAT(bad(k), Catch::Contains("optim.lr"));
  k = j;
  k["optim"] = 3;
  CHECK_THAT(bad(k), Catch::Contains("optim: a section must be an object"));
  CHECK_THAT(bad(nlohmann::json::array()), Catch::Contains("expected an object"));
}

TEST_CASE("config: validate_config checks layouts for the given world size", "[config]") {
  Config c;
  c.data.train = "t";
  c.data.val = "v";
  c.model.moe.every = 1;
  c.model.moe.experts = 12;
  c.train.micro_batch = 2;
  c.train.global_batch = 16;
  c.parallel.ep = 4;
  CHECK_NOTHROW(m6::validate_config(c, 8));  // 16 = 2 x 8 x 1; 4 | 8 and 4 | 12

  c.parallel.ep = 8;
  std::string m = message_of([&] { m6::validate_config(c, 8); });
  CHECK_THAT(m, Catch::Contains("parallel.ep: model.moe.experts (12) must be divisible by ep (8)"));
  CHECK_THAT(m, Catch::StartsWith("config: "));  // no file: the message says so

  c.parallel.ep = 3;  // divides 12 experts, not 8 ranks
  CHECK_THAT(message_of([&] { m6::validate_config(c, 8); }),
             Catch::Contains("parallel.ep: ep (3) must divide the world size (8)"));

  c.parallel.ep = 1;
  CHECK_THAT(
      message_of([&] { m6::validate_config(c, 3); }),
      Catch::Contains(
          "global_batch (16) must be a multiple of train.micro_batch (2) x world size (3) = 6"));
  c.source = "exp.yaml";
  CHECK_THAT(message_of([&] { m6::validate_config(c, 3); }),
             Catch::StartsWith("exp.yaml: train.global_batch:"));
  CHECK_THROWS_AS(m6::validate_config(c, 0), ConfigError);

  // Sharing: 4 layers, every layer MoE -> any group count is consistent.
  c.model.n_layers = 4;
  c.model.sharing.groups = 2;
  CHECK_NOTHROW(m6::validate_config(c, 1));
  c.model.moe.every = 2;  // dense, MoE, dense, MoE: groups share (dense, MoE) blocks
  CHECK_NOTHROW(m6::validate_config(c, 1));
  c.model.sharing.groups = 1;
  CHECK_NOTHROW(m6::validate_config(c, 1));
  c.model.sharing.groups = 3;  // more groups than the 2 blocks
  m = message_of([&] { m6::validate_config(c, 1); });
  CHECK_THAT(m, Catch::Contains("groups (3) must be at most the 2 blocks"));
  CHECK_THAT(m, Catch::Contains("allowed: 1..2 or 4 (no sharing)"));
  c.model.sharing.groups = 4;  // every layer its own set: no sharing
  CHECK_NOTHROW(m6::validate_config(c, 1));
  c.model.n_layers = 5;  // a trailing dense layer: no whole blocks
  c.model.sharing.groups = 2;
  m = message_of([&] { m6::validate_config(c, 1); });
  CHECK_THAT(m, Catch::Contains("n_layers must be a multiple of every"));
  c.model.n_layers = 4;
}

TEST_CASE("config: numbers in YAML forms", "[config]") {
  TempDir dir;
  std::string f = dir.write("min.yaml", kMinimal);
  auto lr = [&](const std::string& v) {
    return m6::load_config(f, {"optim.lr=" + v, "optim.min_lr=0"}, 1).optim.lr;
  };
  CHECK(lr("3e-4") == 3e-4);
  CHECK(lr("1") == 1.0);
  CHECK(lr(".5") == 0.5);
  CHECK(lr("+2.5E-3") == 2.5e-3);
  CHECK(lr("!!float 0.25") == 0.25);
  auto steps = [&](const std::string& v) {
    return m6::load_config(f, {"train.steps=" + v}, 1).train.steps;
  };
  CHECK(steps("+12") == 12);
  CHECK(steps("9000000000") == 9000000000LL);  // int64 field: beyond 32 bits is fine
  CHECK_THROWS_AS(steps("9223372036854775808"), ConfigError);  // 2^63
  CHECK_THROWS_AS(steps("1e3"), ConfigError);
  CHECK_THROWS_AS(steps("0x10"), ConfigError);
  CHECK_THROWS_AS(steps("12.0"), ConfigError);
  CHECK_THROWS_AS(lr(".inf"), ConfigError);
  CHECK_THROWS_AS(lr("1e999"), ConfigError);
  CHECK_THROWS_AS(lr("'0.1'"), ConfigError);
}
