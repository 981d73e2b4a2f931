#include "core/parallel/half.h"

#include <cstring>

namespace m6 {

namespace {
uint32_t bits_of(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  return x;
}
float float_of(uint32_t x) {
  float f;
  std::memcpy(&f, &x, sizeof f);
  return f;
}
}  // namespace

uint16_t f32_to_bf16(float f) {
  uint32_t x = bits_of(f);
  if ((x & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest, ties to even (carries into the exponent)
  return static_cast<uint16_t>(x >> 16);
}

float bf16_to_f32(uint16_t h) { return float_of(static_cast<uint32_t>(h) << 16); }

uint16_t f32_to_f16(float f) {
  const uint32_t x = bits_of(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u)  // inf, or NaN (quiet, top payload bits kept)
    return sign |
           (a > 0x7f800000u ? static_cast<uint16_t>(0x7e00u | ((a >> 13) & 0x3ffu)) : 0x7c00u);
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds past 65504: inf
  if (a >= 0x38800000u) {                       // normal half: |f| >= 2^-14
    const uint32_t mant = a & 0x7fffffu;
    uint32_t h = (((a >> 23) - 127u + 15u) << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry moves into the exponent
    return sign | static_cast<uint16_t>(h);
  }
  if (a <= 0x33000000u) return sign;  // <= 2^-25: rounds to zero (2^-25 is a tie, to even 0)
  // Subnormal half: units of 2^-24. |f| = mant * 2^(e-150), so the unit count is mant >> (126-e).
  const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  const int shift = 126 - static_cast<int>(a >> 23);  // 14..24
  uint32_t h = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1u))) ++h;
  return sign | static_cast<uint16_t>(h);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (e == 0) {
    const float v = static_cast<float>(mant) * 0x1.0p-24f;  // exact
    return sign ? -v : v;
  }
  if (e == 31) return float_of(sign | 0x7f800000u | (mant << 13));
  return float_of(sign | ((e - 15u + 127u) << 23) | (mant << 13));
}

void f32_to_half(uint16_t* dst, const float* src, size_t n, CommDType t, float scale) {
  if (t == CommDType::BF16) {
    if (scale == 1.0f)
      for (size_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
    else
      for (size_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i] * scale);
  } else {
    if (scale == 1.0f)
      for (size_t i = 0; i < n; ++i) dst[i] = f32_to_f16(src[i]);
    else
      for (size_t i = 0; i < n; ++i) dst[i] = f32_to_f16(src[i] * scale);
  }
}

void half_to_f32(float* dst, const uint16_t* src, size_t n, CommDType t, float inv_scale) {
  if (t == CommDType::BF16)
    for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]) * inv_scale;
  else
    for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(src[i]) * inv_scale;
}

}  // namespace m6
