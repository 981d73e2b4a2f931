#pragma once
// The bookkeeping of one backend arena: every allocation by address and
// size, the bytes held now and their high-water mark since the last reset
// (metrics.jsonl's mem_peak_bytes / mem_host_peak_bytes). One definition for
// the CPU backend's two counted heaps and the CUDA backend's device memory
// and pinned host arena. Not thread-safe: a backend is used by one thread.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>

#include "core/util/error.h"

namespace m6 {

class AllocTracker {
 public:
  void add(const void* p, size_t bytes) {
    M6_CHECK(p != nullptr, "AllocTracker: null allocation");
    const bool fresh = sizes_.emplace(addr(p), bytes).second;
    M6_CHECK(fresh, "AllocTracker: address allocated twice");
    live_ += static_cast<int64_t>(bytes);
    peak_ = std::max(peak_, live_);
    ++count_;
  }
  // Forgets the allocation that starts at p; throws for an address this
  // arena did not hand out (a release into the wrong arena).
  void remove(const void* p, const char* arena) {
    auto it = sizes_.find(addr(p));
    M6_CHECK(it != sizes_.end(), arena, ": release of a pointer this arena did not allocate");
    live_ -= static_cast<int64_t>(it->second);
    sizes_.erase(it);
  }
  // Whether p points into any allocation held (start included, end excluded).
  bool contains(const void* p) const {
    auto it = sizes_.upper_bound(addr(p));
    if (it == sizes_.begin()) return false;
    --it;
    return addr(p) < it->first + it->second;
  }
  int64_t live() const { return live_; }
  int64_t peak() const { return peak_; }
  int64_t count() const { return count_; }  // allocations made since creation
  void reset_peak() { peak_ = live_; }

 private:
  static uintptr_t addr(const void* p) { return reinterpret_cast<uintptr_t>(p); }
  std::map<uintptr_t, size_t> sizes_;
  int64_t live_ = 0, peak_ = 0, count_ = 0;
};

}  // namespace m6
