// The random micro-batch of the model tests (unit and CUDA): micro_batch x
// seq_len tokens and targets, each drawn in turn from one mt19937 seeded
// with `seed`, uniform over the config's vocabulary.
#pragma once
#include <cstdint>
#include <random>

#include "core/config/config.h"
#include "core/data/dataset.h"

namespace m6::test {

inline Batch random_batch(const Config& c, uint32_t seed) {
  std::mt19937 rng(seed);
  Batch b;
  b.B = c.train.micro_batch;
  b.T = c.train.seq_len;
  for (int i = 0; i < b.B * b.T; ++i) {
    b.inputs.push_back(static_cast<int32_t>(rng() % c.model.vocab_size));
    b.targets.push_back(static_cast<int32_t>(rng() % c.model.vocab_size));
  }
  return b;
}

}  // namespace m6::test
