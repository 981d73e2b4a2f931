// fp16 dynamic loss scaling (DESIGN.md section 5, precision.loss_scale). fp16
// keeps 5 exponent bits: gradients below 2^-24 flush to zero. The loss, and so
// every gradient, is multiplied by the scale before backward and divided out
// before the optimizer. A step whose gradients hold an inf/NaN on any rank
// (the caller agrees on it over the world) is skipped on every rank, and after
// `hysteresis` such steps in a row the scale is multiplied by backoff_factor;
// after growth_interval clean steps it is multiplied by growth_factor. The
// scale stays within [min, max]. Inactive (fp32, bf16): the scale is 1.
#pragma once
#include "core/config/config.h"
#include "core/ckpt/checkpoint.h"

namespace m6 {

class LossScaler {
 public:
  enum class Active { No, Yes };
  LossScaler(const LossScaleConfig& c, Active active);

  bool active() const { return st_.active; }
  double scale() const { return st_.scale; }
  // Whether an overflow can still back off (the scale is above min).
  bool can_back_off() const { return st_.scale > c_.min; }

  // Records the outcome of a step whose gradients were (overflow) or were not
  // all finite. Returns whether the scale changed.
  bool update(bool overflow);

  const LossScalerState& state() const { return st_; }
  // Restores a checkpoint's state; a state written by a run without loss
  // scaling (inactive) leaves the fresh one from the config.
  void restore(const LossScalerState& s);

 private:
  LossScaleConfig c_;
  LossScalerState st_;
};

}  // namespace m6
