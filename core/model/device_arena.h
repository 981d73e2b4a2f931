// Owns device (or host-arena) allocations of one object (a model, a layer)
// and frees them all together; typed helpers keep shapes visible at the call
// site.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/backend/backend.h"

namespace m6 {

// Host: the backend's host arena (pinned memory on CUDA), for offload.
enum class MemorySpace { Device, Host };

class DeviceArena {
 public:
  explicit DeviceArena(Backend& be, MemorySpace space = MemorySpace::Device)
      : be_(be), space_(space) {}
  ~DeviceArena() {
    for (void* p : ptrs_) space_ == MemorySpace::Host ? be_.release_host(p) : be_.release(p);
  }
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;

  float* floats(size_t n) { return static_cast<float*>(raw(n * sizeof(float))); }
  int32_t* ints(size_t n) { return static_cast<int32_t*>(raw(n * sizeof(int32_t))); }
  double* doubles(size_t n) { return static_cast<double*>(raw(n * sizeof(double))); }

 private:
  void* raw(size_t bytes) {
    const size_t n = bytes == 0 ? 4 : bytes;
    void* p = space_ == MemorySpace::Host ? be_.alloc_host(n) : be_.alloc(n);
    ptrs_.push_back(p);
    return p;
  }
  Backend& be_;
  MemorySpace space_;
  std::vector<void*> ptrs_;
};

}  // namespace m6
