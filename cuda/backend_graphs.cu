// CudaBackend's graphs and bookkeeping: stream capture into CUDA graphs and
// their launch, the ops that may not run inside a capture, timestamps (the
// op profiler) and the bad-index records that check_errors and sync throw.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>

#include "core/util/error.h"
#include "core/util/log.h"
#include "cuda/backend_cuda_impl.h"
#include "cuda/check.h"

namespace m6 {
namespace cuda_impl {
namespace {

// A captured sequence: the graph and its executable instance.
class CudaGraph final : public Backend::Graph {
 public:
  CudaGraph(cudaGraph_t g, cudaGraphExec_t e) : graph(g), exec(e) {}
  ~CudaGraph() override {
    cudaGraphExecDestroy(exec);  // destructors must not throw: errors ignored
    cudaGraphDestroy(graph);
  }
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  cudaGraph_t graph;
  cudaGraphExec_t exec;
};

}  // namespace

// One host read: the bad-index records of every op kind since the last
// check; the first error recorded (moe_assign's before crossentropy's,
// the order a forward issues them) is thrown with the CPU's message.
void CudaBackend::check_errors() {
  no_capture("check_errors");
  ++host_reads_;
  report_bad();
}

void CudaBackend::capture_begin() {
  if (capturing_) fail("capture_begin: a graph capture is already running");
  M6_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
  capture_error_.clear();
}

std::unique_ptr<Backend::Graph> CudaBackend::capture_end() {
  if (!capturing_) fail("capture_end without capture_begin");
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  const cudaError_t e = cudaStreamEndCapture(stream_, &graph);
  std::string why = capture_error_;
  capture_error_.clear();
  if (why.empty() && e != cudaSuccess) why = cuda_error_text(e, "cudaStreamEndCapture");
  if (why.empty() && graph == nullptr) why = "cudaStreamEndCapture returned no graph";
  if (why.empty()) {
    cudaGraphExec_t exec = nullptr;
    const cudaError_t ie = cudaGraphInstantiate(&exec, graph, 0);
    if (ie == cudaSuccess) return std::make_unique<CudaGraph>(graph, exec);
    why = cuda_error_text(ie, "cudaGraphInstantiate");
  }
  if (graph != nullptr) cudaGraphDestroy(graph);
  (void)cudaGetLastError();  // leave no error for the next launch check to find
  log_warn(fmt("cuda backend: graph capture failed (", why, "); the step runs eagerly"));
  return nullptr;
}

void CudaBackend::graph_launch(Graph& g) {
  no_capture("graph_launch");
  auto* cg = dynamic_cast<CudaGraph*>(&g);
  if (cg == nullptr) fail("graph_launch: the graph was not captured by a CUDA backend");
  M6_CUDA_CHECK(cudaGraphLaunch(cg->exec, stream_));
}

// Events on the compute stream from a pool that grows to the most marks
// held at once (created with timing; never inside a capture).
int CudaBackend::mark() {
  no_capture("mark");
  if (marks_used_ == marks_.size()) {
    cudaEvent_t e = nullptr;
    M6_CUDA_CHECK(cudaEventCreate(&e));
    marks_.push_back(e);
  }
  M6_CUDA_CHECK(cudaEventRecord(marks_[marks_used_], stream_));
  return static_cast<int>(marks_used_++);
}

double CudaBackend::mark_ms(int a, int b) {
  M6_CHECK(a >= 0 && b >= 0 && static_cast<size_t>(std::max(a, b)) < marks_used_,
           "mark_ms: marks ", a, ", ", b, " are not recorded (", marks_used_, " marks)");
  float ms = 0;
  M6_CUDA_CHECK(cudaEventElapsedTime(&ms, marks_[static_cast<size_t>(a)],
                                     marks_[static_cast<size_t>(b)]));
  return ms;
}

// Reads the bad-index records back (after the work issued so far) and
// throws the first error; the records are cleared first, so the backend
// stays usable after the throw. Messages as the CPU reference's.
// The record of bad-index kind `kind` and a fresh epoch (> 0) for the
// launch about to be made (BadIndex).
cuda::BadSink CudaBackend::bad_sink(int kind) {
  if (++bad_epoch_ <= 0) bad_epoch_ = 1;
  return {bad_ + kind, bad_epoch_};
}

void CudaBackend::report_bad() {
  BadIndex b[kBadKinds] = {};
  M6_CUDA_CHECK(cudaMemcpyAsync(b, bad_, sizeof b, cudaMemcpyDeviceToHost, stream_));
  M6_CUDA_CHECK(cudaStreamSynchronize(stream_));
  const BadIndex* first = nullptr;
  int kind = 0;
  for (int k = 0; k < kBadKinds && first == nullptr; ++k)
    if (b[k].first != 0) first = &b[k], kind = k;
  if (first == nullptr) return;
  M6_CUDA_CHECK(cudaMemsetAsync(bad_, 0, sizeof b, stream_));
  // record_bad's packing: the key (complemented) above, the value below
  const int key = static_cast<int>(~static_cast<uint32_t>(first->first >> 32));
  const int value = static_cast<int>(static_cast<uint32_t>(first->first & 0xffffffffu));
  if (kind == kBadMoeAssign) {
    const int N = std::max(first->n, 1);
    fail(fmt("moe_assign: expert ", value, " of token ", key % N, " slot ", key / N,
             " is outside [0, ", first->limit, ")"));
  }
  fail(fmt("crossentropy: target ", value, " at row ", key, " is >= vocab (", first->limit, ")"));
}

// Ops that need the host (reads, waits, allocations, host-to-device
// copies) throw while capturing, before any CUDA call, and mark the
// capture failed; capture_end then ends it and returns nullptr.
void CudaBackend::no_capture(const char* what) {
  if (capturing_)
    fail(fmt("cuda backend: ", what,
             " inside a graph capture (capture_begin .. capture_end may only enqueue device "
             "work)"));
}

// Every error an op throws: while capturing, it also marks the capture
// failed (the graph would lack the op), so that capture_end returns nullptr.
void CudaBackend::fail(const std::string& msg) {
  if (capturing_ && capture_error_.empty()) capture_error_ = msg;
  throw Error(msg);
}

std::string CudaBackend::cuda_error_text(cudaError_t e, const char* call) {
  return fmt(call, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
}

}  // namespace cuda_impl
}  // namespace m6
