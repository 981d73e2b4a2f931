// `m6train delink --from CHECKPOINT --config REAL.yaml --out RUN_DIR`: the
// offline half of Pseudo-to-Real (M6-10T). Reads a checkpoint of a pseudo
// model (layers sharing parameter sets), gives every logical layer its own
// copy of its set's weights -- Adam moments copied or zeroed as the real
// config's model.sharing.delink_optimizer says -- and writes a checkpoint of
// the real model at the same step, from which `m6train --config REAL.yaml
// --run-dir RUN_DIR --resume auto` continues. The real config must describe
// the same model and data order as the pseudo one, except for sharing.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "core/config/config.h"
#include "core/model/model.h"
#include "core/model/params.h"
#include "core/model/sharing.h"
#include "core/ckpt/resume.h"

namespace m6 {

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

// The in-run delink (model.sharing.delink_at_step): EVAL() (the run's
// evaluation, a collective) before, MODEL.delink with the config's
// delink_optimizer, EVAL() after; RUN_CFG's sharing becomes the model's
// (off), so later checkpoints record the real layout. Returns the fields of
// the metrics event "delink": step, loss_before, loss_after (and both as
// C99 hex floats, "%a", so a reader can compare the bits), identical,
// optimizer, unique parameters before and after. A difference in the losses
// is logged as a warning (a GPU reduction may be non-deterministic); the CPU
// backend gives identical losses.
nlohmann::json delink_in_run(Model& model, Config& run_cfg, int64_t step,
                             const std::function<double()>& eval);

// The config whose layout a run of CFG resumes into: a run that delinked
// in-run (model.sharing.delink_at_step) saved its later checkpoints as the
// real model, so when the checkpoint that --resume picks (Auto: the newest
// committed one of RUN_DIR; Path: PATH) holds the real layout while CFG
// still shares layers, this is delinked_config(CFG); otherwise CFG. An
// unreadable checkpoint gives CFG (resuming reports it).
Config resume_layout(const Config& cfg, const std::string& run_dir, const ResumeRequest& req);

}  // namespace m6
