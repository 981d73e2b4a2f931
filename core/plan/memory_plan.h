// The memory planner: what one rank of a DP+EP job holds, by category, in
// device memory and in the host arena, and what it sends per step -- computed
// from the config and the chunk plan alone (no allocation), so it plans a 10T
// model on a laptop and refuses a layout that cannot fit before anything is
// allocated.
//
// The model of memory, per rank (N = micro_batch * seq_len tokens, S slots
// per token, P = ep, El = E/ep local experts):
//  - parameters: fp32 master weights (4 B per value), plus a compute copy of
//    2 B per value for bf16/fp16 compute on the GPU; gradients in the compute
//    precision; Adam m and v in fp32 (8 B). Offload moves the master and/or
//    the moments of a share of the chunks to the host (core/model/offload.h);
//    streamed chunks then hold on the device only a double-buffered window of
//    two layer sets.
//  - activations kept for backward, per layer kind, in the compute precision
//    except the fp32 router, LayerNorm statistics and int32 routing indices:
//    every layer keeps ln1/ln2 outputs, qkv, attention output and residual;
//    the attention probabilities [B,H,T,T] unless recompute is attention or
//    layer (one shared buffer) -- on a GPU layout (train.device not cpu) the
//    fused attention's log-sum-exp [B,H,T] instead, in every layer but under
//    recompute layer; a dense layer its FFN pre- and post-GELU
//    [N,F]; an MoE layer its router and the packed rows and expert
//    activations of its local experts. recompute: layer keeps only each
//    layer's input [N,d] plus one layer's activations.
//  - all-to-all buffers: the packed rows [N*S,d] of dispatch and combine,
//    and with P > 1 the received rows [R,d] (R = min(P*N*S, P*El*C)).
//  - comm buckets: the staging buffers of the gradient buckets (16 MiB).
//  - workspace: the backward scratch, the LM head logits [N,V] and inputs.
// On the CPU backend every value is stored as fp32 (PlanStorage::Cpu); the
// GPU plan (PlanStorage::Gpu) uses 2 B for compute-precision values. Every
// buffer is rounded up to 64 bytes, as the CPU arena allocates.
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "core/config/config.h"

namespace m6 {

enum class PlanStorage { Gpu, Cpu };

struct MemoryLine {
  std::string name;
  int64_t device = 0, host = 0;
};

// Activations of one layer of each kind under each recompute mode.
struct LayerActivationBytes {
  int64_t dense[3] = {0, 0, 0};  // indexed by Recompute (none, attention, layer)
  int64_t moe[3] = {0, 0, 0};
};

struct MemoryPlan {
  int world = 1;
  PlanStorage storage = PlanStorage::Gpu;
  Recompute recompute = Recompute::None;
  double offload_optimizer = 0, offload_params = 0;
  // Per rank, in the order printed: parameters (master), compute copy,
  // gradients, optimizer state, offload window and staging, activations,
  // all-to-all buffers, comm buckets, workspace.
  std::vector<MemoryLine> lines;
  LayerActivationBytes per_layer;
  int dense_layers = 0, moe_layers = 0;
  int64_t device_total = 0, host_total = 0;
  // Sent by one rank per optimizer step: all-to-all payload to other ranks
  // (uniform routing, capacity applied; with recompute layer the forward
  // exchanges run twice) and all-reduce payload (dense over the world,
  // experts over their expert-data-parallel group).
  double a2a_bytes_per_step = 0, allreduce_bytes_per_step = 0;
};

// Plans CFG as given (recompute and offload from the config).
MemoryPlan plan_memory(const Config& cfg, int world, PlanStorage storage);

// The fit check: capacities in bytes (0 = unlimited).
struct FitCheck {
  int64_t device_capacity = 0, host_capacity = 0;
  bool fits = false;
  // The cheapest setting that fits (recompute, offload fractions), found by
  // trying recompute none < attention < layer with offload.optimizer, then
  // offload.params, in steps of 1/8; `found` is false when none fits.
  bool found = false;
  Recompute recompute = Recompute::None;
  double offload_optimizer = 0, offload_params = 0;
  MemoryPlan suggested;
};
FitCheck check_fit(const Config& cfg, int world, PlanStorage storage, int64_t device_capacity,
                   int64_t host_capacity);

// Several lines, no trailing newline.
std::string format_memory_plan(const MemoryPlan& p);
std::string format_fit(const FitCheck& f, const MemoryPlan& asked);
nlohmann::json memory_plan_json(const MemoryPlan& p);
nlohmann::json fit_json(const FitCheck& f);

const char* recompute_name(Recompute r);

}  // namespace m6
