// m6train: the command line. Subcommands: train (the default), data build,
// export, debug-step, delink, generate and eval (app/cmd_*.cpp). Every error
// below app/ is an exception; this file maps it to a message and an exit code
// (DESIGN.md section 7) -- nothing else exits.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <new>
#include <string>
#include <vector>

#include "app/commands.h"
#include "core/config/config.h"
#include "core/data/dataset.h"
#include "core/data/tokenizer.h"
#include "core/parallel/mpi_session.h"
#include "core/plan/dry_run.h"
#include "core/train/preempt.h"
#include "core/train/trainer.h"
#include "core/util/bytes.h"
#include "core/util/error.h"
#include "core/util/log.h"

namespace {

std::string default_run_dir(const std::string& config_path) {
  return "runs/" + std::filesystem::path(config_path).stem().string();
}

int run(int argc, char** argv, m6::MpiSession& mpi, m6::StopSignals& stop_signals) {
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
      ->check(CLI::Validator(
          [](std::string& s) {
            return !s.empty() && s[0] != '-' ? std::string()
                                             : "must be a whole number >= 0 (got " + s + ")";
          },
          "N >= 0"));
  std::string resume;
  app.add_option("--resume", resume,
                 "auto: continue from the newest committed checkpoint of --run-dir (a fresh "
                 "start if there is none); PATH: from that checkpoint directory");
  bool dry_run = false;
  int dry_world = 1;
  auto* world_opt = app.add_option("--world", dry_world,
                                   "with --dry-run: the world size (ranks) to validate for")
                        ->check(CLI::PositiveNumber);
  std::string dev_mem, host_mem;
  bool dry_json = false;
  app.add_option("--device-memory", dev_mem,
                 "with --dry-run: device memory per rank for the fit check, e.g. 80GiB");
  app.add_option("--host-memory", host_mem,
                 "with --dry-run: host memory per rank for the fit check, e.g. 512GiB");
  app.add_flag("--json", dry_json, "with --dry-run: print the report as JSON");
  app.add_flag("--dry-run", dry_run,
               "validate --config for --world ranks and print parameter counts, the expert "
               "split and bytes per rank, without opening data or allocating the model");

  auto* data = app.add_subcommand("data", "token data tools");
  data->require_subcommand(1);
  auto* build = data->add_subcommand("build", "tokenise text files into token shards");
  std::vector<std::string> inputs;
  std::string output;
  double val_fraction = 0.05;
  std::string tokenizer_spec = "bytes";
  build->add_option("--tokenizer", tokenizer_spec,
                    "bytes (each UTF-8 byte, vocab 256; the default), gpt2 (GPT-2's BPE; "
                    "vocabulary from $M6_GPT2_DIR), gpt2:DIR (encoder.json + vocab.bpe in DIR) "
                    "or spm:MODEL (a SentencePiece model file)");
  build->add_option("--input", inputs, "input text files")->required()->expected(1, -1);
  build->add_option("--output", output, "output directory for train_*.bin and val_*.bin")->required();
  build->add_option("--val-fraction", val_fraction, "share of each file held out (default 0.05)");

  auto* exp = app.add_subcommand("export", "write a run's weights as one .safetensors");
  std::string exp_run, exp_out;
  int64_t exp_step = -1;
  exp->add_option("--run-dir", exp_run, "the run directory")->required();
  exp->add_option("--out", exp_out, "output .safetensors file")->required();
  exp->add_option("--step", exp_step, "the committed checkpoint of this step (default: the latest)")
      ->check(CLI::NonNegativeNumber);

  auto* dbg = app.add_subcommand("debug-step", "loss and gradients of one micro-batch (reference tests)");
  std::string dbg_config, dbg_out;
  std::vector<std::string> dbg_overrides;
  dbg->add_option("--config", dbg_config, "experiment YAML file")->required();
  dbg->add_option("--set", dbg_overrides, "override a config key (repeatable)");
  dbg->add_option("--out", dbg_out, "output directory")->required();

  auto* dl = app.add_subcommand("delink", "Pseudo-to-Real: turn a checkpoint of a layer-sharing "
                                          "model into one of the real model");
  std::string dl_from, dl_config, dl_out;
  std::vector<std::string> dl_overrides;
  int dl_world = 1;
  dl->add_option("--from", dl_from, "pseudo checkpoint directory, or a run directory (its latest)")
      ->required();
  dl->add_option("--config", dl_config, "the real model's YAML (model.sharing.groups: 0)")->required();
  dl->add_option("--set", dl_overrides, "override a key of the real config (repeatable)");
  dl->add_option("--out", dl_out, "run directory for the real checkpoint (resume it with "
                                  "--run-dir DIR --resume auto)")->required();
  dl->add_option("--world", dl_world, "world size the real config is validated for (default 1)")
      ->check(CLI::PositiveNumber);

  m6::GenerateArgs gen_args;
  auto* gen = m6::add_generate_command(app, gen_args);
  m6::EvalArgs eval_args;
  auto* evl = m6::add_eval_command(app, eval_args);

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    stop_signals.release();
    return app.exit(e);  // --help, --version
  } catch (const CLI::ParseError& e) {
    stop_signals.release();
    app.exit(e);
    return static_cast<int>(m6::ExitCode::Usage);
  }
  // Only training saves on a stop signal; any other command ends as usual.
  if (*build || *exp || *dbg || *dl || dry_run || config_path.empty()) stop_signals.release();

  if (*build) {
    const auto tokenizer = m6::make_tokenizer(tokenizer_spec);
    const auto s = m6::build_corpus(inputs, output, val_fraction, *tokenizer);
    std::printf("data: %lld train tokens in %zu shard(s), %lld val tokens in %zu shard(s), "
                "tokenizer %s (vocab %d) -> %s\n",
                static_cast<long long>(s.train_tokens), s.train_files.size(),
                static_cast<long long>(s.val_tokens), s.val_files.size(),
                tokenizer->name().c_str(), s.vocab, output.c_str());
    return 0;
  }
  if (*gen) return m6::run_generate(gen_args);
  if (*evl) return m6::run_eval(eval_args);
  if (*exp) {
    const std::string ckpt = m6::export_run(exp_run, exp_out, exp_step);
    std::printf("export: %s -> %s\n", ckpt.c_str(), exp_out.c_str());
    return 0;
  }
  if (*dbg) {
    const m6::Config cfg = m6::load_config(dbg_config, dbg_overrides, 1);
    m6::debug_step(cfg, dbg_out);
    std::printf("debug-step: wrote %s\n", dbg_out.c_str());
    return 0;
  }
  if (*dl) {
    const m6::Config real = m6::load_config(dl_config, dl_overrides, dl_world);
    const auto r = m6::delink_checkpoint(dl_from, real, dl_out);
    std::printf("delink: %s (step %lld, %d shared set(s), %lld parameters) -> %s (%lld parameters, "
                "Adam moments %s)\n",
                r.from_dir.c_str(), static_cast<long long>(r.step), r.pseudo_groups,
                static_cast<long long>(r.pseudo.unique), r.out_dir.c_str(),
                static_cast<long long>(r.real.unique), m6::delink_optimizer_name(r.optimizer));
    return 0;
  }
  if ((*world_opt || dry_json || !dev_mem.empty() || !host_mem.empty()) && !dry_run) {
    std::fprintf(stderr, "m6train: --world, --json, --device-memory and --host-memory are for "
                         "--dry-run (a training run's world size comes from the launcher: mpirun "
                         "-n W; its memory from train.device_memory / train.host_memory)\n");
    return static_cast<int>(m6::ExitCode::Usage);
  }
  if (config_path.empty()) {
    std::fprintf(stderr, "m6train: --config FILE is required to train (see m6train --help)\n");
    return static_cast<int>(m6::ExitCode::Usage);
  }
  if (dry_run) {  // before MPI, data and the model: a laptop checks a 512-GPU config
    const m6::Config cfg = m6::load_config(config_path, overrides, dry_world);
    int64_t caps[2] = {0, 0};
    const std::string* texts[2] = {&dev_mem, &host_mem};
    const char* names[2] = {"--device-memory", "--host-memory"};
    for (int i = 0; i < 2; ++i) {
      if (texts[i]->empty()) continue;
      const auto b = m6::parse_bytes(*texts[i]);
      if (!b || *b <= 0) {
        std::fprintf(stderr, "m6train: %s: not a size (got \"%s\"); allowed: e.g. 80GiB, 512GB\n",
                     names[i], texts[i]->c_str());
        return static_cast<int>(m6::ExitCode::Usage);
      }
      caps[i] = *b;
    }
    const m6::DryRunReport r = m6::dry_run(cfg, dry_world, caps[0], caps[1]);
    if (dry_json)
      std::printf("%s\n", m6::dry_run_json(cfg, r).dump(2).c_str());
    else
      std::printf("%s\n", m6::format_dry_run(cfg, r).c_str());
    return 0;
  }
  // Training is the one multi-process command: under mpirun or srun every rank
  // joins MPI here (a plain single-rank run needs no launcher), tags its
  // messages with its rank, and validates the config for the real world size
  // before anything is allocated.
  // A stop signal asks for a checkpoint instead of killing the process from
  // the first line of main() on (one arriving before training starts stops
  // it at step 0); during MPI's start-up it is held back and delivered after.
  // A training run outlives its console: when the reader of stdout/stderr
  // goes away (mpirun tearing the job down closes the ranks' output pipes; a
  // `| tee` that was killed), a log line must fail quietly, not end the
  // process with SIGPIPE in the middle of a stop's checkpoint. The run's
  // record is metrics.jsonl and the checkpoints, not the console.
  std::signal(SIGPIPE, SIG_IGN);
  {
    const m6::StopSignalsDeferred deferred;
    mpi.start(&argc, &argv);
  }
  m6::log_set_rank(mpi.rank(), mpi.size());
  const std::unique_ptr<m6::Comm> world = mpi.world();
  const m6::Config cfg = m6::load_config(config_path, overrides, world->size());
  m6::RunOptions opt;
  opt.comm = world.get();
  opt.run_dir = run_dir.empty() ? default_run_dir(config_path) : run_dir;
  opt.max_steps = max_steps;
  opt.resume = resume;
  const auto sum = m6::train(cfg, opt);
  if (mpi.rank() != 0) return sum.stop_signal ? static_cast<int>(m6::ExitCode::Preempted) : 0;
  if (sum.stop_signal) {
    std::printf("stopped: step %lld saved in %s; resume with --resume auto\n",
                static_cast<long long>(sum.steps), sum.checkpoint.c_str());
    return static_cast<int>(m6::ExitCode::Preempted);
  }
  std::printf("done: %lld steps, eval loss %.4f -> %.4f, run directory %s\n",
              static_cast<long long>(sum.steps), sum.first_eval_loss, sum.final_eval_loss,
              sum.run_dir.c_str());
  return 0;
}

// M6_EXIT_STATUS_DIR (set by scripts/m6mpirun): every rank writes
// "<exit code> <world size>" to DIR/rank_<rank> before MPI is finalised, so
// that the launcher script can tell "every rank saved and exits 75" apart
// from a failure, whatever exit code mpirun itself ends with.
int record_exit_status(m6::MpiSession& mpi, int code) {
  mpi.set_exit_code(code);
  const char* dir = std::getenv("M6_EXIT_STATUS_DIR");
  if (!dir || !*dir) return code;
  const std::string path = std::string(dir) + "/rank_" + std::to_string(mpi.rank());
  if (FILE* f = std::fopen(path.c_str(), "w")) {
    std::fprintf(f, "%d %d\n", code, mpi.size());
    std::fclose(f);
  }
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  // First: a SIGTERM, SIGUSR1 or SIGINT at any later moment of a training run
  // is a request to save and exit 75, never the default action (preempt.h).
  m6::StopSignals stop_signals;
  // Outlives run(): its communicators are gone before MPI is finalised. In a
  // multi-process job a failing rank ends the whole job (MpiSession::fail),
  // at once when a collective timed out, so that no process is left waiting.
  m6::MpiSession mpi;
  try {
    return record_exit_status(mpi, run(argc, argv, mpi, stop_signals));
  } catch (const m6::CommTimeout& e) {
    m6::log_error(e.what());
    return mpi.fail(record_exit_status(mpi, static_cast<int>(e.code())), true);
  } catch (const m6::Error& e) {
    m6::log_error(e.what());
    return mpi.fail(record_exit_status(mpi, static_cast<int>(e.code())), false);
  } catch (const std::bad_alloc&) {
    m6::log_error("out of memory; reduce train.micro_batch, train.seq_len or the model size");
    return mpi.fail(record_exit_status(mpi, static_cast<int>(m6::ExitCode::Internal)), false);
  } catch (const std::exception& e) {
    m6::log_error(std::string("internal error: ") + e.what());
    return mpi.fail(record_exit_status(mpi, static_cast<int>(m6::ExitCode::Internal)), false);
  } catch (...) {
    m6::log_error("internal error: unknown exception");
    return mpi.fail(record_exit_status(mpi, static_cast<int>(m6::ExitCode::Internal)), false);
  }
}
