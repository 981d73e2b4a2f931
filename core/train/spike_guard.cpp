#include "core/train/spike_guard.h"

#include <algorithm>
#include <cmath>

#include "core/util/error.h"

namespace m6 {

SpikeGuard::SpikeGuard(int window, double z_threshold)
    : window_(static_cast<size_t>(window < 0 ? 0 : window)), z_threshold_(z_threshold) {
  M6_CHECK(window == 0 || window >= 2, "spike guard window ", window);
}

double SpikeGuard::z_score(double loss) const {
  if (window_ == 0 || hist_.size() < window_) return 0.0;
  // Two passes in double: the window is small and the result must not depend
  // on anything but the window's values (bit-exact resume).
  double mean = 0;
  for (double x : hist_) mean += x;
  mean /= static_cast<double>(hist_.size());
  double var = 0;
  for (double x : hist_) var += (x - mean) * (x - mean);
  // Floored at 1e-6 of the mean so a (nearly) flat window does not turn
  // rounding noise into a spike.
  const double sd =
      std::max(std::sqrt(var / static_cast<double>(hist_.size())), 1e-6 * std::fabs(mean));
  if (sd == 0.0) return 0.0;
  return (loss - mean) / sd;
}

void SpikeGuard::accept(double loss) {
  if (window_ == 0) return;
  hist_.push_back(loss);
  while (hist_.size() > window_) hist_.pop_front();
}

void SpikeGuard::restore(const std::vector<double>& history) {
  hist_.clear();
  if (window_ == 0) return;
  const size_t from = history.size() > window_ ? history.size() - window_ : 0;
  hist_.assign(history.begin() + static_cast<std::ptrdiff_t>(from), history.end());
}

}  // namespace m6
