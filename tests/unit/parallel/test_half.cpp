// Half-precision conversion of the communication path: every bf16 and fp16
// value survives f32 -> half -> f32, and every value exactly halfway between
// two neighbours rounds to the even one (round to nearest even), including
// fp16 subnormals, the overflow threshold and the zero/subnormal boundary.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "core/parallel/half.h"

using namespace m6;

namespace {

bool is_nan_f16(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu); }
bool is_nan_bf16(uint16_t h) { return (h & 0x7f80u) == 0x7f80u && (h & 0x7fu); }

}  // namespace

TEST_CASE("fp16: every value round-trips exactly", "[half]") {
  int wrong = 0;
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const uint16_t x = static_cast<uint16_t>(h);
    if (is_nan_f16(x)) {
      wrong += !std::isnan(f16_to_f32(x)) || !is_nan_f16(f32_to_f16(f16_to_f32(x)));
      continue;
    }
    wrong += f32_to_f16(f16_to_f32(x)) != x;
  }
  CHECK(wrong == 0);
}

TEST_CASE("fp16: halfway values round to even, overflow to inf, tiny to zero", "[half]") {
  // Positive finite values in order: 0x0000 .. 0x7bff. The midpoint of two
  // neighbours is exact in fp32 and must round to the one with an even code.
  int wrong = 0;
  for (uint32_t h = 0; h < 0x7bffu; ++h) {
    const float a = f16_to_f32(static_cast<uint16_t>(h));
    const float b = f16_to_f32(static_cast<uint16_t>(h + 1));
    const float mid = a + 0.5f * (b - a);  // exact; a + b would overflow at the top
    const uint16_t even = static_cast<uint16_t>((h & 1u) ? h + 1 : h);
    wrong += f32_to_f16(mid) != even;
    wrong += f32_to_f16(-mid) != (even | 0x8000u);
    // Just off the midpoint goes to the nearer neighbour.
    wrong += f32_to_f16(std::nextafter(mid, 0.0f)) != h;
    wrong += f32_to_f16(std::nextafter(mid, 1e9f)) != h + 1;
  }
  CHECK(wrong == 0);
  CHECK(f16_to_f32(0x7bffu) == 65504.0f);
  CHECK(f32_to_f16(65519.996f) == 0x7bffu);
  CHECK(f32_to_f16(65520.0f) == 0x7c00u);  // the tie above the largest finite goes to inf
  CHECK(f32_to_f16(1e10f) == 0x7c00u);
  CHECK(f32_to_f16(-1e10f) == 0xfc00u);
  CHECK(f32_to_f16(std::numeric_limits<float>::infinity()) == 0x7c00u);
  CHECK(is_nan_f16(f32_to_f16(std::numeric_limits<float>::quiet_NaN())));
  CHECK(f32_to_f16(0x1.0p-25f) == 0x0000u);                        // tie with zero: to even
  CHECK(f32_to_f16(std::nextafter(0x1.0p-25f, 1.0f)) == 0x0001u);  // just above: smallest subnormal
  CHECK(f32_to_f16(0x1.0p-24f) == 0x0001u);
  CHECK(f32_to_f16(-0.0f) == 0x8000u);
  CHECK(f32_to_f16(1e-30f) == 0x0000u);
}

TEST_CASE("bf16: every value round-trips, halfway values round to even", "[half]") {
  int wrong = 0;
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const uint16_t x = static_cast<uint16_t>(h);
    if (is_nan_bf16(x)) {
      wrong += !std::isnan(bf16_to_f32(x)) || !is_nan_bf16(f32_to_bf16(bf16_to_f32(x)));
      continue;
    }
    wrong += f32_to_bf16(bf16_to_f32(x)) != x;
  }
  for (uint32_t h = 0; h < 0x7f7fu; ++h) {
    const float a = bf16_to_f32(static_cast<uint16_t>(h));
    const float b = bf16_to_f32(static_cast<uint16_t>(h + 1));
    const float mid = a + 0.5f * (b - a);  // exact; a + b would overflow at the top
    wrong += f32_to_bf16(mid) != ((h & 1u) ? h + 1 : h);
  }
  CHECK(wrong == 0);
  CHECK(f32_to_bf16(std::numeric_limits<float>::max()) == 0x7f80u);  // rounds to inf
  CHECK(is_nan_bf16(f32_to_bf16(std::numeric_limits<float>::quiet_NaN())));
  // bf16 steps by 2^-7 above 1: ties go to the even neighbour
  CHECK(bf16_to_f32(f32_to_bf16(1.0f + 0x1.0p-8f)) == 1.0f);
  CHECK(bf16_to_f32(f32_to_bf16(1.0f + 0x1.8p-7f)) == 1.0f + 0x1.0p-6f);
  CHECK(bf16_to_f32(f32_to_bf16(1.0f + 0x1.8p-8f)) == 1.0f + 0x1.0p-7f);
}

TEST_CASE("array conversion applies and removes the scale", "[half]") {
  const std::vector<float> src = {1e-6f, -3e-7f, 0.5f, 100.0f, 0.0f};
  std::vector<uint16_t> h(src.size());
  std::vector<float> back(src.size());
  // fp16 alone loses 3e-7 to a subnormal with 2 significant bits; scaled by 128 it keeps 11.
  f32_to_half(h.data(), src.data(), src.size(), CommDType::F16, 128.0f);
  half_to_f32(back.data(), h.data(), src.size(), CommDType::F16, 1.0f / 128.0f);
  for (size_t i = 0; i < src.size(); ++i)
    CHECK(std::fabs(back[i] - src[i]) <= std::fabs(src[i]) * 0x1.0p-11f);
  f32_to_half(h.data(), src.data(), src.size(), CommDType::F16, 1.0f);
  half_to_f32(back.data(), h.data(), src.size(), CommDType::F16, 1.0f);
  CHECK(std::fabs(back[1] - src[1]) > std::fabs(src[1]) * 0x1.0p-11f);
  f32_to_half(h.data(), src.data(), src.size(), CommDType::BF16, 1.0f);
  half_to_f32(back.data(), h.data(), src.size(), CommDType::BF16, 1.0f);
  for (size_t i = 0; i < src.size(); ++i)
    CHECK(std::fabs(back[i] - src[i]) <= std::fabs(src[i]) * 0x1.0p-8f);
}
