// The decoder-only MoE transformer of DESIGN.md section 3, forward and backward
// written by hand on the Backend interface. One Model holds this rank's
// parameter chunks (with gradients and Adam moments) and the activations of
// one micro-batch.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "core/config/config.h"
#include "core/data/dataset.h"
#include "core/model/device_arena.h"
#include "core/model/mixed_precision.h"
#include "core/model/moe.h"
#include "core/model/params.h"
#include "core/model/sharing.h"

namespace m6 {

// What one micro-batch's forward measured.
struct MicroStats {
  double ce_sum = 0;      // sum of per-position cross-entropy (nats)
  int64_t n_valid = 0;    // positions with target >= 0
  std::vector<MoeStats> moe;  // per MoE logical layer, in layer order

  double ce() const { return n_valid ? ce_sum / static_cast<double>(n_valid) : 0.0; }
  double aux_sum() const;
  double z_sum() const;
  // ce + aux_coef * sum aux + z_coef * sum z: the loss that backward differentiates
  double loss(const MoeConfig& moe) const;
};

class Model {
 public:
  // experts: the experts this rank holds; ex: how MoE layers reach the
  // others (the EP group, DESIGN.md section 4; default: all are local).
  Model(const Config& cfg, Backend& be, ExpertRange experts, MoeExchange ex = {});
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& mcfg() const { return cfg_.model; }
  Backend& backend() { return be_; }
  std::vector<Chunk>& chunks() { return chunks_; }
  const std::vector<Chunk>& chunks() const { return chunks_; }
  ExpertRange experts() const { return experts_; }

  void init_params(uint64_t seed);  // name-keyed, layout-independent
  void zero_grads();

  // Pseudo-to-Real: gives every logical layer its own copy of its set's
  // weights (Adam moments copied or zeroed, see core/model/sharing.h) and
  // turns sharing off in this model's config. The model computes exactly the
  // same function afterwards. Invalidates pointers into chunks().
  void delink(DelinkOptimizer opt);

  // Forward of one micro-batch (B sequences of T tokens, B*T <= max tokens),
  // its statistics read back at once.
  MicroStats forward(const Batch& batch, Phase phase);
  // The same without reading anything back but the MoE loads (the capacity
  // logic's one host read per MoE layer): the values computed on the device
  // (the loss sum, the MoE aux sums and routing fingerprints) wait in stats
  // slot `slot` for collect_stats; n_valid and the MoE loads are filled now.
  MicroStats forward_deferred(const Batch& batch, Phase phase, int slot);
  // Backward of the last forward: parameter gradients += grad_scale * d loss / d param.
  void backward(float grad_scale);
  // One training micro-batch, forward_deferred then backward; with graphs on
  // (train.graphs) the two are replayed from a graph recorded once per
  // (shape, valid targets, grad_scale).
  MicroStats train_micro(const Batch& batch, float grad_scale, int slot);
  // Fills the deferred values of st[0..count) from stats slots 0..count-1:
  // one host read, after the backend's deferred error check.
  void collect_stats(MicroStats* st, int count);
  // Sizes the stats slots for `slots` micro-batches per step (before the
  // first; more are grown on demand, copying the ones written).
  void reserve_stats(int slots);
  // Whether train_micro replays graphs, and if not, why ("" when on).
  bool graphs_on() const { return graphs_; }
  const std::string& graphs_off_reason() const { return graphs_off_; }
  int64_t graph_replays() const { return replays_; }  // micro-batches run from a graph

  // Host copies of parameters by global tensor name (every logical layer
  // listed, shared sets repeated), for export and the reference test.
  struct NamedTensor {
    std::string name;
    std::vector<int64_t> shape;
    std::vector<float> values;
  };
  std::vector<NamedTensor> logical_tensors(bool grads) const;

 private:
  struct LayerActs;  // saved activations of one logical layer
  const Chunk& layer_chunk(int layer) const;  // the dense chunk of the layer's set
  const std::vector<const Chunk*>& expert_chunks(int layer) const;
  void index_chunks();  // fills set_layer_, set_experts_ and set_host_ from chunks_
  // Activation checkpointing (train.recompute): with Layer one LayerActs and
  // one MoeLayer serve every layer, so these map a logical layer to its slot.
  LayerActs& acts(int layer) { return *acts_[recompute_ == Recompute::Layer ? 0 : layer]; }
  MoeLayer* moe_at(int layer);  // null for a dense layer
  // Forward of logical layer l from residual_[l] into its activations and
  // residual_[l+1]; st (null when recomputing in backward) receives MoE stats,
  // `stats` (the micro-batch's stats slot; null with st) their device values.
  void layer_forward(int l, Phase phase, MicroStats* st, double* stats);
  // offload.params: the layer sets whose master weights live on the host
  // stream through a window of two device slots: the set of layer l and the
  // next one in this pass's order (`next`, -1 for none), fetched one layer
  // ahead (on CUDA a side-stream copy overlapped with compute).
  void stream_layer(int l, int next);
  // Brings `set` into a slot (not the one holding `keep`): queued as a
  // prefetch, and waited for (then rounded under bf16/fp16) when use_now.
  void stream_set(int set, int keep, bool use_now);
  void window_reset();  // forgets what the slots hold (the masters changed)
  void size_window();   // allocates the slots for the current chunks
  // Host side of a micro-batch: checks and uploads tokens and targets,
  // refreshes the compute copy; returns the stats known on the host.
  MicroStats prologue(const Batch& batch);
  // The device side of forward (nothing read back but the MoE loads);
  // device results go to `stats` (stats_per_slot_ doubles).
  void forward_body(Phase phase, MicroStats& st, double* stats);
  // Slot `slot` of the stats (grown to hold it, the slots written so far
  // moved along).
  double* stats_slot(int slot);
  void grow_stats(int slots);
  double* stats_at(int slot) { return stats_ + static_cast<size_t>(slot + 1) * stats_per_slot_; }

  Config cfg_;
  Backend& be_;
  ExpertRange experts_;
  std::vector<Chunk> chunks_;
  std::vector<const Chunk*> set_layer_;                 // [set] its dense chunk
  std::vector<std::vector<const Chunk*>> set_experts_;  // [set] its expert chunks, by id
  std::vector<std::vector<Chunk*>> set_host_;  // [set] its chunks with master_on_host (streamed)
  std::unique_ptr<ChunkStorage> chunk_store_;  // chunks_' buffers; replaced by delink
  // precision.compute bf16|fp16: the rounded weight copy, refreshed by every
  // forward, and the rounding of stored activations (null / no-op in fp32).
  std::unique_ptr<ComputeWeights> compute_;
  ActRound round_;
  DeviceArena arena_;
  Recompute recompute_ = Recompute::None;
  Backend::AttentionBuffers att_bufs_;  // attention state's sizes (the backend's)
  bool att_recompute_ = false;  // one shared attention state, recomputed in backward
  float* window_[2] = {nullptr, nullptr};  // offload.params slots, window_floats_ each
  int window_set_[2] = {-1, -1};           // the layer set each slot holds
  bool window_ready_[2] = {false, false};  // its copy waited for and rounded
  size_t window_floats_ = 0;
  int max_tokens_ = 0;
  int B_ = 0, T_ = 0;
  int64_t n_valid_last_ = 0;
  int32_t *tokens_, *targets_;
  std::vector<float*> residual_;  // L+1 buffers [N,d]: input of layer l, final at L
  std::vector<std::unique_ptr<LayerActs>> acts_;
  std::vector<std::unique_ptr<MoeLayer>> moe_;  // per logical layer (null for dense); one with Layer
  float *lnf_out_, *lnf_mean_, *lnf_rstd_, *logits_, *losses_;
  float *dres_, *dtmp_, *dqkv_, *dff_, *datt_;  // backward scratch
  // Deferred statistics: per slot the loss sum, then per MoE layer its
  // MoeLayer::stats_doubles().
  double* stats_ = nullptr;
  int stats_slots_ = 0;
  size_t stats_per_slot_ = 1;
  // Graphs (train.graphs): the recorded micro-batch and what it was recorded
  // for; a key is first run eagerly (warm-up), then recorded and replayed.
  struct GraphKey {
    int B = 0, T = 0;
    int64_t n_valid = 0;
    uint32_t grad_scale_bits = 0;
    bool operator==(const GraphKey&) const = default;
  };
  bool graphs_ = false;
  std::string graphs_off_;
  std::unique_ptr<Backend::Graph> graph_;
  GraphKey graph_key_, warm_key_;
  bool warm_ = false;
  int64_t replays_ = 0;
};

}  // namespace m6
