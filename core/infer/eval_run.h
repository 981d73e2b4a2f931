// `m6train eval`: the mean cross-entropy of a checkpoint on held-out token
// shards, and bits per byte (the loss in bits per token divided by bytes per
// token: 1 for the byte-level vocabulary of 256).
#pragma once
#include <cstdint>
#include <string>

#include "core/config/config.h"

namespace m6 {

struct EvalRunResult {
  double loss = 0;            // nats per predicted token
  double bits_per_byte = 0;   // NaN when the vocabulary is not byte-level
  int64_t tokens = 0;         // predicted tokens
  int64_t windows = 0;        // sequences of train.seq_len
  int64_t shard_tokens = 0;   // tokens in the shards
  int shards = 0;
};

// batches = 0: every non-overlapping window of train.seq_len + 1 tokens of the
// shards (the whole split, each token predicted once but the first of each
// window), train.micro_batch windows per forward. batches = N > 0: the N
// evenly spaced micro-batches a training run evaluates with eval.batches = N
// (so N = the run's eval.batches reproduces its last eval loss).
// cfg: the checkpoint's config. DataError (exit 3) for missing or bad shards.
EvalRunResult eval_checkpoint(const Config& cfg, const std::string& ckpt_dir,
                              const std::string& data_glob, int batches);

}  // namespace m6
