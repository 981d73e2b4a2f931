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

  // Forward of one micro-batch (B sequences of T tokens, B*T <= max tokens).
  MicroStats forward(const Batch& batch, Phase phase);
  // Backward of the last forward: parameter gradients += grad_scale * d loss / d param.
  void backward(float grad_scale);

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
  void index_chunks();  // fills set_layer_ and set_experts_ from chunks_

  Config cfg_;
  Backend& be_;
  ExpertRange experts_;
  std::vector<Chunk> chunks_;
  std::vector<const Chunk*> set_layer_;                 // [set] its dense chunk
  std::vector<std::vector<const Chunk*>> set_experts_;  // [set] its expert chunks, by id
  std::unique_ptr<ChunkStorage> chunk_store_;  // chunks_' buffers; replaced by delink
  DeviceArena arena_;
  int max_tokens_ = 0;
  int B_ = 0, T_ = 0;
  int64_t n_valid_last_ = 0;
  int32_t *tokens_, *targets_;
  std::vector<float*> residual_;  // L+1 buffers [N,d]: input of layer l, final at L
  std::vector<std::unique_ptr<LayerActs>> acts_;
  std::vector<std::unique_ptr<MoeLayer>> moe_;  // per logical layer (null for dense)
  float *lnf_out_, *lnf_mean_, *lnf_rstd_, *logits_, *losses_;
  float *dres_, *dtmp_, *dqkv_, *dff_, *datt_;  // backward scratch
};

}  // namespace m6
