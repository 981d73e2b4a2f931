// Resuming (--resume auto | PATH): which checkpoint a run starts from, whether
// the config may resume it, and loading it on every rank of any layout.
//
// What may change on resume: train.steps, train.max_skipped_steps,
// train.spike_guard.*, train.micro_batch, train.threads, train.device, the
// learning-rate schedule and the rest of optim.*, eval.*, log.*,
// checkpoint.*, precision.*, parallel.* (world size and ep: the checkpoint is
// keyed by global names), data paths (logged: the data position is the
// step, so the same shards give the same batches), and the router's
// capacity factors and loss coefficients. What may not: the model's shape
// and routing (every other model.* key) and what decides the data order --
// train.seed, train.seq_len, train.global_batch. Changes of the second kind
// are a CheckpointError (exit 4) naming the manifest and the keys.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "core/ckpt/checkpoint.h"
#include "core/config/config.h"
#include "core/model/params.h"
#include "core/parallel/comm.h"

namespace m6 {

enum class ResumeMode { None, Auto, Path };
struct ResumeRequest {
  ResumeMode mode = ResumeMode::None;
  std::string path;  // ResumeMode::Path
};
// "" -> None, "auto" -> Auto, anything else -> Path.
ResumeRequest parse_resume_flag(const std::string& flag);

// The keys whose change forbids resuming; the rest may change.
bool resume_key_is_fixed(const std::string& dotted_key);

// Compares the checkpoint's config with `cfg`: throws CheckpointError naming
// the manifest and every fixed key that differs (with both values); logs the
// keys that changed and may.
void check_resume_config(const nlohmann::json& manifest, const std::string& ckpt_dir,
                         const Config& cfg);

struct ResumeResult {
  bool resumed = false;
  std::string dir;  // the checkpoint loaded
  TrainState state;
};

// Collective over `comm`. None: a fresh start, refused (ConfigError) when the
// run directory already holds committed checkpoints. Path: loads that
// checkpoint or throws CheckpointError. Auto: the newest committed checkpoint
// that loads on every rank -- a damaged one is reported, renamed
// step_N.corrupt, and the previous one tried -- or a fresh start when there
// is none; CheckpointError when there are some but none loads. Committed
// checkpoints newer than the one loaded are renamed step_N.abandoned so they
// never shadow the resumed run's own.
ResumeResult resume_training(const std::string& run_dir, const ResumeRequest& req,
                             const Config& cfg, Backend& be, std::vector<Chunk>& chunks,
                             Comm& comm);

// The config whose layout a run of CFG resumes into: a run that delinked
// in-run (model.sharing.delink_at_step) saved its later checkpoints as the
// real model, so when the checkpoint that --resume picks (Auto: the newest
// committed one of RUN_DIR; Path: PATH) holds the real layout while CFG
// still shares layers, this is delinked_config(CFG); otherwise CFG. An
// unreadable checkpoint gives CFG (resuming reports it).
Config resume_layout(const Config& cfg, const std::string& run_dir, const ResumeRequest& req);

}  // namespace m6
