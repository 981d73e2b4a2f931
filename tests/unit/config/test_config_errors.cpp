// Bad configs: every ConfigError must name the file, the line (when the key
// came from the file), the dotted key and the value. Checks an inline table
// and every file of tests/cli/bad_configs/ (the files the CLI test feeds to
// m6train), each of which states the key (and line) its message must name.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "core/config/config.h"
#include "core/util/error.h"

namespace fs = std::filesystem;
using m6::ConfigError;

namespace {

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

// Returns the ConfigError message of load_config, or "" (and fails) when it loads.
std::string load_error(const std::string& file, const std::vector<std::string>& sets = {},
                       int world = 1) {
  try {
    m6::load_config(file, sets, world);
  } catch (const ConfigError& e) {
    CHECK(e.code() == m6::ExitCode::Usage);
    return e.what();
  } catch (const std::exception& e) {
    FAIL("not a ConfigError: " << e.what());
  }
  FAIL("loaded without error: " << file);
  return "";
}

// Lines 1-6 of every inline case; the case's own text starts at line 7.
const char* kBase =
    "data:\n"
    "  train: t_*.bin\n"
    "  val: v_*.bin\n"
    "train:\n"
    "  micro_batch: 2\n"
    "  threads: 1\n";

struct BadCase {
  const char* text;  // appended to kBase
  const char* key;   // dotted key the message must name
  int line;          // line it must name (0 = none)
  const char* also;  // further text it must contain
};

const BadCase kCases[] = {
    {"  steps: 12.5\n", "train.steps", 7, "not an integer (got 12.5)"},
    {"  steps: abc\n", "train.steps", 7, "(got abc)"},
    {"  steps: {n: 3}\n", "train.steps", 7, "wrong type (got a map)"},
    {"  seq_len: 2147483648\n", "train.seq_len", 7, "out of range (got 2147483648)"},
    {"  seed: -3\n", "train.seed", 7, "out of range (got -3)"},
    {"  device: gpu\n", "train.device", 7, "allowed: auto|cpu|cuda"},
    {"  micro_batch: 4\n", "train.micro_batch", 7, "duplicate key (first given at line 5)"},
    {"  mirco_batch: 4\n", "train.mirco_batch", 7, "did you mean train.micro_batch?"},
    {"model:\n  moe:\n    every: 1\n    experts: 4\n    normalize_gates: on\n",
     "model.moe.normalize_gates", 11, "allowed: auto|true|false"},
    {"model:\n  moe:\n    expert: 4\n", "model.moe.expert", 9, "did you mean model.moe.experts?"},
    {"model:\n  moe: 4\n", "model.moe", 8, "a section must be a map"},
    {"modell:\n  d_model: 4\n", "modell", 7, "did you mean model?"},
    {"model:\n  vocab_size: 65537\n", "model.vocab_size", 8, "allowed: 2..65536"},
    {"model:\n  d_model: 130\n", "model.n_heads", 8,
     "model.d_model (130) must be divisible by n_heads (4)"},
    {"model:\n  n_heads: 3\n", "model.n_heads", 8, "model.d_model (128)"},
    {"model:\n  max_seq_len: 64\n", "train.seq_len", 8,
     "seq_len (128) is above the position table model.max_seq_len (64)"},
    {"  global_batch: 5\n", "train.global_batch", 7,
     "global_batch (5) must be a multiple of train.micro_batch (2) x world size (1) = 2"},
    {"model:\n  moe:\n    experts: 8\n", "model.moe.experts", 9, "MoE is off"},
    {"model:\n  moe:\n    every: 1\n    experts: 4\n    top_k: 5\n", "model.moe.top_k", 11,
     "allowed: 1..4"},
    {"model:\n  moe:\n    every: 1\n    experts: 6\n    router: prototypes\n    prototypes: 4\n",
     "model.moe.prototypes", 12, "model.moe.experts (6) must be divisible by prototypes (4)"},
    {"model:\n  n_layers: 4\n  moe:\n    every: 3\n    experts: 2\n  sharing:\n    groups: 1\n",
     "model.sharing.groups", 13, "n_layers must be a multiple of every; allowed: groups = 4"},
    {"model:\n  n_layers: 6\n  moe:\n    every: 3\n    experts: 2\n  sharing:\n    groups: 3\n",
     "model.sharing.groups", 13, "must be at most the 2 blocks of model.moe.every (3) layers"},
    {"  steps: 10\nmodel:\n  sharing:\n    groups: 2\n    delink_at_step: 10\n",
     "model.sharing.delink_at_step", 11, "must be below train.steps (10)"},
    {"optim:\n  lr: 1e-4\n  min_lr: 2e-4\n", "optim.min_lr", 9, "is above optim.lr"},
    {"optim:\n  beta2: 1\n", "optim.beta2", 8, "allowed: [0, 1)"},
    {"  device: cpu\nprecision:\n  compute: fp16\n  loss_scale:\n    init: 0.5\n",
     "precision.loss_scale.init", 11, "(got 0.5)"},
    {"precision:\n  loss_scale:\n    backoff_factor: 1\n", "precision.loss_scale.backoff_factor", 9,
     "strictly between 0 and 1"},
    {"parallel:\n  ep: 2\n", "parallel.ep", 8, "must divide the world size (1)"},
    {"checkpoint:\n  keep: 0\n", "checkpoint.keep", 8, "(got 0)"},
    {"log:\n  every: 0\n", "log.every", 8, "(got 0)"},
    {"data:\n  val: x\n", "data", 7, "duplicate key (first given at line 1)"},
    {"model.d_model: 64\n", "model.d_model", 7, "a key must not contain '.'"},
    // A default that conflicts with a given key: the message points at the given one.
    {"model:\n  n_layers: 2\n  moe:\n    every: 3\n", "model.moe.every", 10, "allowed: 0..2"},
};

std::string first_lines(const std::string& path, int n) {
  std::ifstream in(path);
  std::string out, l;
  for (int i = 0; i < n && std::getline(in, l); ++i) out += l + "\n";
  return out;
}

// The value of the header comment "# NAME: VALUE" in the first lines of PATH.
std::string header(const std::string& path, const std::string& name) {
  std::istringstream in(first_lines(path, 5));
  std::string l, tag = "# " + name + ": ";
  while (std::getline(in, l))
    if (l.rfind(tag, 0) == 0) return l.substr(tag.size());
  return "";
}

}  // namespace

TEST_CASE("config errors: each bad input names file, line, key and value", "[config]") {
  TempDir dir;
  int n = 0;
  for (const BadCase& bc : kCases) {
    std::string file =
        dir.write("case" + std::to_string(n++) + ".yaml", std::string(kBase) + bc.text);
    std::string m = load_error(file);
    INFO("case text:\n" << bc.text << "message: " << m);
    CHECK_THAT(m, Catch::Contains(std::string(bc.key) + ":"));
    CHECK_THAT(m, Catch::Contains(file + ":" + std::to_string(bc.line) + ": " + bc.key));
    CHECK_THAT(m, Catch::Contains(bc.also));
  }
}

TEST_CASE("config errors: several parse problems are reported together", "[config]") {
  TempDir dir;
  std::string f = dir.write("two.yaml", std::string(kBase) + "  steps: x\n  lrr: 1\n");
  std::string m = load_error(f);
  CHECK_THAT(m, Catch::Contains(f + ":7: train.steps:"));
  CHECK_THAT(m, Catch::Contains(f + ":8: train.lrr: unknown key"));
}

TEST_CASE("config errors: missing, empty, unreadable and malformed files", "[config]") {
  TempDir dir;
  std::string missing = (dir.path / "nope.yaml").string();
  CHECK_THAT(load_error(missing), Catch::Contains(missing + ": config file not found"));
  CHECK_THAT(load_error(dir.path.string()), Catch::Contains("not a regular file"));

  std::string empty = dir.write("empty.yaml", "");
  CHECK_THAT(load_error(empty),
             Catch::Contains(empty + ": the config is empty; required: data.train"));

  std::string syntax = dir.write("syntax.yaml", std::string(kBase) + "  steps: [1, 2\n");
  std::string m = load_error(syntax);
  CHECK_THAT(m, Catch::Contains(syntax + ":"));
  CHECK_THAT(m, Catch::Contains("YAML syntax error"));

  std::string scalar = dir.write("scalar.yaml", "just text\n");
  CHECK_THAT(load_error(scalar), Catch::Contains(scalar + ":1: the top level must be a map"));

  std::string no_val = dir.write("noval.yaml", "data:\n  train: t\n");
  CHECK_THAT(load_error(no_val), Catch::Contains(no_val + ": data.val: required key is missing"));
}

TEST_CASE("config errors: every file of tests/cli/bad_configs is refused naming its key",
          "[config]") {
  const fs::path dir = fs::path(M6_SOURCE_DIR) / "tests" / "cli" / "bad_configs";
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".yaml") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() >= 25);

  for (const fs::path& p : files) {
    const std::string expect = header(p.string(), "expect");
    const std::string line = header(p.string(), "line");
    INFO("file: " << p.filename().string());
    REQUIRE_FALSE(expect.empty());
    std::string m = load_error(p.string());
    INFO("message: " << m);
    CHECK_THAT(m, Catch::Contains(expect));
    CHECK_THAT(m, Catch::Contains(p.filename().string()));
    if (!line.empty()) CHECK_THAT(m, Catch::Contains(p.string() + ":" + line + ": " + expect));
  }
}
