// Host-to-device copies without a host stall (CudaBackend::to_device of small
// transfers): the bytes are copied into a ring of pinned host memory, the
// device copy runs from there asynchronously in stream order, and an event
// recorded after each copy says when its part of the ring may be written
// again. The caller's buffer may be reused as soon as copy() returns, as with
// a synchronous copy; the host waits only when the ring is full of copies the
// stream has not reached yet.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <deque>
#include <vector>

namespace m6::cuda {

class StagingRing {
 public:
  // `bytes` of pinned memory, at most `copies` copies in flight.
  StagingRing(size_t bytes, int copies);
  ~StagingRing();
  StagingRing(const StagingRing&) = delete;
  StagingRing& operator=(const StagingRing&) = delete;

  // The largest copy the ring takes (larger ones go another way).
  size_t capacity() const { return bytes_; }
  // dst (device memory) = src[0, bytes) once `st` reaches this point. Every
  // copy of one ring must go to the same stream (its events complete in
  // order, which the reuse logic relies on). bytes <= capacity().
  void copy(void* dst, const void* src, size_t bytes, cudaStream_t st);
  // Host waits so far for ring space (a measure of a too small ring).
  long long waits() const { return waits_; }

 private:
  struct InFlight {
    size_t begin, end;  // ring bytes [begin, end) being read by the device
    int event;          // events_ index recorded after the copy
  };
  // Blocks until no copy in flight reads [begin, end), retiring those done.
  void wait_for(size_t begin, size_t end);

  char* ring_ = nullptr;
  size_t bytes_ = 0;
  size_t head_ = 0;  // where the next copy goes (wrapping to 0 when it does not fit)
  std::vector<cudaEvent_t> events_;
  int next_event_ = 0;
  std::deque<InFlight> in_flight_;  // oldest first
  long long waits_ = 0;
};

}  // namespace m6::cuda
