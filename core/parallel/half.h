// Half-precision conversion for communication (precision.comm: bf16|fp16):
// buffers of fp32 <-> bfloat16 / IEEE binary16, round to nearest even, host
// side. The scalar conversions (f32_to_bf16, f16_to_f32, ...) live in
// core/util/half_round.h, shared with the mixed-precision compute path.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/parallel/comm.h"
#include "core/util/half_round.h"

namespace m6 {

// dst[i] = half(src[i] * scale) in precision t (BF16 or F16).
void f32_to_half(uint16_t* dst, const float* src, size_t n, CommDType t, float scale);
// dst[i] = float(src[i]) * inv_scale.
void half_to_f32(float* dst, const uint16_t* src, size_t n, CommDType t, float inv_scale);

}  // namespace m6
