// fp32 <-> bfloat16 / IEEE binary16 conversion, round to nearest even: the one
// definition of half precision in m6train. Used by the half-precision wire
// (core/parallel/half.*), by the mixed-precision emulation of the CPU backend
// and, compiled as device code, by the CUDA kernels (cuda/kernels/), so that
// a value rounded on either backend has the same bits.
//
// bf16 keeps fp32's exponent (8 bits) and 8 significant bits; fp16 has 5
// exponent bits (largest finite 65504, subnormals down to 2^-24) and 11
// significant bits. Overflow rounds to infinity, NaN stays NaN (quiet), and
// the sign of zero is kept. Plain C++17 (the CUDA sources compile as C++17);
// no CUDA header is included.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define M6_HD __host__ __device__ __forceinline__
#else
#define M6_HD inline
#endif

namespace m6 {

// The half formats that compute in mixed precision (precision.compute).
enum class HalfType : uint8_t { BF16, F16 };

M6_HD uint32_t half_bits_of(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  return x;
#endif
}

M6_HD float half_float_of(uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(x);
#else
  float f;
  std::memcpy(&f, &x, sizeof f);
  return f;
#endif
}

M6_HD uint16_t f32_to_bf16(float f) {
  uint32_t x = half_bits_of(f);
  if ((x & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest, ties to even (carries into the exponent)
  return static_cast<uint16_t>(x >> 16);
}

M6_HD float bf16_to_f32(uint16_t h) { return half_float_of(static_cast<uint32_t>(h) << 16); }

M6_HD uint16_t f32_to_f16(float f) {
  const uint32_t x = half_bits_of(f);
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

M6_HD float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (e == 0) {
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;  // 2^-24, exact
    return sign ? -v : v;
  }
  if (e == 31) return half_float_of(sign | 0x7f800000u | (mant << 13));
  return half_float_of(sign | ((e - 15u + 127u) << 23) | (mant << 13));
}

// The fp32 value nearest to f (ties to even) that the half type represents:
// what storing f as bf16/fp16 and loading it back gives.
M6_HD float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }
// fp16 without the detour through 16 bits (the emulation rounds every
// activation, so this is on the hot path); equal bit for bit to
// f16_to_f32(f32_to_f16(f)) over all 2^32 inputs.
M6_HD float round_f16(float f) {
  const uint32_t x = half_bits_of(f), sign = x & 0x80000000u, a = x & 0x7fffffffu;
  if (a >= 0x477ff000u) {  // >= 65520 (rounds past 65504), inf or NaN
    if (a > 0x7f800000u) return half_float_of(x | 0x00400000u);  // quiet NaN
    return half_float_of(sign | 0x7f800000u);
  }
  if (a >= 0x38800000u) {  // normal fp16: keep 10 mantissa bits, ties to even
    const uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
    return half_float_of(sign | (r & ~0x1fffu));
  }
  // subnormal fp16 (quantum 2^-24): 2^-1 + |f| has an ulp of 2^-24, so the
  // fp32 addition rounds |f| to the quantum, ties to even; subtracting is
  // exact. (IEEE arithmetic: not to be compiled with -ffast-math.)
#if defined(__CUDA_ARCH__)
  const float r = __fsub_rn(__fadd_rn(0.5f, half_float_of(a)), 0.5f);
#else
  const float r = (0.5f + half_float_of(a)) - 0.5f;
#endif
  return half_float_of(sign | half_bits_of(r));
}
M6_HD float round_half(float f, HalfType t) {
  return t == HalfType::BF16 ? round_bf16(f) : round_f16(f);
}

// Unit roundoff u (half the distance from 1 to the next value): |round(x) - x|
// <= u |x| for normal results. bf16 2^-8, fp16 2^-11.
constexpr double half_unit_roundoff(HalfType t) {
  return t == HalfType::BF16 ? 0.00390625 : 0.00048828125;
}

}  // namespace m6
