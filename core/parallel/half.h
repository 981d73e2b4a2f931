// Half-precision conversion for communication (precision.comm: bf16|fp16):
// fp32 <-> bfloat16 and IEEE binary16, round to nearest even, host side.
// bf16 keeps fp32's exponent (8 bits) and 8 significant bits; fp16 has 5
// exponent bits (largest finite 65504, subnormals down to 2^-24) and 11
// significant bits. Overflow rounds to infinity, NaN stays NaN.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/parallel/comm.h"

namespace m6 {

uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);

// dst[i] = half(src[i] * scale) in precision t (BF16 or F16).
void f32_to_half(uint16_t* dst, const float* src, size_t n, CommDType t, float scale);
// dst[i] = float(src[i]) * inv_scale.
void half_to_f32(float* dst, const uint16_t* src, size_t n, CommDType t, float inv_scale);

}  // namespace m6
