// Console formatting and metrics.jsonl: exact strings, exact round-tripped
// values, null for non-finite numbers, nothing written by a disabled writer.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/metrics/metrics.h"
#include "core/util/error.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A fresh directory per test, removed at the end of the test.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name) {
    path =
        fs::temp_directory_path() / ("m6_test_metrics_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::vector<std::string> read_lines(const fs::path& file) {
  std::ifstream in(file);
  REQUIRE(in.good());
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

m6::TrainRecord example_record() {
  m6::TrainRecord r;
  r.step = 120;
  r.steps_total = 1000;
  r.loss = 2.34123;
  r.lr = 3e-4;
  r.grad_norm = 0.8123;
  r.tokens_per_s = 41234.0;
  r.elapsed_s = 72.2;
  r.eta_s = 520.0;
  r.dropped_frac = 0.013;
  r.aux_loss = 1.0625;
  r.z_loss = 0.1234567890123;
  r.mfu = 0.0312;
  r.loss_scale = 1024.0;
  r.expert_load = {{10, 0, 30, 0}, {5, 5, 5, 5}};
  return r;
}

}  // namespace

TEST_CASE("format_duration picks seconds, minutes or hours", "[metrics]") {
  CHECK(m6::format_duration(0) == "0s");
  CHECK(m6::format_duration(42) == "42s");
  CHECK(m6::format_duration(59.4) == "59s");
  CHECK(m6::format_duration(59.6) == "1m00s");
  CHECK(m6::format_duration(185) == "3m05s");
  CHECK(m6::format_duration(3599) == "59m59s");
  CHECK(m6::format_duration(3600) == "1h00m");
  CHECK(m6::format_duration(7299) == "2h01m");
  CHECK(m6::format_duration(90000) == "25h00m");
  CHECK(m6::format_duration(-1) == "?");
  CHECK(m6::format_duration(kNaN) == "?");
  CHECK(m6::format_duration(kInf) == "?");
}

TEST_CASE("train line shows every field formatted", "[metrics]") {
  m6::TrainRecord r = example_record();
  CHECK(m6::format_train_line(r) ==
        "step 120/1000 | loss 2.3412 | lr 3.00e-04 | gnorm 0.812 | 41.2k tok/s | MFU 3.1% | "
        "1m12s elapsed, ETA 8m40s | dropped 1.3%");

  // Unknown MFU (NaN) is left out of the line.
  r.mfu = kNaN;

  // Dense model: no expert load, so no dropped share; skipped steps shown when > 0.
  r.expert_load.clear();
  r.skipped_steps = 3;
  r.tokens_per_s = 950;
  CHECK(m6::format_train_line(r) ==
        "step 120/1000 | loss 2.3412 | lr 3.00e-04 | gnorm 0.812 | 950 tok/s | "
        "1m12s elapsed, ETA 8m40s | skipped 3");

  r.skipped_steps = 0;
  r.steps_total = 0;
  r.tokens_per_s = 2.5e6;
  r.eta_s = kNaN;
  CHECK(m6::format_train_line(r) ==
        "step 120 | loss 2.3412 | lr 3.00e-04 | gnorm 0.812 | 2.50M tok/s | "
        "1m12s elapsed, ETA ?");
}

TEST_CASE("eval line", "[metrics]") {
  m6::EvalRecord e;
  e.step = 500;
  e.eval_loss = 2.29814;
  e.elapsed_s = 3725;
  CHECK(m6::format_eval_line(e) == "eval step 500 | eval loss 2.2981 | 1h02m elapsed");
}

TEST_CASE("expert load max over mean per layer", "[metrics]") {
  std::vector<double> v = m6::expert_load_max_over_mean({{10, 0, 30, 0}, {5, 5, 5, 5}, {0, 0}});
  REQUIRE(v.size() == 3);
  CHECK(v[0] == 3.0);  // max 30, mean 10
  CHECK(v[1] == 1.0);
  CHECK(std::isnan(v[2]));  // a layer that saw no token has no balance
}

TEST_CASE("metrics.jsonl parses back line by line with the exact values", "[metrics]") {
  TempDir dir("roundtrip");
  const m6::TrainRecord r = example_record();
  m6::EvalRecord e;
  e.step = 120;
  e.eval_loss = 2.1234567890123457;
  e.elapsed_s = 75.5;
  {
    m6::MetricsWriter w(dir.path.string(), true);
    CHECK(w.enabled());
    CHECK(w.path() == (dir.path / "metrics.jsonl").string());
    w.write_train(r);
    w.write_eval(e);
    w.write_event("delink", json{{"step", 120}, {"groups", 2}});
    // Flushed per record: the file is complete before the writer closes.
    CHECK(read_lines(dir.path / "metrics.jsonl").size() == 3);
  }
  std::vector<std::string> lines = read_lines(dir.path / "metrics.jsonl");
  REQUIRE(lines.size() == 3);
  // "kind" leads each object so a reader can dispatch on the first key.
  CHECK(lines[0].rfind("{\"kind\":\"train\",", 0) == 0);
  CHECK(lines[1].rfind("{\"kind\":\"eval\",", 0) == 0);
  CHECK(lines[2].rfind("{\"kind\":\"delink\",", 0) == 0);

  json t = json::parse(lines[0]);
  CHECK(t.size() == 16);
  CHECK(t["step"].get<int64_t>() == 120);
  CHECK(t["loss"].get<double>() == r.loss);
  CHECK(t["lr"].get<double>() == r.lr);
  CHECK(t["grad_norm"].get<double>() == r.grad_norm);
  CHECK(t["tokens_per_s"].get<double>() == r.tokens_per_s);
  CHECK(t["mfu"].get<double>() == r.mfu);
  CHECK(t["loss_scale"].get<double>() == r.loss_scale);
  CHECK(t["elapsed_s"].get<double>() == r.elapsed_s);
  CHECK(t["eta_s"].get<double>() == r.eta_s);
  CHECK(t["dropped_frac"].get<double>() == r.dropped_frac);
  CHECK(t["aux_loss"].get<double>() == r.aux_loss);
  CHECK(t["z_loss"].get<double>() == r.z_loss);
  CHECK(t["skipped_steps"].get<int64_t>() == 0);
  CHECK(t["expert_load"].get<std::vector<std::vector<int64_t>>>() == r.expert_load);
  CHECK(t["expert_load_max_over_mean"].get<std::vector<double>>() == std::vector<double>{3.0, 1.0});

  json ev = json::parse(lines[1]);
  CHECK(ev.size() == 4);
  CHECK(ev["step"].get<int64_t>() == 120);
  CHECK(ev["eval_loss"].get<double>() == e.eval_loss);
  CHECK(ev["elapsed_s"].get<double>() == e.elapsed_s);

  json d = json::parse(lines[2]);
  CHECK(d == json{{"kind", "delink"}, {"step", 120}, {"groups", 2}});
}

TEST_CASE("a dense record writes empty expert arrays", "[metrics]") {
  TempDir dir("dense");
  m6::TrainRecord r = example_record();
  r.expert_load.clear();
  m6::MetricsWriter(dir.path.string(), true).write_train(r);
  json t = json::parse(read_lines(dir.path / "metrics.jsonl").at(0));
  CHECK(t["expert_load"] == json::array());
  CHECK(t["expert_load_max_over_mean"] == json::array());
}

TEST_CASE("non-finite numbers are written as null", "[metrics]") {
  TempDir dir("nan");
  m6::TrainRecord r = example_record();
  r.loss = kNaN;
  r.grad_norm = kInf;
  r.lr = -kInf;
  r.expert_load = {{0, 0}, {1, 3}};
  m6::EvalRecord e;
  e.eval_loss = kNaN;
  {
    m6::MetricsWriter w(dir.path.string(), true);
    w.write_train(r);
    w.write_eval(e);
    w.write_event("overflow", json{{"scale", kInf}, {"nested", {1.5, kNaN}}});
  }
  std::vector<std::string> lines = read_lines(dir.path / "metrics.jsonl");
  REQUIRE(lines.size() == 3);
  for (const std::string& line : lines) {
    CHECK(line.find("nan") == std::string::npos);
    CHECK(line.find("inf") == std::string::npos);
    CHECK(line.find("NaN") == std::string::npos);
  }
  CHECK(lines[0].find("\"loss\":null") != std::string::npos);
  json t = json::parse(lines[0]);
  CHECK(t["loss"].is_null());
  CHECK(t["grad_norm"].is_null());
  CHECK(t["lr"].is_null());
  CHECK(t["tokens_per_s"].get<double>() == r.tokens_per_s);  // finite values untouched
  CHECK(t["expert_load_max_over_mean"][0].is_null());
  CHECK(t["expert_load_max_over_mean"][1].get<double>() == 1.5);
  CHECK(json::parse(lines[1])["eval_loss"].is_null());
  json o = json::parse(lines[2]);
  CHECK(o["scale"].is_null());
  CHECK(o["nested"][0].get<double>() == 1.5);
  CHECK(o["nested"][1].is_null());
}

TEST_CASE("a disabled writer writes nothing", "[metrics]") {
  TempDir dir("disabled");
  const fs::path run = dir.path / "run";
  m6::MetricsWriter w(run.string(), false);
  CHECK_FALSE(w.enabled());
  w.write_train(example_record());
  w.write_eval(m6::EvalRecord{});
  w.write_event("delink", json{{"step", 1}});
  CHECK_FALSE(fs::exists(run));
}

TEST_CASE("a second writer appends to the file of the run it resumes", "[metrics]") {
  TempDir dir("append");
  m6::EvalRecord e;
  e.step = 1;
  m6::MetricsWriter(dir.path.string(), true).write_eval(e);
  e.step = 2;
  m6::MetricsWriter(dir.path.string(), true).write_eval(e);
  std::vector<std::string> lines = read_lines(dir.path / "metrics.jsonl");
  REQUIRE(lines.size() == 2);
  CHECK(json::parse(lines[0])["step"] == 1);
  CHECK(json::parse(lines[1])["step"] == 2);
}

TEST_CASE("a run directory whose metrics.jsonl cannot be opened is an error naming the path",
          "[metrics]") {
  TempDir dir("unopenable");
  // A directory where the file should be: open() fails even for root.
  fs::create_directories(dir.path / "metrics.jsonl");
  const std::string expected = (dir.path / "metrics.jsonl").string();
  REQUIRE_THROWS_AS(m6::MetricsWriter(dir.path.string(), true), m6::Error);
  REQUIRE_THROWS_WITH(m6::MetricsWriter(dir.path.string(), true), Catch::Contains(expected));
}

TEST_CASE("event fields must be an object without a kind", "[metrics]") {
  TempDir dir("event");
  m6::MetricsWriter w(dir.path.string(), true);
  CHECK_THROWS_AS(w.write_event("delink", json{{"kind", "x"}}), m6::Error);
  CHECK_THROWS_AS(w.write_event("delink", json::array({1, 2})), m6::Error);
  w.write_event("start", json());
  std::vector<std::string> lines = read_lines(dir.path / "metrics.jsonl");
  REQUIRE(lines.size() == 1);
  CHECK(lines[0] == "{\"kind\":\"start\"}");
}
