#include "core/train/loss_scaler.h"

#include <algorithm>

namespace m6 {

LossScaler::LossScaler(const LossScaleConfig& c, Active active) : c_(c) {
  st_.active = active == Active::Yes;
  st_.scale = st_.active ? c.init : 1.0;
  st_.good_steps = 0;
  st_.hysteresis_left = c.hysteresis;
}

bool LossScaler::update(bool overflow) {
  if (!st_.active) return false;
  const double before = st_.scale;
  if (overflow) {
    st_.good_steps = 0;
    if (--st_.hysteresis_left <= 0) {
      st_.scale = std::max(c_.min, st_.scale * c_.backoff_factor);
      st_.hysteresis_left = c_.hysteresis;
    }
  } else if (++st_.good_steps >= c_.growth_interval) {
    st_.good_steps = 0;
    st_.hysteresis_left = c_.hysteresis;
    st_.scale = std::min(c_.max, st_.scale * c_.growth_factor);
  }
  return st_.scale != before;
}

void LossScaler::restore(const LossScalerState& s) {
  if (!st_.active || !s.active) return;
  st_ = s;
  st_.scale = std::clamp(st_.scale, c_.min, c_.max);  // the config's range may have changed
}

}  // namespace m6
