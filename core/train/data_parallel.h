// The trainer's side of DP+EP (DESIGN.md section 4): after the micro-batches
// of a step, dense gradients are summed over the world and expert gradients
// over their expert-data-parallel group, in size-bounded buckets; the global
// gradient norm counts every tensor once however many ranks hold it; and the
// communication counters of a logging interval are summed over ranks.
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "core/config/config.h"
#include "core/model/params.h"
#include "core/parallel/comm.h"
#include "core/parallel/grad_buckets.h"
#include "core/parallel/grid.h"

namespace m6 {

// precision.comm as a wire type.
CommDType comm_wire(Precision p);

// This rank's experts of a model with E experts per MoE layer (0 for a dense model).
ExpertRange grid_experts(const GridLayout& g, int experts);

class GradSync {
 public:
  GradSync(ProcessGrid& grid, Backend& be, CommDType wire, size_t bucket_bytes = kGradBucketBytes);
  ~GradSync();
  // Gradients carry the fp16 loss scale: no fixed scale on an fp16 wire.
  void set_grad_wire(GradWire g) { grad_wire_ = g; }

  // Sums the gradients of `chunks` over the ranks that hold each chunk.
  // Collective over the world. Re-plans the buckets when the chunks' buffers
  // changed (Pseudo-to-Real delinking replaces them).
  void all_reduce(const std::vector<Chunk>& chunks);
  // sqrt(sum of squares of every gradient), each tensor counted once across
  // ranks (dense ones by rank 0, each expert by its expert-DP rank 0), summed
  // by an all-reduce, so the result is bitwise the same on every rank.
  double global_norm(const std::vector<Chunk>& chunks);

 private:
  void plan(const std::vector<Chunk>& chunks);
  ProcessGrid& grid_;
  Backend& be_;
  CommDType wire_;
  GradWire grad_wire_ = GradWire::Unscaled;
  size_t bucket_bytes_;
  std::vector<const float*> planned_;  // grad pointers the buckets were built for
  std::unique_ptr<GradBuckets> dense_, experts_;
};

// Communication over one logging interval, for the metrics: counters of this
// rank since the last report, combined over the world (collective).
class CommMeter {
 public:
  explicit CommMeter(CommActivity& a);
  struct Report {
    double wall_s = 0;                         // the interval's wall time (rank 0's clock)
    double seconds_mean = 0, seconds_max = 0;  // time in collectives per rank over the interval
    double a2a_seconds_mean = 0;               // the all-to-all(v) part of seconds_mean
    double a2a_bytes_per_step = 0;             // all ranks together
    double reduce_bytes_per_step = 0;          // all ranks together
  };
  Report report(Comm& world, int64_t steps);
  // {"step", "comm_s", "comm_s_max", "a2a_s", "comm_frac" (comm_s / wall time),
  //  "a2a_bytes_per_step", "allreduce_bytes_per_step"}
  static nlohmann::json to_json(const Report& r, int64_t step);

 private:
  CommActivity& a_;
  CommActivity last_;
  std::chrono::steady_clock::time_point last_t_;
};

}  // namespace m6
