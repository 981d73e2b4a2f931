// What generate and eval start from: the latest committed checkpoint of a run
// directory, its resolved config (the layout it was written with), and a
// backend for that config, in one process holding every expert.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "core/config/config.h"
#include "core/model/params.h"
#include "core/model/sharing.h"

namespace m6 {

struct RunCheckpoint {
  std::string dir;  // the checkpoint directory
  int64_t step = 0;
  Config cfg;
};

// CheckpointError (exit 4) naming the path when the run has no committed
// checkpoint or its manifest is unreadable. train.device is set to auto: a
// run trained on GPUs can be sampled on a CPU and the other way round.
RunCheckpoint open_run_checkpoint(const std::string& run_dir);

// A checkpoint's weights on a backend: every tensor (all experts), no
// gradients used, no optimizer state loaded.
struct LoadedWeights {
  RunCheckpoint ckpt;
  std::unique_ptr<Backend> be;
  std::vector<Chunk> chunks;
  std::unique_ptr<ChunkStorage> storage;  // chunks' buffers; released before be
};
// threads > 0 replaces the checkpoint's train.threads.
std::unique_ptr<LoadedWeights> load_run_weights(const std::string& run_dir, int threads = 0);

// train.threads of the checkpoint's config replaced by `threads` when > 0.
void override_threads(Config& cfg, int threads);

}  // namespace m6
