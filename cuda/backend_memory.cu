// CudaBackend's memory: device and pinned host allocations, the copies
// (staged, synchronous, asynchronous on the copy stream), zeroing, sync and
// read-back, and the device scratch (reduction partials, group tables).
#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <utility>
#include <vector>

#include "core/util/error.h"
#include "cuda/backend_cuda_impl.h"
#include "cuda/check.h"

namespace m6 {
namespace cuda_impl {

constexpr size_t kAllocAlign = 256;

void* CudaBackend::alloc(size_t bytes) {
  no_capture("allocation");
  const size_t rounded = (std::max<size_t>(bytes, 1) + kAllocAlign - 1) / kAllocAlign * kAllocAlign;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, rounded);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    fail(fmt("cuda backend: cannot allocate ", bytes, " bytes on device ", device_, ": ",
             cudaGetErrorString(e)));
  }
  M6_CUDA_CHECK(cudaMemsetAsync(p, 0, rounded, stream_));
  M6_CUDA_CHECK(cudaStreamSynchronize(stream_));
  device_mem_.add(p, rounded);
  return p;
}

void CudaBackend::release(void* p) {
  if (p == nullptr) return;
  no_capture("release");
  device_mem_.remove(p, "cuda backend (device)");
  // Both streams: an offload copy (copy_async) may still read or write it.
  M6_CUDA_CHECK(cudaStreamSynchronize(copy_stream_));
  M6_CUDA_CHECK(cudaStreamSynchronize(stream_));
  M6_CUDA_CHECK(cudaFree(p));
}

void* CudaBackend::alloc_host(size_t bytes) {
  no_capture("host allocation");
  const size_t rounded = (std::max<size_t>(bytes, 1) + kAllocAlign - 1) / kAllocAlign * kAllocAlign;
  void* p = nullptr;
  const cudaError_t e = cudaHostAlloc(&p, rounded, cudaHostAllocPortable);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    fail(fmt("cuda backend: cannot allocate ", bytes, " bytes of pinned host memory (",
             cudaGetErrorString(e),
             "); lower offload.optimizer / offload.params or "
             "raise the memlock limit (ulimit -l)"));
  }
  std::memset(p, 0, rounded);
  host_mem_.add(p, rounded);
  return p;
}

void CudaBackend::release_host(void* p) {
  if (p == nullptr) return;
  no_capture("host release");
  host_mem_.remove(p, "cuda backend (pinned host)");
  M6_CUDA_CHECK(cudaStreamSynchronize(copy_stream_));
  M6_CUDA_CHECK(cudaStreamSynchronize(stream_));
  M6_CUDA_CHECK(cudaFreeHost(p));
}

Backend::MemoryStats CudaBackend::memory_stats() const {
  return {device_mem_.live(), device_mem_.peak(), host_mem_.live(), host_mem_.peak(),
          device_mem_.count() + host_mem_.count()};
}

void CudaBackend::reset_memory_peaks() {
  device_mem_.reset_peak();
  host_mem_.reset_peak();
}

// The host buffer may be reused as soon as to_device returns. Up to
// kStagedCopyMax bytes into device memory: through the staging ring, no
// host stall (later ops on the stream see the data). Larger ones, and
// those into the pinned host arena (an offloaded master or moment, which
// the host reads directly afterwards): a copy the host waits for.
// cudaMemcpyDefault: either side may be in the pinned host arena, which
// unified addressing resolves. Neither counts as a host read.
void CudaBackend::to_device(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  no_capture("host-to-device copy");
  if (host_mem_.contains(dst)) {  // pinned host memory: a host copy once no stream uses it
    M6_CUDA_CHECK(cudaStreamSynchronize(copy_stream_));
    M6_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::memcpy(dst, src, bytes);
    return;
  }
  if (bytes <= kStagedCopyMax) {
    staging_->copy(dst, src, bytes, stream_);
    return;
  }
  M6_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_));
  M6_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::to_host(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  read_back({{dst, src, bytes}});
}

// The copy waits for the compute work issued so far (copy_after_: what it
// reads was written there, what it overwrites is no longer read), runs on
// copy_stream_ (in order: the copies of one slot after those queued
// before), and marks slot_done_[slot].
void CudaBackend::copy_async(int slot, void* dst, const void* src, size_t bytes) {
  check_slot(slot);
  if (bytes == 0) return;
  no_capture("asynchronous copy (copy_async)");
  M6_CUDA_CHECK(cudaEventRecord(copy_after_, stream_));
  M6_CUDA_CHECK(cudaStreamWaitEvent(copy_stream_, copy_after_, 0));
  M6_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, copy_stream_));
  M6_CUDA_CHECK(cudaEventRecord(slot_done_[slot], copy_stream_));
}

void CudaBackend::copy_async_wait(int slot) {
  check_slot(slot);
  no_capture("copy_async_wait");
  M6_CUDA_CHECK(cudaStreamWaitEvent(stream_, slot_done_[slot], 0));
}

void CudaBackend::copy_async_sync(int slot) {
  check_slot(slot);
  no_capture("copy_async_sync");
  M6_CUDA_CHECK(cudaEventSynchronize(slot_done_[slot]));
}

// Device to device with memmove semantics (the CPU reference allows overlap).
void CudaBackend::copy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0 || dst == src) return;
  const char *d = static_cast<const char*>(dst), *s = static_cast<const char*>(src);
  if (d < s + bytes && s < d + bytes) {  // overlap: go through a scratch buffer
    void* tmp = alloc(bytes);
    M6_CUDA_CHECK(cudaMemcpyAsync(tmp, src, bytes, cudaMemcpyDefault, stream_));
    M6_CUDA_CHECK(cudaMemcpyAsync(dst, tmp, bytes, cudaMemcpyDefault, stream_));
    release(tmp);
    return;
  }
  M6_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_));
}

void CudaBackend::zero(void* p, size_t bytes) {
  if (bytes == 0) return;
  if (host_mem_.contains(p)) {  // pinned host memory: after the work that may still use it
    no_capture("zero of pinned host memory");
    M6_CUDA_CHECK(cudaStreamSynchronize(copy_stream_));
    M6_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::memset(p, 0, bytes);
    return;
  }
  M6_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
}

// One host read: waits for the stream, then reports the bad indices the
// kernels recorded (check_errors' readback, not counted again).
void CudaBackend::sync() {
  no_capture("sync");
  ++host_reads_;
  M6_CUDA_CHECK(cudaStreamSynchronize(stream_));
  report_bad();
}

// The reduction scratch with room for `doubles` (the column sums' partials
// too), grown when short; a micro-batch's warm-up grows it before a capture.
double* CudaBackend::partials(size_t doubles) {
  if (doubles <= partial_cap_) return partial_;
  auto* fresh = static_cast<double*>(alloc(doubles * sizeof(double)));
  retire(partial_);
  partial_ = fresh;
  partial_cap_ = doubles;
  return partial_;
}

void CudaBackend::check_slot(int slot) {
  M6_CHECK(slot >= 0 && slot < kCopySlots, "async copy slot ", slot, " is outside [0, ",
           kCopySlots, ")");
}

// The pointer and row tables of the grouped linear layers: `parts` (host
// ranges, each a multiple of 8 bytes) back to back in group_table_, grown
// when too small. to_device (the staging ring: no host stall) orders the
// copy before the GEMMs that read it.
void CudaBackend::upload_group_table(std::initializer_list<std::pair<const void*, size_t>> parts,
                                     size_t room) {
  size_t bytes = 0;
  for (const auto& p : parts) bytes += p.second;
  if (bytes > group_table_bytes_) {
    if (group_table_ != nullptr) release(group_table_);
    group_table_bytes_ = std::max<size_t>({bytes, room, 4096});
    group_table_ = static_cast<char*>(alloc(group_table_bytes_));
  }
  std::vector<char> host(bytes);
  size_t at = 0;
  for (const auto& p : parts) {
    std::memcpy(host.data() + at, p.first, p.second);
    at += p.second;
  }
  to_device(group_table_, host.data(), bytes);
}

void CudaBackend::read_back(std::initializer_list<ReadBack> parts) {
  no_capture("device-to-host copy");
  ++host_reads_;
  for (const ReadBack& r : parts)
    if (r.bytes > 0)
      M6_CUDA_CHECK(cudaMemcpyAsync(r.dst, r.src, r.bytes, cudaMemcpyDefault, stream_));
  M6_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

// A device buffer replaced by a larger one: kept until the backend is
// destroyed, since a captured graph may still read or write it.
void CudaBackend::retire(void* p) {
  if (p != nullptr) retired_.push_back(p);
}

}  // namespace cuda_impl
}  // namespace m6
