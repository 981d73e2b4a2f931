// m6train: the command line. Subcommands: train (the default), data build,
// export, debug-step. Every error below app/ is an exception; this file maps
// it to a message and an exit code (DESIGN.md section 7) -- nothing else exits.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <filesystem>
#include <new>
#include <string>
#include <vector>

#include "core/config/config.h"
#include "core/data/dataset.h"
#include "core/train/export.h"
#include "core/train/trainer.h"
#include "core/util/error.h"
#include "core/util/log.h"

namespace {

std::string default_run_dir(const std::string& config_path) {
  return "runs/" + std::filesystem::path(config_path).stem().string();
}

int run(int argc, char** argv) {
  CLI::App app{"m6train: pretrain Mixture-of-Experts transformers (DP+EP, expert prototyping, "
               "Pseudo-to-Real) from a YAML experiment file"};
  app.set_version_flag("--version", std::string("m6train ") + M6_VERSION);
  app.require_subcommand(0, 1);

  std::string config_path, run_dir;
  std::vector<std::string> overrides;
  int64_t max_steps = -1;
  app.add_option("--config", config_path, "experiment YAML file (train)");
  app.add_option("--set", overrides, "override a config key: --set optim.lr=3e-4 (repeatable)");
  app.add_option("--run-dir", run_dir, "where config.json, metrics.jsonl and checkpoints go "
                                       "(default: runs/<config name>)");
  app.add_option("--max-steps", max_steps, "stop after N steps of this invocation")
      ->check(CLI::NonNegativeNumber);

  auto* data = app.add_subcommand("data", "token data tools");
  data->require_subcommand(1);
  auto* build = data->add_subcommand("build", "tokenise text files (bytes, vocab 256) into shards");
  std::vector<std::string> inputs;
  std::string output;
  double val_fraction = 0.05;
  build->add_option("--input", inputs, "input text files")->required()->expected(1, -1);
  build->add_option("--output", output, "output directory for train_*.bin and val_*.bin")->required();
  build->add_option("--val-fraction", val_fraction, "share of each file held out (default 0.05)");

  auto* exp = app.add_subcommand("export", "write a run's latest weights as one .safetensors");
  std::string exp_run, exp_out;
  exp->add_option("--run-dir", exp_run, "the run directory")->required();
  exp->add_option("--out", exp_out, "output .safetensors file")->required();

  auto* dbg = app.add_subcommand("debug-step", "loss and gradients of one micro-batch (reference tests)");
  std::string dbg_config, dbg_out;
  std::vector<std::string> dbg_overrides;
  dbg->add_option("--config", dbg_config, "experiment YAML file")->required();
  dbg->add_option("--set", dbg_overrides, "override a config key (repeatable)");
  dbg->add_option("--out", dbg_out, "output directory")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);  // --help, --version
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return static_cast<int>(m6::ExitCode::Usage);
  }

  if (*build) {
    const auto s = m6::build_corpus(inputs, output, val_fraction);
    std::printf("data: %lld train tokens in %zu shard(s), %lld val tokens in %zu shard(s) -> %s\n",
                static_cast<long long>(s.train_tokens), s.train_files.size(),
                static_cast<long long>(s.val_tokens), s.val_files.size(), output.c_str());
    return 0;
  }
  if (*exp) {
    const std::string ckpt = m6::export_run(exp_run, exp_out);
    std::printf("export: %s -> %s\n", ckpt.c_str(), exp_out.c_str());
    return 0;
  }
  if (*dbg) {
    const m6::Config cfg = m6::load_config(dbg_config, dbg_overrides, 1);
    m6::debug_step(cfg, dbg_out);
    std::printf("debug-step: wrote %s\n", dbg_out.c_str());
    return 0;
  }
  if (config_path.empty()) {
    std::fprintf(stderr, "m6train: --config FILE is required to train (see m6train --help)\n");
    return static_cast<int>(m6::ExitCode::Usage);
  }
  const m6::Config cfg = m6::load_config(config_path, overrides, 1);
  m6::RunOptions opt;
  opt.run_dir = run_dir.empty() ? default_run_dir(config_path) : run_dir;
  opt.max_steps = max_steps;
  const auto sum = m6::train(cfg, opt);
  std::printf("done: %lld steps, eval loss %.4f -> %.4f, run directory %s\n",
              static_cast<long long>(sum.steps), sum.first_eval_loss, sum.final_eval_loss,
              sum.run_dir.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const m6::Error& e) {
    m6::log_error(e.what());
    return static_cast<int>(e.code());
  } catch (const std::bad_alloc&) {
    m6::log_error("out of memory; reduce train.micro_batch, train.seq_len or the model size");
    return static_cast<int>(m6::ExitCode::Internal);
  } catch (const std::exception& e) {
    m6::log_error(std::string("internal error: ") + e.what());
    return static_cast<int>(m6::ExitCode::Internal);
  } catch (...) {
    m6::log_error("internal error: unknown exception");
    return static_cast<int>(m6::ExitCode::Internal);
  }
}
