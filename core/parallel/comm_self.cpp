#include <cstring>

#include "core/parallel/comm.h"
#include "core/util/error.h"

namespace m6 {

size_t comm_dtype_size(CommDType t) {
  switch (t) {
    case CommDType::F32: return 4;
    case CommDType::BF16: return 2;
    case CommDType::F16: return 2;
    case CommDType::I32: return 4;
    case CommDType::I64: return 8;
    case CommDType::U8: return 1;
    case CommDType::F64: return 8;
  }
  return 0;
}

namespace {

class SelfComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "self"; }
  void all_reduce(void*, size_t, CommDType, ReduceOp) override {}
  void all_to_all_v(const void* send, const int64_t* send_counts, const int64_t* send_displs,
                    void* recv, const int64_t* recv_counts, const int64_t* recv_displs,
                    CommDType t) override {
    M6_CHECK(send_counts[0] == recv_counts[0], "self all_to_all_v: send ", send_counts[0],
             " != recv ", recv_counts[0]);
    const size_t es = comm_dtype_size(t);
    if (send_counts[0] > 0 && send != recv)
      std::memmove(static_cast<char*>(recv) + recv_displs[0] * es,
                   static_cast<const char*>(send) + send_displs[0] * es, send_counts[0] * es);
  }
  void all_gather(const void* send, void* recv, size_t count, CommDType t) override {
    if (send != recv) std::memmove(recv, send, count * comm_dtype_size(t));
  }
  void broadcast(void*, size_t, CommDType, int) override {}
  void barrier() override {}
  std::unique_ptr<Comm> split(int, int) override { return std::make_unique<SelfComm>(); }
};

}  // namespace

std::unique_ptr<Comm> make_self_comm() { return std::make_unique<SelfComm>(); }

}  // namespace m6
