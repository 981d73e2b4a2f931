// RecordingBackend: the CPU twin of CUDA graphs. Every op is forwarded to the
// wrapped backend (ForwardingBackend); between capture_begin and capture_end
// an op is recorded as a closure over its arguments (by value: the pointers,
// sizes and scalars a CUDA graph node keeps, and copies of the small host
// tables an op reads) and not run. graph_launch runs the closures in order.
// The model's captured code path is thereby tested on any machine for what a
// CUDA graph demands: no host read, allocation, host-to-device copy or
// offload copy inside the capture, and nothing that the host would have to
// redo on each replay. Outside a capture it counts host reads, as the CUDA
// backend does.
#include "core/backend/forwarding_backend.h"
#include "core/util/log.h"

namespace m6 {
namespace {

class RecordedGraph final : public Backend::Graph {
 public:
  std::vector<std::function<void()>> ops;
};

class RecordingBackend final : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  std::string name() const override { return inner().name() + "+graphs"; }
  int64_t host_reads() const override { return reads_; }

  bool graphs_available() const override { return true; }
  void capture_begin() override {
    M6_CHECK(!recording_, "capture_begin: a capture is already open");
    recording_ = std::make_unique<RecordedGraph>();
    failed_.clear();
  }
  std::unique_ptr<Graph> capture_end() override {
    M6_CHECK(recording_ != nullptr, "capture_end without capture_begin");
    auto g = std::move(recording_);
    if (!failed_.empty()) {
      log_warn(fmt("graph capture failed (", failed_, "); the step runs without a graph"));
      return nullptr;
    }
    return g;
  }
  void graph_launch(Graph& g) override {
    M6_CHECK(recording_ == nullptr, "graph_launch inside a capture");
    auto* r = dynamic_cast<RecordedGraph*>(&g);
    M6_CHECK(r != nullptr, "graph_launch: not a graph of this backend");
    for (const auto& f : r->ops) f();
  }

 protected:
  void run(const char*, std::function<void()> f) override {
    if (recording_)
      recording_->ops.push_back(std::move(f));
    else
      f();
  }
  void setting(const char*, std::function<void()> f) override {
    if (recording_) recording_->ops.push_back(std::move(f));
  }
  // A host op inside a capture abandons it (capture_end returns nullptr) and
  // throws, as a CUDA capture does.
  void host(const char* op, HostKind kind) override {
    if (recording_) {
      if (failed_.empty()) failed_ = op;
      throw Error(fmt(op, " inside a graph capture (a captured step must not read to the host, "
                          "allocate or copy from the host)"));
    }
    if (kind == HostKind::Read) ++reads_;
  }

 private:
  std::unique_ptr<RecordedGraph> recording_;  // non-null while capturing
  std::string failed_;                        // the first host op of the open capture
  int64_t reads_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_recording_backend(std::unique_ptr<Backend> inner) {
  return std::make_unique<RecordingBackend>(std::move(inner));
}

}  // namespace m6
