// The memory check a training run makes before it allocates anything: plans
// the run on its backend (core/plan/memory_plan.h) and refuses a layout that
// does not fit the device and host memory (train.device_memory /
// train.host_memory, else what the machine has: physical memory on the CPU
// backend), with the planner's numbers and the smallest recompute / offload
// setting that fits, unless train.allow_unfit is true. Also refuses offload
// on a backend without a host arena.
#pragma once
#include "core/backend/backend.h"
#include "core/config/config.h"
#include "core/plan/memory_plan.h"

namespace m6 {

// Throws ConfigError (exit 2). Returns the plan of the run.
MemoryPlan check_run_memory(const Config& cfg, int world, const Backend& be);

// Memory high-water marks to report in metrics.jsonl (this rank's).
struct MemoryPeaks {
  int64_t device = 0, host = 0, rss = 0;
};
MemoryPeaks memory_peaks(const Backend& be);

}  // namespace m6
