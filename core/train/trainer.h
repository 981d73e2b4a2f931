// The training loop: data -> micro-batches -> forward/backward -> clipped
// AdamW, with evaluation, logging and a final checkpoint.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "core/backend/backend.h"
#include "core/config/config.h"

namespace m6 {

class Comm;

struct RunOptions {
  std::string run_dir;
  int64_t max_steps = -1;  // stop after this many steps of this invocation (< 0: train.steps)
  std::string resume;      // --resume: "" (fresh start), "auto" or a checkpoint directory
  // The world communicator of a multi-process job (app/ creates it from the
  // MPI session); null: a single process.
  Comm* comm = nullptr;
};

struct TrainSummary {
  std::string run_dir;
  std::string checkpoint;  // the final checkpoint directory
  int64_t steps = 0;
  double first_eval_loss = 0, final_eval_loss = 0;  // NaN when not evaluated in this invocation
  int64_t resumed_from = -1;  // the step resumed from; -1 for a fresh start
  int stop_signal = 0;        // != 0: stopped by this signal after saving (exit 75)
};

// The backend train.device asks for (auto: CUDA when built in and a GPU is
// present, else CPU). Throws ConfigError for a device that cannot be had.
std::unique_ptr<Backend> make_backend(const Config& cfg);

// The device of every rank for a run over `world` (collective: agreed by
// every rank, core/train/device_plan.h); throws ConfigError on every rank
// for a layout that cannot work. Then its backend, and the communicator of
// device buffers: NCCL when CUDA runs on several ranks, else null (the
// world communicator serves).
struct DevicePlan;
DevicePlan plan_run_devices(const Config& cfg, Comm& world);
std::unique_ptr<Backend> make_planned_backend(const Config& cfg, const DevicePlan& plan);
std::unique_ptr<Comm> make_device_world(Comm& world, Backend& be, const DevicePlan& plan);

TrainSummary train(const Config& cfg, const RunOptions& opt);

}  // namespace m6
