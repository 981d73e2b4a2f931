// The experiment schema: one struct per YAML section, with the defaults a key
// takes when the file leaves it out. Loading is strict (config_load.cpp): an
// unknown or duplicate key, a wrong type, an out-of-range value or an
// inconsistent combination is a ConfigError naming file, line, key and value.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace m6 {

enum class RouterKind { TopK, Prototypes };
enum class GateNorm { Auto, On, Off };  // Auto: on iff top_k > 1
enum class DeviceKind { Auto, Cpu, Cuda };
enum class Precision { Fp32, Bf16, Fp16 };
enum class DelinkOptimizer { Copy, Reset };
// Activation checkpointing: what a layer keeps for backward. None keeps every
// activation; Attention drops the attention probabilities [B,H,T,T] of every
// layer (recomputed from the kept qkv in backward); Layer keeps only each
// layer's input and recomputes the whole layer forward in backward.
enum class Recompute { None, Attention, Layer };
// train.graphs: replay each training micro-batch from a graph (CUDA graphs)
// where its shapes and host logic are static: no MoE layer (the capacity
// logic reads expert loads to the host) and no streamed weights
// (offload.params). Auto: on for a CUDA device where allowed; On: required
// (a config error where not allowed; on the CPU the recording twin).
enum class GraphMode { Auto, On, Off };

struct MoeConfig {
  int every = 0;  // layer l is MoE iff every > 0 and l % every == every - 1
  int experts = 0;
  RouterKind router = RouterKind::TopK;
  int top_k = 1;       // slots per token for router: topk
  int prototypes = 0;  // groups k for router: prototypes (E % k == 0)
  double capacity_factor = 1.25;       // 0 = dropless
  double eval_capacity_factor = 2.0;   // 0 = dropless
  int min_capacity = 4;
  GateNorm normalize_gates = GateNorm::Auto;
  double aux_loss_coef = 0.01;
  double z_loss_coef = 0.001;

  int slots() const { return router == RouterKind::TopK ? top_k : prototypes; }
  // Renormalise the gates over a token's chosen experts (top-k only; a
  // prototype gate is its group's probability, DESIGN.md section 3).
  bool normalize() const {
    if (router != RouterKind::TopK) return false;
    return normalize_gates == GateNorm::Auto ? top_k > 1 : normalize_gates == GateNorm::On;
  }
};

struct SharingConfig {
  int groups = 0;            // 0 = off; else L logical layers share G parameter sets
  int64_t delink_at_step = 0;  // 0 = never (in this run)
  DelinkOptimizer delink_optimizer = DelinkOptimizer::Copy;
};

struct ModelConfig {
  int vocab_size = 256;
  int max_seq_len = 128;  // rows of the position table
  int d_model = 128;
  int n_heads = 4;
  int n_layers = 4;
  int d_ff = 512;
  MoeConfig moe;
  SharingConfig sharing;

  bool is_moe_layer(int l) const { return moe.every > 0 && l % moe.every == moe.every - 1; }
};

struct DataConfig {
  std::string train;  // glob of train shards, e.g. data/fortunes/train_*.bin
  std::string val;    // glob of val shards
};

// Loss-spike guard (core/train/spike_guard.h): skip the update of a step
// whose loss is more than z_threshold standard deviations above the mean of
// the last `window` applied steps.
struct SpikeGuardConfig {
  int window = 0;  // 0 = off; else >= 2
  double z_threshold = 6.0;
};

struct TrainConfig {
  uint64_t seed = 1234;
  int64_t steps = 1000;
  int seq_len = 128;        // T, at most model.max_seq_len
  int micro_batch = 8;      // sequences per rank per micro-step
  int global_batch = 8;     // micro_batch * world * accumulation
  DeviceKind device = DeviceKind::Auto;
  int threads = 0;          // CPU threads; 0 = all cores
  int64_t max_skipped_steps = 10;  // consecutive skipped steps before the run aborts
  SpikeGuardConfig spike_guard;
  Recompute recompute = Recompute::None;
  GraphMode graphs = GraphMode::Auto;
  // Memory the fit check (core/plan/memory_plan.h) plans for: "" = what the
  // backend reports (device memory; physical RAM on the CPU backend), else a
  // size such as "80GiB". allow_unfit trains even when the plan does not fit.
  std::string device_memory;
  std::string host_memory;
  bool allow_unfit = false;
  double peak_tflops = 0;   // peak TFLOP/s of one rank's device for MFU; 0 = measure (sgemm)
};

// Granular offload (DESIGN.md section 5): the share of the parameters whose
// fp32 master weights (params) and Adam moments (optimizer) live in host
// memory, chosen chunk by chunk in model order; chunks stream through the
// device in pieces of at most chunk_mb MiB.
struct OffloadConfig {
  double optimizer = 0.0;  // 0..1
  double params = 0.0;     // 0..1, at most optimizer (a host master needs host moments)
  double chunk_mb = 64.0;  // > 0
};

struct OptimConfig {
  double lr = 1e-3;
  double min_lr = 1e-4;      // floor of the cosine decay
  int64_t warmup_steps = 100;
  int64_t decay_steps = 0;   // 0 = train.steps
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;    // 0 = off
};

struct EvalConfig {
  int64_t every = 100;  // 0 = only at the end
  int batches = 8;      // micro-batches of held-out data per evaluation
};

struct LogConfig {
  int64_t every = 10;
  bool tensorboard = false;  // also write TensorBoard event files to <run>/tb
  bool profile = false;      // time every backend op (core/backend/op_profiler.h): <run>/profile.json
};

// fp16 dynamic loss scaling (core/train/loss_scaler.h); used only with
// precision.compute: fp16. The loss (and so every gradient) is multiplied by
// the scale; a step whose gradients overflow on any rank is skipped on every
// rank and the scale multiplied by backoff_factor (after `hysteresis`
// overflows in a row); after growth_interval clean steps it is multiplied by
// growth_factor. The scale stays within [min, max].
struct LossScaleConfig {
  double init = 65536.0;  // 2^16
  int64_t growth_interval = 1000;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int hysteresis = 1;
  double min = 1.0;
  double max = 16777216.0;  // 2^24
};

struct PrecisionConfig {
  Precision compute = Precision::Fp32;
  Precision comm = Precision::Fp32;
  LossScaleConfig loss_scale;
};

struct ParallelConfig {
  int ep = 1;
  double timeout_s = 600;
};

struct CheckpointConfig {
  int64_t every = 0;  // steps; 0 = only at the end and on preemption
  int keep = 2;
};

struct Config {
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  OptimConfig optim;
  EvalConfig eval;
  LogConfig log;
  PrecisionConfig precision;
  ParallelConfig parallel;
  CheckpointConfig checkpoint;
  OffloadConfig offload;
  std::string source;  // the file it was loaded from (for messages)

  int accum_steps(int world) const { return global_batch_div(world); }

 private:
  int global_batch_div(int world) const { return train.global_batch / (train.micro_batch * world); }
};

// Loads FILE, applies `--set a.b=value` overrides (each "a.b=value"), validates
// for a job of `world` ranks, and returns the config. Throws ConfigError.
Config load_config(const std::string& file, const std::vector<std::string>& overrides, int world);

// Validation alone (load_config calls it); also used after programmatic edits.
void validate_config(const Config& c, int world);

// Why a training micro-batch of this config cannot be replayed from a graph
// (train.graphs), or "" when it can.
std::string graphs_blocker(const Config& c);

// The resolved config as JSON (written to <run>/config.json and into exports),
// and back (used when reading a checkpoint manifest or an export).
nlohmann::json config_to_json(const Config& c);
Config config_from_json(const nlohmann::json& j);

}  // namespace m6
