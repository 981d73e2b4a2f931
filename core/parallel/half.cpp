#include "core/parallel/half.h"

namespace m6 {

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
