// The NCCL communicator (core/parallel/comm_nccl.h): the Comm interface on
// GPU buffers, one rank per GPU.
//
// Communicators are created non-blocking (ncclConfig_t::blocking = 0): every
// NCCL call returns at once, and this file waits for it by polling
// ncclCommGetAsyncError, then for the enqueued work by polling a CUDA event,
// both against the deadline of parallel.timeout_s (comm_wait.h). Past the
// deadline -- a peer stopped, stuck or dead -- the communicator is aborted
// (ncclCommAbort, which also ends its kernels still waiting on the lost peer)
// and CommTimeout names the collective; NCCL's own errors take the same path.
//
// After a non-blocking NCCL call returns ncclInProgress, nothing else may be
// put on the stream until NCCL has enqueued the collective (its kernels are
// launched from a background thread when a connection is being set up, e.g.
// the first exchange with a peer): enqueued() waits for that after every
// NCCL call, before the copies and conversions that consume the result.
// Host buffers go through pinned staging (a device-to-pageable copy would
// block the host inside CUDA until the collective ends, past any timeout).
//
// Collectives run on the CUDA backend's stream. The time counted as
// communication (CommActivity::seconds) is the GPU time between two events
// around the collective, so the compute queued before it is not counted.
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/parallel/comm_nccl.h"
#include "core/parallel/comm_wait.h"
#include "core/util/error.h"
#include "cuda/backend_cuda.h"
#include "cuda/check.h"
#include "cuda/kernels/kernels.h"

static_assert(NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0),
              "m6train needs NCCL 2.18 or newer (ncclCommSplit, non-blocking communicators, bf16)");

namespace m6 {
namespace {

ncclDataType_t nccl_type(CommDType t) {
  switch (t) {
    case CommDType::F32:
      return ncclFloat32;
    case CommDType::BF16:
      return ncclBfloat16;
    case CommDType::F16:
      return ncclFloat16;
    case CommDType::I32:
      return ncclInt32;
    case CommDType::I64:
      return ncclInt64;
    case CommDType::U8:
      return ncclUint8;
    case CommDType::F64:
      return ncclFloat64;
  }
  return ncclFloat32;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  return op == ReduceOp::Sum ? ncclSum : op == ReduceOp::Max ? ncclMax : ncclMin;
}

bool is_device_pointer(const void* p) {
  if (p == nullptr) return false;
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

// A buffer that grows on demand (start-up sizes; steady state reuses it):
// device memory, or with Pinned page-locked host memory (the host side of a
// collective on host buffers, so that both copies are asynchronous).
template <bool Pinned>
struct GrowingBuffer {
  void* p = nullptr;
  size_t bytes = 0;
  void* get(size_t n, cudaStream_t st) {
    if (n <= bytes) return p;
    if (p != nullptr) {
      M6_CUDA_CHECK(cudaStreamSynchronize(st));
      M6_CUDA_CHECK(Pinned ? cudaFreeHost(p) : cudaFree(p));
      p = nullptr;
    }
    const size_t want = std::max<size_t>(n, 4096);
    M6_CUDA_CHECK(Pinned ? cudaMallocHost(&p, want) : cudaMalloc(&p, want));
    bytes = want;
    return p;
  }
  ~GrowingBuffer() {
    if (p != nullptr) (void)(Pinned ? cudaFreeHost(p) : cudaFree(p));
  }
};
using Scratch = GrowingBuffer<false>;
using PinnedScratch = GrowingBuffer<true>;

class NcclComm final : public Comm {
 public:
  NcclComm(ncclComm_t c, int device, cudaStream_t stream, std::shared_ptr<CommActivity> a)
      : Comm(std::move(a)), comm_(c), device_(device), stream_(stream) {
    M6_CUDA_CHECK(cudaEventCreate(&before_));
    M6_CUDA_CHECK(cudaEventCreate(&after_));
    check(ncclCommCount(comm_, &size_), "ncclCommCount");
    check(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank");
  }
  ~NcclComm() override {
    // Never wait on a peer here: after a failure (a timeout, an exception on
    // its way out) the communicator is aborted, which returns at once.
    if (!aborted_) {
      if (activity().broken || std::uncaught_exceptions() > 0 || !finalize())
        ncclCommAbort(comm_);
      else
        ncclCommDestroy(comm_);
    }
    cudaEventDestroy(before_);
    cudaEventDestroy(after_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "nccl"; }

  void all_reduce(void* buf, size_t count, CommDType t, ReduceOp op) override {
    M6_CHECK(!(t == CommDType::U8 && op == ReduceOp::Sum), "u8 sums are not supported");
    const size_t es = comm_dtype_size(t);
    activity().reduce_bytes += static_cast<int64_t>(count * es);
    if (count == 0) return;
    void* d = device_view(buf, count * es, stage_a_, true);
    start();
    check(ncclAllReduce(d, d, count, nccl_type(t), nccl_op(op), comm_, stream_), "ncclAllReduce");
    enqueued("all_reduce");
    void* back = d != buf ? to_pinned(d, count * es) : nullptr;
    finish("all_reduce");
    if (back != nullptr) std::memcpy(buf, back, count * es);
  }

  void all_to_all_v(const void* send, const int64_t* send_counts, const int64_t* send_displs,
                    void* recv, const int64_t* recv_counts, const int64_t* recv_displs,
                    CommDType t) override {
    const size_t es = comm_dtype_size(t);
    int64_t send_end = 0, recv_end = 0;
    for (int p = 0; p < size_; ++p) {
      send_end = std::max(send_end, send_displs[p] + send_counts[p]);
      recv_end = std::max(recv_end, recv_displs[p] + recv_counts[p]);
    }
    activity().a2a_bytes += a2a_wire_bytes(send_counts, t);
    const void* ds = device_view(const_cast<void*>(send), send_end * es, stage_a_, true);
    const bool recv_host = recv_end > 0 && !is_device_pointer(recv);
    void* dr = recv_host ? stage_b_.get(recv_end * es, stream_) : recv;
    start();
    exchange(ds, send_counts, send_displs, dr, recv_counts, recv_displs, es, nccl_type(t));
    enqueued("all_to_all_v");
    char* back = recv_host ? static_cast<char*>(to_pinned(dr, recv_end * es)) : nullptr;
    activity().a2a_seconds += finish("all_to_all_v");
    if (back != nullptr)  // only the received blocks: the gaps of recv keep their contents
      for (int p = 0; p < size_; ++p)
        if (recv_counts[p] > 0)
          std::memcpy(static_cast<char*>(recv) + recv_displs[p] * es, back + recv_displs[p] * es,
                      recv_counts[p] * es);
  }

  void all_gather(const void* send, void* recv, size_t count, CommDType t) override {
    const size_t es = comm_dtype_size(t);
    if (count == 0) return;
    const void* ds = device_view(const_cast<void*>(send), count * es, stage_a_, true);
    const bool recv_host = !is_device_pointer(recv);
    void* dr = recv_host ? stage_b_.get(count * es * size_, stream_) : recv;
    start();
    check(ncclAllGather(ds, dr, count, nccl_type(t), comm_, stream_), "ncclAllGather");
    enqueued("all_gather");
    void* back = recv_host ? to_pinned(dr, count * es * size_) : nullptr;
    finish("all_gather");
    if (back != nullptr) std::memcpy(recv, back, count * es * size_);
  }

  void broadcast(void* buf, size_t count, CommDType t, int root) override {
    const size_t es = comm_dtype_size(t);
    if (count == 0) return;
    void* d = device_view(buf, count * es, stage_a_, rank_ == root);
    start();
    check(ncclBroadcast(d, d, count, nccl_type(t), root, comm_, stream_), "ncclBroadcast");
    enqueued("broadcast");
    void* back = d != buf ? to_pinned(d, count * es) : nullptr;
    finish("broadcast");
    if (back != nullptr) std::memcpy(buf, back, count * es);
  }

  void barrier() override {
    void* d = stage_a_.get(sizeof(float), stream_);
    start();
    check(ncclAllReduce(d, d, 1, ncclFloat32, ncclSum, comm_, stream_), "ncclAllReduce");
    enqueued("barrier");
    finish("barrier");
  }

  std::unique_ptr<Comm> split(int color, int key) override {
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclComm_t child = nullptr;
    CommLabel label(activity(), fmt("split of the ", role(), " communicator"));
    check(ncclCommSplit(comm_, color, key, &child, &cfg), "ncclCommSplit");
    enqueued("ncclCommSplit");  // this communicator: a failure marks it aborted
    await_nccl_state(child, "ncclCommSplit", activity(), role(), size_);
    return std::make_unique<NcclComm>(child, device_, stream_, activity_ptr());
  }

  // Half payloads are converted on the device; host buffers take the
  // default (host conversion, then the typed collective above).
  void all_reduce_f32(float* buf, size_t count, ReduceOp op, CommDType wire,
                      float scale) override {
    if (wire == CommDType::F32 || !is_device_pointer(buf))
      return Comm::all_reduce_f32(buf, count, op, wire, scale);
    M6_CHECK(wire == CommDType::BF16 || wire == CommDType::F16, "wire precision ",
             comm_dtype_name(wire), " is not a float type");
    activity().reduce_bytes += static_cast<int64_t>(count * 2);
    if (count == 0) return;
    auto* h = static_cast<uint16_t*>(stage_a_.get(count * 2, stream_));
    cuda::launch_f32_to_half(h, buf, count, wire == CommDType::BF16, scale, stream_);
    start();
    check(ncclAllReduce(h, h, count, nccl_type(wire), nccl_op(op), comm_, stream_),
          "ncclAllReduce");
    enqueued("all_reduce");
    cuda::launch_half_to_f32(buf, h, count, wire == CommDType::BF16, 1.0f / scale, stream_);
    finish("all_reduce");
  }

  void all_to_all_v_f32(const float* send, const int64_t* send_counts, const int64_t* send_displs,
                        float* recv, const int64_t* recv_counts, const int64_t* recv_displs,
                        CommDType wire, float scale) override {
    int64_t send_end = 0, recv_end = 0;
    for (int p = 0; p < size_; ++p) {
      send_end = std::max(send_end, send_displs[p] + send_counts[p]);
      recv_end = std::max(recv_end, recv_displs[p] + recv_counts[p]);
    }
    const bool send_dev = send_end == 0 || is_device_pointer(send);
    const bool recv_dev = recv_end == 0 || is_device_pointer(recv);
    // The host fallback below reads and writes both sides on the host.
    M6_CHECK(send_dev == recv_dev, "all_to_all_v_f32: send and recv must both be device or both "
             "host buffers (send on the ", send_dev ? "device" : "host", ", recv on the ",
             recv_dev ? "device" : "host", ")");
    const bool on_device = send_dev && recv_dev;
    if (wire == CommDType::F32 || !on_device)
      return Comm::all_to_all_v_f32(send, send_counts, send_displs, recv, recv_counts,
                                    recv_displs, wire, scale);
    M6_CHECK(wire == CommDType::BF16 || wire == CommDType::F16, "wire precision ",
             comm_dtype_name(wire), " is not a float type");
    const bool bf16 = wire == CommDType::BF16;
    activity().a2a_bytes += a2a_wire_bytes(send_counts, wire);
    auto* hs = static_cast<uint16_t*>(stage_a_.get(send_end * 2, stream_));
    auto* hr = static_cast<uint16_t*>(stage_b_.get(recv_end * 2, stream_));
    for (int p = 0; p < size_; ++p)
      if (send_counts[p] > 0)
        cuda::launch_f32_to_half(hs + send_displs[p], send + send_displs[p], send_counts[p], bf16,
                                 scale, stream_);
    start();
    exchange(hs, send_counts, send_displs, hr, recv_counts, recv_displs, 2, nccl_type(wire));
    enqueued("all_to_all_v");
    for (int p = 0; p < size_; ++p)
      if (recv_counts[p] > 0)
        cuda::launch_half_to_f32(recv + recv_displs[p], hr + recv_displs[p], recv_counts[p], bf16,
                                 1.0f / scale, stream_);
    activity().a2a_seconds += finish("all_to_all_v");
  }

 private:
  // Throws for an NCCL call that failed outright (ncclInProgress is the
  // normal answer of a non-blocking communicator).
  void check(ncclResult_t r, const char* what) {
    if (r == ncclSuccess || r == ncclInProgress) return;
    fail(r, what);
  }
  [[noreturn]] void fail(ncclResult_t r, const char* what) {
    const std::string last = ncclGetLastError(comm_);
    abort_comm();
    throw CommTimeout(fmt(activity().step > 0 ? fmt("step ", activity().step) : "before the first step",
                          ": NCCL failed in ", what, " (",
                          activity().label.empty() ? "unlabelled" : activity().label, ") on the ",
                          role(), " communicator (", size_, " ranks): ", ncclGetErrorString(r),
                          last.empty() ? "" : ": " + last, "; aborting the job"));
  }
  // Completes the communicator's outstanding work (ncclCommFinalize, polled
  // up to the timeout); false when it failed or did not finish in time.
  bool finalize() {
    if (ncclCommFinalize(comm_) != ncclSuccess) {
      ncclResult_t st = ncclSuccess;
      ncclCommGetAsyncError(comm_, &st);
      if (st != ncclInProgress) return false;
    }
    const auto t0 = std::chrono::steady_clock::now();
    for (;;) {
      ncclResult_t st = ncclSuccess;
      ncclCommGetAsyncError(comm_, &st);
      if (st == ncclSuccess) return true;
      if (st != ncclInProgress) return false;
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() >
          activity().timeout_s)
        return false;
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
  void abort_comm() {
    activity().broken = true;
    if (!aborted_) ncclCommAbort(comm_);
    aborted_ = true;
  }

  // A device pointer to `bytes` of `p`'s contents: p itself when it is device
  // memory, else the staging buffer `s`, filled from the host when `fill`.
  // Host data goes through pinned memory (pinned_in_), so the copy is
  // asynchronous and never waits on a collective.
  void* device_view(void* p, size_t bytes, Scratch& s, bool fill) {
    if (bytes == 0 || is_device_pointer(p)) return p;
    void* d = s.get(bytes, stream_);
    if (fill) {
      void* h = pinned_in_.get(bytes, stream_);  // its last copy out has finished (finish())
      std::memcpy(h, p, bytes);
      M6_CUDA_CHECK(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, stream_));
    }
    return d;
  }
  // Enqueues the copy of `bytes` of device memory `d` into pinned_out_ and
  // returns it; readable on the host once finish() has returned.
  void* to_pinned(const void* d, size_t bytes) {
    void* h = pinned_out_.get(bytes, stream_);
    M6_CUDA_CHECK(cudaMemcpyAsync(h, d, bytes, cudaMemcpyDeviceToHost, stream_));
    return h;
  }

  // Grouped point-to-point: the all-to-all-v of NCCL (it has no alltoallv).
  void exchange(const void* send, const int64_t* sc, const int64_t* sd, void* recv,
                const int64_t* rc, const int64_t* rd, size_t es, ncclDataType_t t) {
    check(ncclGroupStart(), "ncclGroupStart");
    // A failed send or receive closes the group before failing: an open
    // group would swallow this thread's later NCCL calls.
    auto in_group = [&](ncclResult_t r, const char* what) {
      if (r == ncclSuccess || r == ncclInProgress) return;
      (void)ncclGroupEnd();
      fail(r, what);
    };
    for (int p = 0; p < size_; ++p) {
      if (sc[p] > 0)
        in_group(ncclSend(static_cast<const char*>(send) + sd[p] * es, sc[p], t, p, comm_, stream_),
                 "ncclSend");
      if (rc[p] > 0)
        in_group(ncclRecv(static_cast<char*>(recv) + rd[p] * es, rc[p], t, p, comm_, stream_),
                 "ncclRecv");
    }
    check(ncclGroupEnd(), "ncclGroupEnd");
  }

  void start() { M6_CUDA_CHECK(cudaEventRecord(before_, stream_)); }

  // wait_collective on this communicator; past the timeout it is aborted.
  template <class Poll>
  void wait_or_abort(Poll&& done, const char* op) {
    try {
      wait_collective(std::forward<Poll>(done), activity(), op, role(), size_);
    } catch (const CommTimeout& e) {
      abort_comm();
      throw CommTimeout(fmt(e.what(), "; the NCCL communicator was aborted"));
    }
  }

  // Waits until NCCL has completed the call just made on this communicator
  // (a non-blocking communicator's ncclInProgress: a collective enqueued, a
  // split done), before any other work goes on the stream.
  void enqueued(const char* op) {
    ncclResult_t st = ncclSuccess;
    wait_or_abort(
        [&] {
          ncclCommGetAsyncError(comm_, &st);
          return st != ncclInProgress;
        },
        op);
    if (st != ncclSuccess) fail(st, op);
  }

  // Waits for the stream up to an event recorded after the collective (and
  // the copies that consume it); enqueued() came first. Returns the GPU
  // seconds between start() and that event.
  double finish(const char* op) {
    CommActivity& a = activity();
    ++a.collectives;
    ncclResult_t nccl_state = ncclSuccess;
    cudaError_t cuda_state = cudaSuccess;
    M6_CUDA_CHECK(cudaEventRecord(after_, stream_));
    wait_or_abort(
        [&] {
          const cudaError_t q = cudaEventQuery(after_);
          if (q == cudaErrorNotReady) {
            // A peer failing mid-collective shows up here, not in the event.
            ncclResult_t st = ncclSuccess;
            ncclCommGetAsyncError(comm_, &st);
            if (st != ncclSuccess && st != ncclInProgress) {
              nccl_state = st;
              return true;
            }
            return false;
          }
          cuda_state = q;
          return true;
        },
        op);
    if (nccl_state != ncclSuccess) fail(nccl_state, op);
    M6_CUDA_CHECK(cuda_state);
    float ms = 0;
    if (cudaEventElapsedTime(&ms, before_, after_) != cudaSuccess) return 0.0;
    a.seconds += ms * 1e-3;
    return ms * 1e-3;
  }

 public:
  // Waits until a non-blocking NCCL call on `c`, a communicator not yet
  // owned by an NcclComm (init, a split's child), has completed; aborts it
  // on failure.
  static void await_nccl_state(ncclComm_t c, const char* what, CommActivity& a,
                               const std::string& role, int size) {
    ncclResult_t st = ncclSuccess;
    try {
      wait_collective(
          [&] {
            ncclCommGetAsyncError(c, &st);
            return st != ncclInProgress;
          },
          a, what, role, size);
    } catch (const CommTimeout& e) {
      a.broken = true;
      ncclCommAbort(c);
      throw CommTimeout(fmt(e.what(), "; the NCCL communicator was aborted"));
    }
    if (st != ncclSuccess) {
      a.broken = true;
      const std::string last = ncclGetLastError(c);
      ncclCommAbort(c);
      throw CommTimeout(fmt(what, " failed on the ", role, " communicator (", size,
                            " ranks): ", ncclGetErrorString(st), last.empty() ? "" : ": " + last,
                            "; aborting the job"));
    }
  }

 private:
  ncclComm_t comm_;
  int device_;
  cudaStream_t stream_;
  cudaEvent_t before_ = nullptr, after_ = nullptr;
  int rank_ = 0, size_ = 1;
  bool aborted_ = false;
  Scratch stage_a_, stage_b_;
  PinnedScratch pinned_in_, pinned_out_;
};

}  // namespace

std::string nccl_runtime_version() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "unknown";
  // NCCL_VERSION(X,Y,Z) = X*10000 + Y*100 + Z since 2.9
  return fmt(v / 10000, ".", (v / 100) % 100, ".", v % 100);
}

std::unique_ptr<Comm> make_nccl_comm(Comm& bootstrap, Backend& be) {
  const cudaStream_t stream = cuda_backend_stream(be);
  const int device = cuda_backend_device(be);
  M6_CUDA_CHECK(cudaSetDevice(device));
  CommActivity& a = bootstrap.activity();
  ncclUniqueId id{};
  {
    CommLabel label(a, "NCCL unique id");
    if (bootstrap.rank() == 0) {
      const ncclResult_t r = ncclGetUniqueId(&id);
      if (r != ncclSuccess)
        throw Error(fmt("ncclGetUniqueId failed: ", ncclGetErrorString(r), " (NCCL ",
                        nccl_runtime_version(), ")"));
    }
    bootstrap.broadcast(&id, sizeof id, CommDType::U8, 0);
  }
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = 0;
  ncclComm_t c = nullptr;
  const ncclResult_t r =
      ncclCommInitRankConfig(&c, bootstrap.size(), id, bootstrap.rank(), &cfg);
  if (r != ncclSuccess && r != ncclInProgress) {
    if (c != nullptr) ncclCommAbort(c);  // a partly created communicator
    throw Error(fmt("ncclCommInitRankConfig failed on rank ", bootstrap.rank(), " of ",
                    bootstrap.size(), " (device ", device, "): ", ncclGetErrorString(r), " (NCCL ",
                    nccl_runtime_version(), ")"));
  }
  {
    CommLabel label(a, "NCCL communicator init");
    NcclComm::await_nccl_state(c, "ncclCommInitRankConfig", a, "world", bootstrap.size());
  }
  auto comm = std::make_unique<NcclComm>(c, device, stream, bootstrap.activity_ptr());
  comm->set_role(bootstrap.role());
  return comm;
}

}  // namespace m6
