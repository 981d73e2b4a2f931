// fp16 dynamic loss scaling (core/train/loss_scaler.h): backoff on overflow
// (after `hysteresis` overflows in a row), growth after growth_interval clean
// steps, the [min, max] clamp, inactive scalers, and restore.
#include <catch2/catch.hpp>

#include "core/train/loss_scaler.h"

using namespace m6;

TEST_CASE("loss scaler: 2^16, halves on overflow, doubles after the interval", "[loss_scaler]") {
  LossScaleConfig c;  // defaults: 65536, interval 1000, x2, x0.5, hysteresis 1
  LossScaler s(c, LossScaler::Active::Yes);
  CHECK(s.scale() == 65536.0);
  CHECK(s.update(true));
  CHECK(s.scale() == 32768.0);
  for (int i = 0; i < 999; i++) CHECK_FALSE(s.update(false));
  CHECK(s.scale() == 32768.0);
  CHECK(s.update(false));  // the 1000th clean step
  CHECK(s.scale() == 65536.0);
  CHECK(s.state().good_steps == 0);
  // an overflow resets the clean-step count
  for (int i = 0; i < 500; i++) s.update(false);
  s.update(true);
  for (int i = 0; i < 999; i++) s.update(false);
  CHECK(s.scale() == 32768.0);
}

TEST_CASE("loss scaler: hysteresis, min and max clamps", "[loss_scaler]") {
  LossScaleConfig c;
  c.init = 8, c.min = 2, c.max = 16, c.hysteresis = 2, c.growth_interval = 3;
  c.backoff_factor = 0.25, c.growth_factor = 4;
  LossScaler s(c, LossScaler::Active::Yes);
  CHECK_FALSE(s.update(true));  // the first overflow is tolerated
  CHECK(s.scale() == 8);
  CHECK(s.update(true));
  CHECK(s.scale() == 2);
  CHECK_FALSE(s.can_back_off());
  s.update(true), s.update(true);
  CHECK(s.scale() == 2);  // clamped at min
  for (int i = 0; i < 6; i++) s.update(false);
  CHECK(s.scale() == 16);  // 2 * 4 = 8, then 32 clamped to max
  CHECK(s.can_back_off());
}

TEST_CASE("loss scaler: inactive is 1; restore keeps the state", "[loss_scaler]") {
  LossScaleConfig c;
  LossScaler off(c, LossScaler::Active::No);
  CHECK(off.scale() == 1.0);
  CHECK_FALSE(off.update(true));
  CHECK(off.scale() == 1.0);
  CHECK_FALSE(off.state().active);

  LossScaler a(c, LossScaler::Active::Yes);
  a.update(true);
  for (int i = 0; i < 7; i++) a.update(false);
  LossScaler b(c, LossScaler::Active::Yes);
  b.restore(a.state());
  CHECK(b.scale() == 32768.0);
  CHECK(b.state().good_steps == 7);
  // A checkpoint of a run without loss scaling leaves the configured start.
  LossScaler d(c, LossScaler::Active::Yes);
  d.restore(off.state());
  CHECK(d.scale() == 65536.0);
}
