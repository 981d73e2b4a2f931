// Batch sampling: training batches are a pure function of (seed, step, micro)
// through the global sample index; evaluation batches are fixed windows.
// The stream used here is tok[i] = i (vocab 65536), so a window's start
// position is its first input token and every check is exact.
#include <stdlib.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "core/data/dataset.h"
#include "core/util/error.h"
#include "data_test_util.h"

namespace fs = std::filesystem;
using namespace m6;

namespace {

struct TempDir : test::TempDir {
  TempDir() : test::TempDir("m6_sampler") {}
};

// The stream 0, 1, ..., n-1 written as shards of the given sizes (awkward on purpose).
TokenDataset iota_dataset(const TempDir& d, const std::vector<int>& shard_sizes, int seq_len) {
  int next = 0;
  for (size_t s = 0; s < shard_sizes.size(); ++s) {
    std::vector<uint16_t> tok(shard_sizes[s]);
    for (auto& t : tok) t = uint16_t(next++);
    write_shard(d.file("s_" + std::to_string(s) + ".bin"), tok);
  }
  REQUIRE(next <= 65536);
  return TokenDataset::open(d.file("s_*.bin"), 65536, seq_len);
}

// Every row must be a contiguous window [pos, pos + T] of the stream, with
// targets the inputs shifted by one. Returns the start positions.
std::vector<int64_t> check_windows(const Batch& b, int64_t size) {
  std::vector<int64_t> starts;
  for (int r = 0; r < b.B; ++r) {
    const int64_t pos = b.inputs[size_t(r) * b.T];
    REQUIRE(pos >= 0);
    REQUIRE(pos + b.T + 1 <= size);
    for (int t = 0; t < b.T; ++t) {
      REQUIRE(b.inputs[size_t(r) * b.T + t] == pos + t);
      REQUIRE(b.targets[size_t(r) * b.T + t] == pos + t + 1);
    }
    starts.push_back(pos);
  }
  return starts;
}

}  // namespace

TEST_CASE("train batches are a pure function of (seed, step, micro)", "[data]") {
  TempDir d;
  TokenDataset ds = iota_dataset(d, {1000, 1, 0, 2999}, 16);
  const int B = 3, T = 16;
  Batch a, b;
  sample_train_batch(ds, 1234, 5, 1, 2, B, T, a);
  sample_train_batch(ds, 1234, 5, 1, 2, B, T, b);
  REQUIRE(a.B == B);
  REQUIRE(a.T == T);
  REQUIRE(a.inputs.size() == size_t(B * T));
  REQUIRE(a.targets.size() == size_t(B * T));
  CHECK(a.inputs == b.inputs);
  CHECK(a.targets == b.targets);
  check_windows(a, ds.size());

  // The three rows of one batch are different samples.
  const auto rows = check_windows(a, ds.size());
  CHECK(std::set<int64_t>(rows.begin(), rows.end()).size() == 3);

  Batch other_step, other_seed, other_micro;
  sample_train_batch(ds, 1234, 6, 1, 2, B, T, other_step);
  sample_train_batch(ds, 1235, 5, 1, 2, B, T, other_seed);
  sample_train_batch(ds, 1234, 5, 0, 2, B, T, other_micro);
  CHECK(other_step.inputs != a.inputs);
  CHECK(other_seed.inputs != a.inputs);
  CHECK(other_micro.inputs != a.inputs);
  check_windows(other_step, ds.size());
  check_windows(other_seed, ds.size());
  check_windows(other_micro, ds.size());
}

TEST_CASE("micro m of a W-micro step reads global samples (step*W + m)*B + b", "[data]") {
  TempDir d;
  TokenDataset ds = iota_dataset(d, {777, 4000}, 8);
  const int B = 3, T = 8, W = 4;
  const uint64_t seed = 42;
  const int64_t step = 7;
  std::set<std::vector<int32_t>> distinct;
  for (int m = 0; m < W; ++m) {
    Batch micro;
    sample_train_batch(ds, seed, step, m, W, B, T, micro);
    distinct.insert(micro.inputs);
    // The same samples as step step*W + m of a run with one micro-batch per step
    // (the 1-rank, W-accumulation equivalence of DESIGN.md section 4) ...
    Batch flat;
    sample_train_batch(ds, seed, step * W + m, 0, 1, B, T, flat);
    CHECK(micro.inputs == flat.inputs);
    CHECK(micro.targets == flat.targets);
    // ... and row b is global sample i = (step*W + m)*B + b, which a run with
    // B = 1 and one micro-batch per step reads at step i.
    for (int b = 0; b < B; ++b) {
      const int64_t i = (step * W + m) * B + b;
      Batch single;
      sample_train_batch(ds, seed, i, 0, 1, 1, T, single);
      for (int t = 0; t < T; ++t) {
        REQUIRE(micro.inputs[size_t(b) * T + t] == single.inputs[t]);
        REQUIRE(micro.targets[size_t(b) * T + t] == single.targets[t]);
      }
    }
  }
  CHECK(distinct.size() == size_t(W));
}

TEST_CASE("train windows reach every valid start and never run past the end", "[data]") {
  TempDir d;
  const int T = 10;
  // size = T + 3: the valid starts are exactly 0, 1, 2.
  TokenDataset ds = iota_dataset(d, {5, 8}, T);
  REQUIRE(ds.size() == T + 3);
  std::set<int64_t> seen;
  for (int64_t step = 0; step < 200; ++step) {
    Batch b;
    sample_train_batch(ds, 9, step, 0, 1, 2, T, b);
    for (int64_t p : check_windows(b, ds.size())) seen.insert(p);
  }
  CHECK(seen == std::set<int64_t>{0, 1, 2});

  // Exactly one window: every sample is the whole stream.
  TempDir d1;
  TokenDataset tight = iota_dataset(d1, {T + 1}, T);
  Batch b;
  sample_train_batch(tight, 3, 11, 1, 3, 4, T, b);
  for (int64_t p : check_windows(b, tight.size())) CHECK(p == 0);
}

TEST_CASE("train start positions spread over the whole stream", "[data]") {
  TempDir d;
  const int T = 16;
  TokenDataset ds = iota_dataset(d, {30000, 20000}, T);
  const int64_t n_starts = ds.size() - T;
  // 4000 samples into 10 equal bins of the start range: each bin expects 400.
  std::vector<int> bins(10, 0);
  for (int64_t step = 0; step < 1000; ++step) {
    Batch b;
    sample_train_batch(ds, 2024, step, 0, 1, 4, T, b);
    for (int64_t p : check_windows(b, ds.size())) bins[size_t(p * 10 / n_starts)]++;
  }
  for (int c : bins) {
    CHECK(c > 300);
    CHECK(c < 500);
  }
}

TEST_CASE("eval batches are fixed, evenly spaced and cover the split", "[data]") {
  TempDir d;
  const int T = 12, B = 3, N = 4;
  TokenDataset ds = iota_dataset(d, {100, 0, 1, 400}, T);
  const int64_t last = ds.size() - T - 1;  // 488
  std::vector<int64_t> all_starts;
  for (int i = 0; i < N; ++i) {
    Batch a, b;
    sample_eval_batch(ds, i, N, B, T, a);
    sample_eval_batch(ds, i, N, B, T, b);
    CHECK(a.inputs == b.inputs);
    CHECK(a.targets == b.targets);
    const auto s = check_windows(a, ds.size());
    all_starts.insert(all_starts.end(), s.begin(), s.end());
  }
  // J = 12 windows at floor(j * last / (J - 1)).
  REQUIRE(all_starts.size() == 12);
  for (int64_t j = 0; j < 12; ++j) CHECK(all_starts[size_t(j)] == j * last / 11);
  CHECK(all_starts.front() == 0);
  CHECK(all_starts.back() == last);

  // One window in all: it starts at 0.
  Batch one;
  sample_eval_batch(ds, 0, 1, 1, T, one);
  CHECK(check_windows(one, ds.size()) == std::vector<int64_t>{0});

  // More windows than starts: they overlap but stay in range.
  TempDir d2;
  TokenDataset small = iota_dataset(d2, {T + 2}, T);
  for (int i = 0; i < 5; ++i) {
    Batch b;
    sample_eval_batch(small, i, 5, 2, T, b);
    check_windows(b, small.size());
  }
}

TEST_CASE("sampler arguments outside their range are internal errors", "[data]") {
  TempDir d;
  TokenDataset ds = iota_dataset(d, {50}, 8);
  Batch b;
  CHECK_THROWS_AS(sample_train_batch(ds, 1, 0, 2, 2, 1, 8, b), Error);  // micro >= micro_per_step
  CHECK_THROWS_AS(sample_train_batch(ds, 1, 0, 0, 1, 1, 50, b), Error);  // T + 1 > size
  CHECK_THROWS_AS(sample_eval_batch(ds, 3, 3, 1, 8, b), Error);          // index >= n_batches
}
