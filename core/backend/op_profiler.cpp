// The op profiler (op_profiler.h).
#include "core/backend/op_profiler.h"

#include <algorithm>
#include <map>

#include "core/backend/forwarding_backend.h"

namespace m6 {
namespace {

class OpProfiler final : public ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  std::string name() const override { return inner().name() + "+profile"; }
  bool graphs_available() const override { return false; }

  std::vector<OpTime> table() {
    inner().sync();
    resolve();
    std::vector<OpTime> out;
    for (const auto& [op, t] : times_) out.push_back(t);
    std::sort(out.begin(), out.end(), [](const OpTime& a, const OpTime& b) {
      return a.ms != b.ms ? a.ms > b.ms : a.op < b.op;
    });
    return out;
  }
  void reset() {
    inner().sync();
    resolve();
    times_.clear();
  }

 protected:
  void run(const char* op, std::function<void()> f) override {
    const int a = inner().mark();
    f();
    pending_.push_back({op, a, inner().mark()});
  }
  // Before a host read the stream is synchronised, so every pending mark
  // can be read (the read itself would have waited for the same work).
  void host(const char*, HostKind kind) override {
    if (kind != HostKind::Read || pending_.empty()) return;
    inner().sync();
    resolve();
  }

 private:
  struct Pending {
    const char* op;
    int a, b;
  };
  void resolve() {
    for (const Pending& p : pending_) {
      OpTime& t = times_[p.op];
      t.op = p.op;
      ++t.calls;
      t.ms += inner().mark_ms(p.a, p.b);
    }
    pending_.clear();
    inner().marks_reset();
  }
  std::vector<Pending> pending_;
  std::map<std::string, OpTime> times_;
};

}  // namespace

std::unique_ptr<Backend> make_op_profiler(std::unique_ptr<Backend> inner) {
  return std::make_unique<OpProfiler>(std::move(inner));
}

std::vector<OpTime> op_profile(Backend& be) {
  auto* p = dynamic_cast<OpProfiler*>(&be);
  return p ? p->table() : std::vector<OpTime>{};
}

void op_profile_reset(Backend& be) {
  if (auto* p = dynamic_cast<OpProfiler*>(&be)) p->reset();
}

}  // namespace m6
