// Token shards (DESIGN.md section 6): little-endian, a header of 256 int32 --
// magic 20240520, version, token count, vocabulary size (0: not recorded) --
// then the tokens: uint16 in version 1 (the llm.c format), uint32 in version 2
// (vocabularies over 65536). A dataset is the concatenation of the shards a
// glob matches, in sorted order, memory-mapped and validated once at open.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace m6 {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;      // uint16 tokens
constexpr int32_t kShardVersionWide = 2;  // uint32 tokens
constexpr int kShardHeaderInts = 256;
constexpr int kShardVocabInt = 3;  // header[3]: the tokenizer's vocabulary size, 0 if unknown

// Writes one version-1 shard atomically, with `vocab` in the header (0: not recorded).
void write_shard(const std::string& path, const std::vector<uint16_t>& tokens, int vocab = 0);
// Writes a shard of a tokenizer with `vocab` tokens: version 1 (uint16) when
// vocab <= 65536, else version 2 (uint32). Throws Error if a token is >= vocab.
void write_shard(const std::string& path, const std::vector<uint32_t>& tokens, int vocab);

// Whether a model of `model_vocab` rows can train on shards of a tokenizer
// with `shard_vocab` tokens: equal, or the model's embedding padded up to at
// most the next multiple of 128 (GPT-2's 50257 in a 50304-row table).
bool vocab_compatible(int shard_vocab, int model_vocab);

class TokenDataset {
 public:
  // Opens every file matching `glob` (sorted). Checks each: magic, version,
  // file size against the header's count, the header's vocabulary size (when
  // recorded) against vocab (vocab_compatible) and the other shards, every
  // token < vocab; and the total holds at least seq_len + 1 tokens. Any
  // failure is a DataError naming the file, what was found and what was expected.
  static TokenDataset open(const std::string& glob, int vocab, int seq_len);

  int64_t size() const { return total_; }
  // The vocabulary size the shards' headers record (0 if none does).
  int shard_vocab() const { return shard_vocab_; }
  const std::vector<std::string>& files() const { return files_; }
  // Copies tokens [pos, pos+n) of the concatenated stream (may span shards).
  void read(int64_t pos, int64_t n, int32_t* out) const;

  TokenDataset();
  ~TokenDataset();
  TokenDataset(TokenDataset&&) noexcept;
  TokenDataset& operator=(TokenDataset&&) noexcept;

 private:
  struct Shard;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::vector<int64_t> starts_;  // first global token of each shard
  std::vector<std::string> files_;
  int64_t total_ = 0;
  int shard_vocab_ = 0;
};

// A micro-batch: inputs[B*T] and targets[B*T] (targets are inputs shifted by one).
struct Batch {
  int B = 0, T = 0;
  std::vector<int32_t> inputs, targets;
};

// Training data is a pure function of (seed, step): micro-batch m of a step
// (m = accum_index * world + rank, DESIGN.md section 4) holds global samples
// (step * micro_per_step + m) * B + b, each a window starting at a position
// drawn from a counter-based hash of (seed, sample index).
void sample_train_batch(const TokenDataset& ds, uint64_t seed, int64_t step, int micro,
                        int micro_per_step, int B, int T, Batch& out);

// Evaluation batch i of n: fixed, evenly spaced windows of the held-out split,
// the same for every evaluation of a run.
void sample_eval_batch(const TokenDataset& ds, int index, int n_batches, int B, int T,
                       Batch& out);

// `m6train data build`: tokenisation of every input file (by default byte-level:
// each UTF-8 byte is a token); the last `val_fraction` of each file's bytes
// (moved back to a UTF-8 character boundary for other tokenizers) goes to the
// val split. Writes <output>/train_000000.bin ... and <output>/val_000000.bin ...
class Tokenizer;
struct CorpusSummary {
  int64_t train_tokens = 0, val_tokens = 0;
  std::vector<std::string> train_files, val_files;
  int vocab = 256;
};
CorpusSummary build_corpus(const std::vector<std::string>& inputs, const std::string& output_dir,
                           double val_fraction);
CorpusSummary build_corpus(const std::vector<std::string>& inputs, const std::string& output_dir,
                           double val_fraction, const Tokenizer& tokenizer);

}  // namespace m6
