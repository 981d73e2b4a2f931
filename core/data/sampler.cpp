// Batch sampling. Training windows are a pure function of (seed, global sample
// index) -- DESIGN.md principle 4 -- so a resumed or re-laid-out run reads
// exactly the data the original would have; evaluation windows are fixed and
// evenly spaced so every evaluation of a run scores the same tokens.
#include <vector>

#include "core/data/dataset.h"
#include "core/util/error.h"
#include "core/util/splitmix.h"

namespace m6 {
namespace {

constexpr uint64_t kGolden = kSplitmixGolden;

// Counter-based: any sample's position is computed directly, no RNG state to
// carry in checkpoints. Mixed twice so nearby seeds and indices decorrelate.
uint64_t sample_hash(uint64_t seed, uint64_t index) {
  return splitmix64(splitmix64(seed ^ (kGolden * index)) ^ seed);
}

// Fills row b of `out` from the window [pos, pos + T + 1) of the stream.
void fill_row(const TokenDataset& ds, int64_t pos, int b, std::vector<int32_t>& window,
              Batch& out) {
  const int T = out.T;
  ds.read(pos, T + 1, window.data());
  for (int t = 0; t < T; ++t) {
    out.inputs[size_t(b) * T + t] = window[t];
    out.targets[size_t(b) * T + t] = window[t + 1];
  }
}

void shape_batch(const TokenDataset& ds, int B, int T, Batch& out) {
  M6_CHECK(B > 0 && T > 0, "B ", B, " T ", T);
  M6_CHECK(ds.size() >= int64_t(T) + 1, "dataset of ", ds.size(), " tokens, T ", T);
  out.B = B;
  out.T = T;
  out.inputs.resize(size_t(B) * T);   // [B, T]
  out.targets.resize(size_t(B) * T);  // [B, T]
}

}  // namespace

void sample_train_batch(const TokenDataset& ds, uint64_t seed, int64_t step, int micro,
                        int micro_per_step, int B, int T, Batch& out) {
  M6_CHECK(step >= 0 && micro_per_step > 0 && micro >= 0 && micro < micro_per_step, "step ",
           step, " micro ", micro, " micro_per_step ", micro_per_step);
  shape_batch(ds, B, T, out);
  // Start positions lie in [0, size - T - 1] so the window's last target exists.
  const uint64_t n_starts = static_cast<uint64_t>(ds.size() - T);
  std::vector<int32_t> window(size_t(T) + 1);
  const int64_t first = (step * micro_per_step + micro) * int64_t(B);
  for (int b = 0; b < B; ++b) {
    const uint64_t i = static_cast<uint64_t>(first + b);
    const int64_t pos = static_cast<int64_t>(sample_hash(seed, i) % n_starts);
    fill_row(ds, pos, b, window, out);
  }
}

void sample_eval_batch(const TokenDataset& ds, int index, int n_batches, int B, int T,
                       Batch& out) {
  M6_CHECK(n_batches > 0 && index >= 0 && index < n_batches, "index ", index, " n_batches ",
           n_batches);
  shape_batch(ds, B, T, out);
  // J windows, the first at 0 and the last at size - T - 1 (the last start
  // whose window fits); overlapping when the split is small.
  const int64_t J = int64_t(n_batches) * B;
  const int64_t last = ds.size() - T - 1;
  std::vector<int32_t> window(size_t(T) + 1);
  for (int b = 0; b < B; ++b) {
    const int64_t j = int64_t(index) * B + b;
    const int64_t pos =
        J == 1 ? 0 : static_cast<int64_t>((__int128)j * last / (J - 1));  // exact, no overflow
    fill_row(ds, pos, b, window, out);
  }
}

}  // namespace m6
