// Forward-only inference of the model of DESIGN.md section 3 with a KV cache:
// prefill runs a prompt through the full causal forward (the training ops)
// and keeps every layer's keys and values; decode then runs one new token
// against the cache -- per head, scores = q K^T / sqrt(dh) (a GEMM), a softmax
// over the cached positions, out = p V (a GEMM) -- so a token costs one
// row of work per layer instead of the whole sequence. Written on the
// Backend interface, like the training model.
//
// MoE layers route without a capacity limit (dropless), so a token's output
// does not depend on the other tokens of its batch: the logits of a cached
// decode equal those of recomputing the whole sequence.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/backend/backend.h"
#include "core/config/config.h"
#include "core/model/device_arena.h"
#include "core/model/moe.h"
#include "core/model/params.h"

namespace m6 {

class KvModel {
 public:
  // chunks: every parameter of the model (all experts), kept by reference.
  // The cache holds model.max_seq_len positions.
  KvModel(const ModelConfig& m, Backend& be, const std::vector<Chunk>& chunks);
  ~KvModel();
  KvModel(const KvModel&) = delete;
  KvModel& operator=(const KvModel&) = delete;

  int capacity() const { return cap_; }  // positions the cache holds
  int length() const { return len_; }    // positions cached so far

  // Empties the cache and runs tokens[0..n) at positions 0..n-1 (1 <= n <=
  // capacity). Returns the logits of every position, [n, V] row-major.
  std::vector<float> prefill(const std::vector<int32_t>& tokens);
  // Runs one token at position length() (< capacity) against the cache and
  // appends its keys and values. Returns its logits [V].
  std::vector<float> decode(int32_t token);

 private:
  void layer(int l, int n);  // x_[0..n) <- layer l; cache rows len_..len_+n written
  void attend_cached(int l, int n_keys);  // one query (qkv_ row 0) against layer l's rows 0..n_keys-1
  std::vector<float> logits(int n);

  ModelConfig m_;  // eval_capacity_factor 0 (dropless); MoeLayer keeps a reference
  Backend& be_;
  const std::vector<Chunk>& chunks_;
  int cap_ = 0, len_ = 0;
  DeviceArena arena_;
  int32_t *tokens_, *no_targets_;
  float *x_, *ln_, *mean_, *rstd_, *qkv_, *att_, *atty_, *tmp_, *ff_pre_, *ff_act_, *logits_;
  float *scores_, *sm_loss_;
  std::vector<float*> k_cache_, v_cache_;  // per layer [cap, d]: row t = all heads of position t
  std::vector<std::unique_ptr<MoeLayer>> moe_;  // per layer (null for dense)
  const Chunk *emb_ = nullptr, *head_ = nullptr;
  std::vector<const Chunk*> layer_chunk_;
  std::vector<std::vector<const Chunk*>> expert_chunks_;
};

}  // namespace m6
