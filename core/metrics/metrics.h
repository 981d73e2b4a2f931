// What a run reports about itself: one console line per logged step or
// evaluation, and <run_dir>/metrics.jsonl with one JSON object per record
// (the machine-readable twin of the console, read by scripts and plots).
// Only rank 0 writes; the other ranks construct a disabled writer so every
// rank runs the same code.
#pragma once
#include <cstdint>
#include <limits>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace m6 {

// One logged training step. Rates and fractions cover the logging interval.
struct TrainRecord {
  int64_t step = 0, steps_total = 0;
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, elapsed_s = 0, eta_s = 0,
         dropped_frac = 0, aux_loss = 0, z_loss = 0;
  int64_t skipped_steps = 0;
  // Memory (written when >= 0): high-water marks of the backend's device and
  // host arenas and the process's peak RSS, max over ranks; the planner's
  // prediction of the two arenas (core/plan/memory_plan.h).
  int64_t mem_peak_bytes = -1, mem_host_peak_bytes = -1, rss_peak_bytes = -1;
  int64_t mem_plan_bytes = -1, mem_plan_host_bytes = -1;
  // Model FLOPs utilisation over the interval (0..1; NaN: unknown, not shown)
  // and the loss scale of the last step (1 without fp16 loss scaling).
  double mfu = std::numeric_limits<double>::quiet_NaN(), loss_scale = 1.0;
  // [moe_layers][experts]: tokens (kept slots) per expert over the logging
  // interval; empty for a dense model.
  std::vector<std::vector<int64_t>> expert_load;
  // [moe_layers]: fingerprint of the interval's routing decisions (same
  // value <=> same experts chosen and kept for every token, whatever the
  // layout, up to a 2^-20 collision chance); empty for a dense model.
  std::vector<int64_t> routing;
};

struct EvalRecord {
  int64_t step = 0;
  double eval_loss = 0, elapsed_s = 0;
};

// "42s", "3m05s", "2h01m" (rounded to the second); "?" when negative or not finite.
std::string format_duration(double seconds);

// step 120/1000 | loss 2.3412 | lr 3.00e-04 | gnorm 0.812 | 41.2k tok/s | MFU 3.1% |
// 1m12s elapsed, ETA 8m40s | dropped 1.3%
// "MFU" appears when mfu is finite.
// "dropped" appears for MoE models (expert_load not empty); "skipped N" is
// appended once steps have been skipped (non-finite gradient, fp16 overflow).
std::string format_train_line(const TrainRecord& r);

// eval step 120 | eval loss 2.2981 | 1m12s elapsed
std::string format_eval_line(const EvalRecord& r);

// Per MoE layer: max over experts / mean over experts of the load (1.0 is a
// perfect balance, E means one expert took everything); NaN for a layer that
// received no token.
std::vector<double> expert_load_max_over_mean(const std::vector<std::vector<int64_t>>& load);

// Appends one JSON object per line to <run_dir>/metrics.jsonl (creating
// run_dir if needed). Each record is handed to the kernel with one write(), so
// a crash loses at most the record being written and a reader never sees half
// a line from an earlier record. Non-finite numbers are written as null.
class MetricsWriter {
 public:
  // enabled = false (ranks other than 0) opens nothing and writes nothing.
  // Throws Error naming the path when the file cannot be opened.
  MetricsWriter(const std::string& run_dir, bool enabled);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  MetricsWriter(MetricsWriter&& other) noexcept;
  MetricsWriter& operator=(MetricsWriter&& other) noexcept;

  // {"kind":"train","step",...,"expert_load":[[...]],"expert_load_max_over_mean":[...]}
  void write_train(const TrainRecord& r);
  // {"kind":"eval","step","eval_loss","elapsed_s"}
  void write_eval(const EvalRecord& r);
  // {"kind":KIND, ...fields}; fields must be a JSON object (or null) without "kind".
  void write_event(const std::string& kind, const nlohmann::json& fields);

  bool enabled() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }

 private:
  void write_line(const std::string& line);

  std::string path_;  // empty when disabled
  int fd_ = -1;
};

}  // namespace m6
