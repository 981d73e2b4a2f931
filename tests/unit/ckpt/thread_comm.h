// A communicator of N threads of one process, for unit tests of multi-rank
// protocols (checkpoint commit, resume agreement) without mpirun. Implements
// the collectives those protocols use -- all_gather, broadcast, all_reduce,
// barrier -- on host memory with a std::barrier; the others throw.
#pragma once
#include <barrier>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "core/parallel/comm.h"
#include "core/util/error.h"

namespace m6::test {

struct ThreadCommShared {
  explicit ThreadCommShared(int n) : size(n), sync(n), slots(n, nullptr) {}
  int size;
  std::barrier<> sync;
  std::vector<const void*> slots;  // per rank: the buffer it offers to this collective
};

class ThreadComm final : public Comm {
 public:
  ThreadComm(std::shared_ptr<ThreadCommShared> s, int rank)
      : Comm(std::make_shared<CommActivity>()), s_(std::move(s)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return s_->size; }
  std::string name() const override { return "threads"; }

  void all_reduce(void* buf, size_t count, CommDType t, ReduceOp op) override {
    s_->slots[rank_] = buf;
    s_->sync.arrive_and_wait();
    const size_t es = comm_dtype_size(t);
    std::vector<char> out(count * es);
    std::memcpy(out.data(), s_->slots[0], out.size());
    for (int r = 1; r < s_->size; ++r)
      for (size_t i = 0; i < count; ++i)
        combine(out.data() + i * es, static_cast<const char*>(s_->slots[r]) + i * es, t, op);
    s_->sync.arrive_and_wait();  // everyone has read every slot
    std::memcpy(buf, out.data(), out.size());
  }
  void all_gather(const void* send, void* recv, size_t count, CommDType t) override {
    s_->slots[rank_] = send;
    s_->sync.arrive_and_wait();
    const size_t bytes = count * comm_dtype_size(t);
    for (int r = 0; r < s_->size; ++r)
      std::memcpy(static_cast<char*>(recv) + r * bytes, s_->slots[r], bytes);
    s_->sync.arrive_and_wait();
  }
  void broadcast(void* buf, size_t count, CommDType t, int root) override {
    if (rank_ == root) s_->slots[0] = buf;
    s_->sync.arrive_and_wait();
    if (rank_ != root) std::memcpy(buf, s_->slots[0], count * comm_dtype_size(t));
    s_->sync.arrive_and_wait();
  }
  void barrier() override { s_->sync.arrive_and_wait(); }
  void all_to_all_v(const void*, const int64_t*, const int64_t*, void*, const int64_t*,
                    const int64_t*, CommDType) override {
    throw Error("ThreadComm: all_to_all_v is not implemented");
  }
  std::unique_ptr<Comm> split(int, int) override {
    throw Error("ThreadComm: split is not implemented");
  }

 private:
  template <class T>
  static void combine_as(char* acc, const char* x, ReduceOp op) {
    T a, b;
    std::memcpy(&a, acc, sizeof a);
    std::memcpy(&b, x, sizeof b);
    const T r = op == ReduceOp::Sum   ? a + b
                : op == ReduceOp::Max ? (a > b ? a : b)
                                      : (a < b ? a : b);
    std::memcpy(acc, &r, sizeof r);
  }
  static void combine(char* acc, const char* x, CommDType t, ReduceOp op) {
    switch (t) {
      case CommDType::I32:
        return combine_as<int32_t>(acc, x, op);
      case CommDType::I64:
        return combine_as<int64_t>(acc, x, op);
      case CommDType::F32:
        return combine_as<float>(acc, x, op);
      case CommDType::F64:
        return combine_as<double>(acc, x, op);
      case CommDType::U8:
        return combine_as<uint8_t>(acc, x, op);
      default:
        throw Error("ThreadComm: half all_reduce is not implemented");
    }
  }
  std::shared_ptr<ThreadCommShared> s_;
  int rank_;
};

// Runs body(comm) on n threads, one rank each; rethrows the first exception.
inline void run_ranks(int n, const std::function<void(Comm&)>& body) {
  auto shared = std::make_shared<ThreadCommShared>(n);
  std::vector<std::exception_ptr> errors(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      ThreadComm comm(shared, r);
      try {
        body(comm);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace m6::test
