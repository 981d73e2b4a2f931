// Subcommands that live in their own file under app/: each adds its CLI11
// subcommand (options bound to an args struct) and runs it, returning the
// exit code. Errors are thrown and mapped to exit codes by main.cpp.
#pragma once
#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

namespace m6 {

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
