// The Comm interface (DESIGN.md section 1, principle 2): the collectives the
// DP+EP logic needs, with three implementations -- single process
// (comm_self), MPI on CPU buffers (comm_mpi) and NCCL on GPU buffers (cuda/).
// The training code never knows which one it talks to. Every rank must call
// every collective of a group in the same order, even with zero elements.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace m6 {

enum class CommDType { F32, BF16, F16, I32, I64, U8, F64 };
enum class ReduceOp { Sum, Max, Min };

size_t comm_dtype_size(CommDType t);

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "self", "mpi", "nccl"

  // In place over `count` elements. BF16/F16 buffers are summed in fp32 by the
  // implementation (the buffer holds the half values).
  virtual void all_reduce(void* buf, size_t count, CommDType t, ReduceOp op) = 0;
  // Element counts and displacements per peer (size() entries each).
  virtual void all_to_all_v(const void* send, const int64_t* send_counts,
                            const int64_t* send_displs, void* recv, const int64_t* recv_counts,
                            const int64_t* recv_displs, CommDType t) = 0;
  // recv holds size() * count elements, rank-major.
  virtual void all_gather(const void* send, void* recv, size_t count, CommDType t) = 0;
  virtual void broadcast(void* buf, size_t count, CommDType t, int root) = 0;
  virtual void barrier() = 0;
  // A sub-communicator of the ranks passing the same color, ordered by key.
  virtual std::unique_ptr<Comm> split(int color, int key) = 0;
};

// The single-process communicator: every collective is a copy or a no-op.
std::unique_ptr<Comm> make_self_comm();

}  // namespace m6
