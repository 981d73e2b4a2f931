// The pinned staging ring of small host-to-device copies (staging_ring.h).
#include <algorithm>
#include <cstring>

#include "core/util/error.h"
#include "cuda/check.h"
#include "cuda/staging_ring.h"

namespace m6::cuda {
namespace {
constexpr size_t kAlign = 256;  // each copy starts on a 256-byte boundary
}

StagingRing::StagingRing(size_t bytes, int copies) : bytes_(bytes) {
  M6_CHECK(bytes > 0 && copies > 0, "StagingRing: empty ring");
  M6_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&ring_), bytes_, cudaHostAllocPortable));
  events_.resize(static_cast<size_t>(copies), nullptr);
  for (cudaEvent_t& e : events_)
    M6_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
}

StagingRing::~StagingRing() {
  // Destructors must not throw: errors are ignored. The owner has
  // synchronised the stream; wait for the events anyway before freeing.
  for (const InFlight& f : in_flight_) cudaEventSynchronize(events_[static_cast<size_t>(f.event)]);
  for (cudaEvent_t e : events_) cudaEventDestroy(e);
  cudaFreeHost(ring_);
}

// The copies in flight complete in order (one stream): waiting for the newest
// one that overlaps the range covers every older one too.
void StagingRing::wait_for(size_t begin, size_t end) {
  size_t last = in_flight_.size();
  for (size_t i = 0; i < in_flight_.size(); ++i)
    if (in_flight_[i].begin < end && begin < in_flight_[i].end) last = i;
  if (last == in_flight_.size()) return;
  ++waits_;
  M6_CUDA_CHECK(cudaEventSynchronize(events_[static_cast<size_t>(in_flight_[last].event)]));
  in_flight_.erase(in_flight_.begin(), in_flight_.begin() + static_cast<std::ptrdiff_t>(last) + 1);
}

void StagingRing::copy(void* dst, const void* src, size_t bytes, cudaStream_t st) {
  M6_CHECK(bytes <= bytes_, "StagingRing: copy of ", bytes, " bytes into a ring of ", bytes_);
  if (bytes == 0) return;
  const size_t need = std::min(bytes_, (bytes + kAlign - 1) / kAlign * kAlign);
  size_t at = head_;
  if (at + need > bytes_) at = 0;
  if (in_flight_.size() == events_.size()) {  // every event in use: wait for the oldest
    ++waits_;
    M6_CUDA_CHECK(cudaEventSynchronize(events_[static_cast<size_t>(in_flight_.front().event)]));
    in_flight_.pop_front();
  }
  wait_for(at, at + need);
  std::memcpy(ring_ + at, src, bytes);
  M6_CUDA_CHECK(cudaMemcpyAsync(dst, ring_ + at, bytes, cudaMemcpyHostToDevice, st));
  const int ev = next_event_;
  next_event_ = (next_event_ + 1) % static_cast<int>(events_.size());
  M6_CUDA_CHECK(cudaEventRecord(events_[static_cast<size_t>(ev)], st));
  in_flight_.push_back({at, at + need, ev});
  head_ = at + need;
}

}  // namespace m6::cuda
