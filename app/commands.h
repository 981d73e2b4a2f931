// The subcommand drivers of m6train, one file each (app/cmd_*.cpp); app/main.cpp
// parses the command line and calls them. Each throws m6::Error subclasses,
// which main maps to exit codes.
#pragma once
#include <CLI/CLI.hpp>

#include <cstdint>
#include <exception>
#include <string>

#include "core/config/config.h"
#include "core/model/params.h"
#include "core/model/sharing.h"

namespace m6 {

// `m6train export --run-dir DIR --out FILE [--step N]`: the latest checkpoint
// of DIR, or its committed checkpoint of step N (step < 0: the latest).
// Returns the checkpoint exported.
std::string export_run(const std::string& run_dir, const std::string& out_path, int64_t step = -1);

// `m6train debug-step`: initialise the model, run forward and backward on the
// micro-batch 0 of step 0, and write model.safetensors (the export),
// batch.safetensors (inputs, targets), grads.safetensors and result.json to
// out_dir. The PyTorch reference test reads these.
void debug_step(const Config& cfg, const std::string& out_dir);

// `m6train delink --from CHECKPOINT --config REAL.yaml --out RUN_DIR`: the
// offline half of Pseudo-to-Real (M6-10T). Reads a checkpoint of a pseudo
// model (layers sharing parameter sets), gives every logical layer its own
// copy of its set's weights -- Adam moments copied or zeroed as the real
// config's model.sharing.delink_optimizer says -- and writes a checkpoint of
// the real model at the same step, from which `m6train --config REAL.yaml
// --run-dir RUN_DIR --resume auto` continues. The real config must describe
// the same model and data order as the pseudo one, except for sharing.

struct DelinkReport {
  std::string from_dir;  // the pseudo checkpoint read
  std::string out_dir;   // the real checkpoint written
  int64_t step = 0;
  int pseudo_groups = 0;
  ParamCounts pseudo, real;
  DelinkOptimizer optimizer = DelinkOptimizer::Copy;
};

// FROM is a checkpoint directory (holding manifest.json) or a run directory
// (its latest checkpoint). OUT_RUN_DIR must not hold checkpoints yet.
// Throws CheckpointError for an unreadable or non-pseudo checkpoint and
// ConfigError when REAL does not match it.
DelinkReport delink_checkpoint(const std::string& from, const Config& real,
                               const std::string& out_run_dir);

// A CLI11 check whose message names the value: "--temperature: must be a
// number >= 0 (got -1)" rather than CLI11's range message.
inline CLI::Validator non_negative() {
  return CLI::Validator(
      [](std::string& s) {
        try {
          size_t used = 0;
          const double v = std::stod(s, &used);
          if (used == s.size() && v >= 0) return std::string();
        } catch (const std::exception&) {
        }
        return "must be a number >= 0 (got " + s + ")";
      },
      ">= 0");
}

struct GenerateArgs {
  std::string run_dir;
  std::string prompt = "\n";
  int tokens = 200;
  double temperature = 0.8;
  int top_k = 0;
  int64_t seed = -1;  // < 0: from the clock (printed)
  int threads = 1;    // a decode step is many small ops: one thread is fastest for small models
};
CLI::App* add_generate_command(CLI::App& app, GenerateArgs& a);
int run_generate(const GenerateArgs& a);

struct EvalArgs {
  std::string run_dir;
  std::string data;  // "" = the run's data.val
  int batches = 0;
  int threads = 0;
};
CLI::App* add_eval_command(CLI::App& app, EvalArgs& a);
int run_eval(const EvalArgs& a);

}  // namespace m6
