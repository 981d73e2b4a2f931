// The subset of CUDA's bf16 and warp-matrix (nvcuda::wmma) API that the
// tensor-core attention (cuda/kernels/attention_tc_kernels.cuh) uses, on the
// host, on top of cuda_emulation.h:
//   __nv_bfloat16, __float2bfloat16 (round to nearest even: core/util/
//   half_round.h), __bfloat162float;
//   fragment<matrix_a | matrix_b, 16,16,16, __nv_bfloat16, row_major |
//   col_major>, fragment<accumulator, 16,16,16, float>, fill_fragment,
//   load_matrix_sync, mma_sync, store_matrix_sync (mem_row_major).
// Faithful to what CUDA specifies, not to how a GPU lays fragments out:
// every thread of the warp holds the whole 16x16 tile (the kernel never
// touches fragment elements; their layout is unspecified on the GPU); a load
// reads the whole tile, mma_sync computes D = A B + C in fp32 (products of
// bf16 values are exact in fp32; the sums in the fixed order k = 0..15), and
// a store is done by lane 0 alone, so a lane that reads the stored tile
// without a __syncwarp() in between races as it would on the GPU. Pointers
// must be 32-byte aligned and ldm a multiple of 16 bytes, as CUDA requires:
// a violation aborts.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

#include "core/util/half_round.h"
#include "tests/cuda/emulated/cuda_emulation.h"

#define M6_FLASH_TC_SHARED(name) M6_FLASH_SHARED(name)

struct __nv_bfloat16 {
  uint16_t bits;
};
inline __nv_bfloat16 __float2bfloat16(float f) { return {m6::f32_to_bf16(f)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return m6::bf16_to_f32(h.bits); }

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
  static_assert(M == 16 && N == 16 && K == 16, "only 16x16x16 fragments are emulated");

 public:
  float emu[256];  // the whole tile, row-major: for the emulation's functions only
};

inline void emu_check(const void* ptr, unsigned ldm, unsigned elem_bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(ptr) % 32 != 0 || (ldm * elem_bytes) % 16 != 0) {
    std::fprintf(stderr, "wmma emulation: %s: pointer %p not 32-byte aligned or ldm %u bad\n", what,
                 ptr, ldm);
    std::abort();
  }
}

template <class Use, class T, class L>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, float v) {
  for (float& x : f.emu) x = v;
}

// A or B operand, bf16, from row- or column-major memory.
template <class Use, class L>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, L>& f, const __nv_bfloat16* p,
                             unsigned ldm) {
  emu_check(p, ldm, 2, "load_matrix_sync");
  for (int i = 0; i < 16; i++)
    for (int j = 0; j < 16; j++) {
      const __nv_bfloat16 v = std::is_same_v<L, row_major> ? p[i * ldm + j] : p[j * ldm + i];
      f.emu[i * 16 + j] = __bfloat162float(v);
    }
}

template <class LA, class LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                     const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  float r[256];
  for (int i = 0; i < 16; i++)
    for (int j = 0; j < 16; j++) {
      float s = c.emu[i * 16 + j];
      for (int k = 0; k < 16; k++) s += a.emu[i * 16 + k] * b.emu[k * 16 + j];
      r[i * 16 + j] = s;
    }
  for (int i = 0; i < 256; i++) d.emu[i] = r[i];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
  emu_check(p, ldm, 4, "store_matrix_sync");
  if (threadIdx.x % 32 != 0) return;
  for (int i = 0; i < 16; i++)
    for (int j = 0; j < 16; j++)
      (layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i]) = f.emu[i * 16 + j];
}

}  // namespace nvcuda::wmma
