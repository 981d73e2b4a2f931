// `m6train --config FILE --dry-run [--world N]`: validates an experiment for
// a job of N ranks and reports what it would hold -- parameter counts (total
// logical, unique stored, active per token), the expert split of DP+EP, and
// parameter / gradient / Adam bytes per rank -- without opening the data or
// allocating the model. Everything comes from the config and the chunk plan
// (plan_chunks describes chunks without memory), so it runs for a 10T model
// on a laptop.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "core/config/config.h"
#include "core/model/params.h"
#include "core/plan/memory_plan.h"

namespace m6 {

// What one rank holds of a model layout (DESIGN.md sections 4 and 5).
struct RankFootprint {
  int64_t dense_params =
      0;  // replicated on every rank: embeddings, attention, LN, routers, dense FFNs
  int64_t expert_params = 0;  // this rank's experts, summed over MoE layer sets
  int64_t expert_ffns = 0;    // expert FFNs held (layer sets x local experts)
  int64_t params() const { return dense_params + expert_params; }
  // Bytes: fp32 master weights; the compute copy (2 bytes per parameter for
  // bf16/fp16 compute, none for fp32, where the master is used directly);
  // gradients in the compute precision; Adam m and v in fp32.
  int64_t master_bytes = 0, compute_bytes = 0, grad_bytes = 0, adam_bytes = 0;
  int64_t total_bytes() const { return master_bytes + compute_bytes + grad_bytes + adam_bytes; }
};

struct DryRunReport {
  int world = 1, ep = 1;
  int moe_layers = 0, experts = 0, experts_per_rank = 0;
  int ep_groups = 0;  // world / ep groups of ep ranks (each holds all experts once)
  int expert_dp = 0;  // ranks holding the same experts (= ep_groups)
  int accum_steps = 0;
  int64_t tokens_per_step = 0;
  ParamCounts counts;   // of the config as given (pseudo when sharing is on)
  RankFootprint rank;   // of the config as given
  bool shared = false;  // sharing on: `real` is the delinked model
  ParamCounts real_counts;
  RankFootprint real_rank;
  // The memory planner (core/plan/memory_plan.h), GPU layout, and the fit
  // check against the capacities given (0 = not checked).
  MemoryPlan memory, real_memory;
  FitCheck fit, real_fit;  // real_fit: when the run delinks (model.sharing.delink_at_step)
  bool fit_checked = false, real_fit_checked = false;
};

// Validates CFG for WORLD ranks (validate_config) and computes the report.
// Throws ConfigError for an invalid config.
// device_capacity / host_capacity: bytes per rank for the fit check (0 = none).
DryRunReport dry_run(const Config& cfg, int world, int64_t device_capacity = 0,
                     int64_t host_capacity = 0);

// The report as JSON (--dry-run --json).
nlohmann::json dry_run_json(const Config& cfg, const DryRunReport& r);

// The human-readable report printed by --dry-run (several lines, no trailing newline).
std::string format_dry_run(const Config& cfg, const DryRunReport& r);

}  // namespace m6
