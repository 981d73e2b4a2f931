#pragma once
// splitmix64 (Steele, Lea, Flood 2014): one fixed 64-bit mixing function for
// every counter-based hash in m6train (parameter init, batch sampling, token
// sampling, routing fingerprints). Changing it changes every seeded result.
#include <cstdint>

namespace m6 {

inline constexpr uint64_t kSplitmixGolden = 0x9e3779b97f4a7c15ULL;

inline uint64_t splitmix64(uint64_t x) {
  x += kSplitmixGolden;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace m6
