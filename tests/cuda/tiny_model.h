// A tiny MoE model config for the whole-model checks of the CUDA tests
// (test_cuda_moe.cpp, test_cuda_offload.cpp, test_cuda_graphs.cpp):
// vocabulary 29, d 12, 3 heads, d_ff 10, 4 experts top-2 with capacity 1.25,
// micro-batch 2 x 5 tokens; in half mode (--compute bf16|fp16)
// precision.compute matches. Its batches: tests/random_batch.h.
#pragma once
#include <cstdint>

#include "core/config/config.h"
#include "core/model/model.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/random_batch.h"

namespace m6::cuda_test {

inline Config tiny_moe_config(int n_layers, int moe_every, uint64_t seed) {
  Config cfg;
  cfg.model.vocab_size = 29;
  cfg.model.max_seq_len = 7;
  cfg.model.d_model = 12;
  cfg.model.n_heads = 3;
  cfg.model.n_layers = n_layers;
  cfg.model.d_ff = 10;
  cfg.model.moe.every = moe_every;
  cfg.model.moe.experts = 4;
  cfg.model.moe.top_k = 2;
  cfg.model.moe.capacity_factor = 1.25;
  cfg.train.seq_len = 5;
  cfg.train.micro_batch = 2;
  cfg.train.global_batch = 2;
  cfg.train.threads = 1;
  cfg.train.seed = seed;
  cfg.data.train = cfg.data.val = "unused";
  if (g_half) cfg.precision.compute = *g_half == HalfType::BF16 ? Precision::Bf16 : Precision::Fp16;
  return cfg;
}

}  // namespace m6::cuda_test
