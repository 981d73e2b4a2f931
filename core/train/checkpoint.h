// Checkpoints (DESIGN.md section 6): <run>/checkpoints/step_XXXXXXXX/ with
// manifest.json and safetensors files keyed by global tensor names -- master
// weights and Adam moments -- written into step_X.tmp/, fsynced, renamed, and
// only then pointed to by <run>/checkpoints/latest (write-temp-and-rename).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/backend/backend.h"
#include "core/config/config.h"
#include "core/model/params.h"

namespace m6 {

constexpr int kCheckpointFormatVersion = 1;

struct TrainState {
  int64_t step = 0;          // completed optimizer steps (the next step to run)
  int64_t tokens_seen = 0;
  int64_t adam_t = 0;        // updates applied (skipped steps excluded)
  int64_t skipped_steps = 0;
};

// Saves this rank's chunks (single-rank layout for now) and returns the
// committed directory.
std::string save_checkpoint(const std::string& run_dir, const Config& cfg, const TrainState& st,
                            Backend& be, const std::vector<Chunk>& chunks);

// The directory <run>/checkpoints/latest points to; throws CheckpointError
// when there is none or it is unreadable.
std::string latest_checkpoint(const std::string& run_dir);

// Reads and verifies a checkpoint's manifest (format, version, every file's
// size and sha256). Throws CheckpointError naming the file at fault.
nlohmann::json read_manifest(const std::string& ckpt_dir);

// Loads weights (and Adam moments when `with_optimizer`) into chunks by name.
TrainState load_checkpoint(const std::string& ckpt_dir, Backend& be, std::vector<Chunk>& chunks,
                           bool with_optimizer);

}  // namespace m6
