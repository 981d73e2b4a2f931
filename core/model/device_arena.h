// Owns device allocations of one object (a model, a layer) and frees them all
// together; typed helpers keep shapes visible at the call site.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/backend/backend.h"

namespace m6 {

class DeviceArena {
 public:
  explicit DeviceArena(Backend& be) : be_(be) {}
  ~DeviceArena() {
    for (void* p : ptrs_) be_.release(p);
  }
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;

  float* floats(size_t n) { return static_cast<float*>(raw(n * sizeof(float))); }
  int32_t* ints(size_t n) { return static_cast<int32_t*>(raw(n * sizeof(int32_t))); }

 private:
  void* raw(size_t bytes) {
    void* p = be_.alloc(bytes == 0 ? 4 : bytes);
    ptrs_.push_back(p);
    return p;
  }
  Backend& be_;
  std::vector<void*> ptrs_;
};

}  // namespace m6
