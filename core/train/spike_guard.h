// Loss-spike guard (train.spike_guard): skips the update of a step whose loss
// lies more than z_threshold standard deviations above the mean of the last
// `window` accepted steps' losses -- a bad batch or an optimizer blow-up
// caught before it reaches the weights. The window is part of the training
// state: it is saved in the checkpoint manifest so a resumed run decides
// exactly as the uninterrupted one would.
#pragma once
#include <cstddef>
#include <deque>
#include <vector>

namespace m6 {

class SpikeGuard {
 public:
  // window 0 disables the guard; otherwise window >= 2.
  SpikeGuard(int window, double z_threshold);

  bool enabled() const { return window_ > 0; }
  // (loss - mean) / std over the window (std floored at 1e-6 |mean|); 0
  // until the window is full.
  double z_score(double loss) const;
  // Whether the step with this (finite) loss should be skipped.
  bool is_spike(double loss) const { return enabled() && z_score(loss) > z_threshold_; }
  // Appends the loss of a step whose update was applied (the oldest leaves).
  void accept(double loss);

  std::vector<double> history() const { return {hist_.begin(), hist_.end()}; }
  // Restores a saved window; when the window size has changed on resume only
  // the newest `window` entries are kept.
  void restore(const std::vector<double>& history);

 private:
  size_t window_;
  double z_threshold_;
  std::deque<double> hist_;  // oldest first, at most window_ entries
};

}  // namespace m6
