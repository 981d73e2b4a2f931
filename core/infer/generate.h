// Sampling from a trained model: the next token is drawn from
// softmax(logits / temperature) restricted to the top_k most likely tokens
// (temperature 0: the most likely token), with a seeded generator so a seed
// gives the same sample on every run and machine.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/infer/kv_model.h"

namespace m6 {

struct SampleOptions {
  double temperature = 1.0;  // 0: greedy
  int top_k = 0;             // 0: the whole vocabulary
  uint64_t seed = 0;
};

// splitmix64: a small counter-based generator with a fixed definition.
class SampleRng {
 public:
  explicit SampleRng(uint64_t seed) : state_(seed) {}
  double uniform();  // [0, 1), 53 bits

 private:
  uint64_t state_;
};

// One token from logits[V] (ties to the lower index).
int32_t sample_token(const float* logits, int V, const SampleOptions& o, SampleRng& rng);

struct GenerateStats {
  int prompt_tokens = 0;  // after truncation to the context
  int generated = 0;
  int context_shifts = 0;  // times the context was full and re-prefilled
  double seconds = 0;
};

// Runs `prompt` (at least one token), then samples n tokens, handing each to
// on_token as soon as it is drawn. The context is the model's max_seq_len:
// a longer prompt keeps its last max_seq_len tokens, and when the cache is
// full the newest half of the context is re-prefilled and generation goes on.
GenerateStats generate(KvModel& model, std::vector<int32_t> prompt, int n,
                       const SampleOptions& o, const std::function<void(int32_t)>& on_token);

}  // namespace m6
