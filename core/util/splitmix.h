#pragma once
// splitmix64 (Steele, Lea, Flood 2014): one fixed 64-bit mixing function for
// every counter-based hash in m6train (parameter init, batch sampling, token
// sampling, routing fingerprints). Changing it changes every seeded result.
#include <cstdint>

// Also compiled by nvcc into device code (the routing fingerprint kernel).
#if defined(__CUDACC__)
#define M6_HOST_DEVICE __host__ __device__
#else
#define M6_HOST_DEVICE
#endif

namespace m6 {

inline constexpr uint64_t kSplitmixGolden = 0x9e3779b97f4a7c15ULL;

M6_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
  x += kSplitmixGolden;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The hash of routing slot i (token i / S, choice i % S) sent to `expert`,
// kept or dropped: MoeStats::routing is the wrapping sum over slots.
M6_HOST_DEVICE inline uint64_t routing_slot_hash(uint64_t i, int32_t expert, bool kept) {
  const uint64_t e = static_cast<uint32_t>(expert);
  return splitmix64((i << 33) ^ (e << 1) ^ (kept ? 1u : 0u));
}

}  // namespace m6
