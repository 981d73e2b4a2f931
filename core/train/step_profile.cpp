#include "core/train/step_profile.h"

#include <algorithm>
#include <cstdio>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/util/fs.h"
#include "core/util/log.h"

namespace m6 {

void StepProfile::begin_step(Backend& be) { op_profile_reset(be); }

void StepProfile::end_step(Backend& be, double seconds, bool warmup) {
  const std::vector<OpTime> ops = op_profile(be);
  if (warmup) return;
  for (const OpTime& t : ops) {
    OpTime& s = ops_[t.op];
    s.op = t.op;
    s.calls += t.calls;
    s.ms += t.ms;
  }
  ++steps_;
  seconds_ += seconds;
}

void StepProfile::report(const std::string& run_dir, bool write, int top) const {
  if (steps_ == 0) {
    log_info("profile: no step after the warm-up step was timed");
    return;
  }
  std::vector<OpTime> ops;
  double op_ms = 0;
  for (const auto& [name, t] : ops_) ops.push_back(t), op_ms += t.ms;
  std::sort(ops.begin(), ops.end(), [](const OpTime& a, const OpTime& b) { return a.ms > b.ms; });
  const double step_ms = 1e3 * seconds_ / static_cast<double>(steps_);
  const double n = static_cast<double>(steps_);
  nlohmann::json j;
  j["steps"] = steps_;
  j["step_ms"] = step_ms;
  j["op_ms_per_step"] = op_ms / n;
  for (const OpTime& t : ops)
    j["ops"].push_back({{"op", t.op},
                        {"calls_per_step", static_cast<double>(t.calls) / n},
                        {"ms_per_step", t.ms / n},
                        {"share_of_step", step_ms > 0 ? t.ms / n / step_ms : 0.0}});
  if (write) atomic_write_file(run_dir + "/profile.json", j.dump(2) + "\n");
  char line[160];
  std::snprintf(line, sizeof line,
                "profile: %lld steps after the warm-up, %.2f ms per step, %.2f ms in backend ops "
                "(%.1f%%; the rest: host work, waits, communication)",
                static_cast<long long>(steps_), step_ms, op_ms / n,
                step_ms > 0 ? 100.0 * op_ms / n / step_ms : 0.0);
  log_info(line);
  for (int i = 0; i < std::min<int>(top, static_cast<int>(ops.size())); ++i) {
    const OpTime& t = ops[static_cast<size_t>(i)];
    std::snprintf(line, sizeof line, "profile: %-20s %8.3f ms/step %5.1f%% %7.1f calls/step",
                  t.op.c_str(), t.ms / n, step_ms > 0 ? 100.0 * t.ms / n / step_ms : 0.0,
                  static_cast<double>(t.calls) / n);
    log_info(line);
  }
}

}  // namespace m6
