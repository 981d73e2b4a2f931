// log.profile: the backend ops of the training steps, timed by the op
// profiler (core/backend/op_profiler.h) and summed over the steps after the
// first (warm-up); eval, checkpoints and the time between steps are left out.
// At the end: <run>/profile.json (rank 0) and a table in the log of where a
// step's time goes.
#pragma once
#include <map>
#include <string>

#include "core/backend/backend.h"
#include "core/backend/op_profiler.h"

namespace m6 {

class StepProfile {
 public:
  void begin_step(Backend& be);  // drops what ran since the last step
  // After the step's last op and sync; `seconds`: the step's wall time.
  void end_step(Backend& be, double seconds, bool warmup);
  // Writes profile.json into run_dir and logs the table (the `top` ops).
  void report(const std::string& run_dir, bool write, int top = 12) const;

 private:
  std::map<std::string, OpTime> ops_;
  int64_t steps_ = 0;
  double seconds_ = 0;
};

}  // namespace m6
