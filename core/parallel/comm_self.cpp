// The single-process communicator: a world of one rank. Every collective is a
// copy or a no-op, and nothing travels, so the half-precision wire never
// rounds anything (a 1-rank run computes in full precision whatever
// precision.comm says).
#include <cstring>

#include "core/parallel/comm.h"

namespace m6 {

namespace {

class SelfComm final : public Comm {
 public:
  explicit SelfComm(std::shared_ptr<CommActivity> a) : Comm(std::move(a)) {}
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
  std::unique_ptr<Comm> split(int, int) override {
    return std::make_unique<SelfComm>(activity_ptr());
  }
  void all_reduce_f32(float*, size_t, ReduceOp, CommDType, float) override {}
  void all_to_all_v_f32(const float* send, const int64_t* send_counts, const int64_t* send_displs,
                        float* recv, const int64_t* recv_counts, const int64_t* recv_displs,
                        CommDType, float) override {
    all_to_all_v(send, send_counts, send_displs, recv, recv_counts, recv_displs, CommDType::F32);
  }
};

}  // namespace

std::unique_ptr<Comm> make_self_comm(std::shared_ptr<CommActivity> activity) {
  return std::make_unique<SelfComm>(std::move(activity));
}

}  // namespace m6
