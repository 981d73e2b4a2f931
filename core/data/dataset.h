// Token shards (DESIGN.md section 6): little-endian, a header of 256 int32 --
// magic 20240520, version 1, token count -- then uint16 tokens. A dataset is
// the concatenation of the shards a glob matches, in sorted order, memory-mapped
// and validated once at open.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace m6 {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;
constexpr int kShardHeaderInts = 256;

// Writes one shard atomically. Throws DataError if a token does not fit uint16.
void write_shard(const std::string& path, const std::vector<uint16_t>& tokens);

class TokenDataset {
 public:
  // Opens every file matching `glob` (sorted). Checks each: magic, version,
  // file size against the header's count, every token < vocab; and the total
  // holds at least seq_len + 1 tokens. Any failure is a DataError naming the
  // file, what was found and what was expected.
  static TokenDataset open(const std::string& glob, int vocab, int seq_len);

  int64_t size() const { return total_; }
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

// `m6train data build`: byte-level tokenisation (each UTF-8 byte is a token)
// of every input file; the last `val_fraction` of each file goes to the val
// split. Writes <output>/train_000000.bin ... and <output>/val_000000.bin ...
struct CorpusSummary {
  int64_t train_tokens = 0, val_tokens = 0;
  std::vector<std::string> train_files, val_files;
};
CorpusSummary build_corpus(const std::vector<std::string>& inputs, const std::string& output_dir,
                           double val_fraction);

}  // namespace m6
