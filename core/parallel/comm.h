// The Comm interface (DESIGN.md section 1, principle 2): the collectives the
// DP+EP logic needs, with three implementations -- single process
// (comm_self), MPI on CPU buffers (comm_mpi) and NCCL on GPU buffers (cuda/).
// The training code never knows which one it talks to. Every rank must call
// every collective of a group in the same order, even with zero elements.
//
// No silent hangs: a collective that waits longer than CommActivity::timeout_s
// ends the whole job with a message naming the step, the collective and the
// caller's label ("layer 3 dispatch"). The MPI communicator blocks in MPI and
// a watchdog thread aborts the job (comm_watchdog.h); an implementation that
// polls instead throws CommTimeout (comm_wait.h), which app/ turns into a job
// abort.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/util/error.h"

namespace m6 {

enum class CommDType { F32, BF16, F16, I32, I64, U8, F64 };
enum class ReduceOp { Sum, Max, Min };

size_t comm_dtype_size(CommDType t);
const char* comm_dtype_name(CommDType t);  // "f32", "bf16", ...

// What this process is doing when it enters a collective (for the timeout
// message) and what its collectives have cost (for the metrics). One object
// is shared by the world communicator and every communicator split from it;
// collectives are issued by one thread, so plain fields suffice.
struct CommActivity {
  double timeout_s = 600;  // parallel.timeout_s
  int64_t step = 0;        // the 1-based training step in progress; 0 before the first
  std::string label;       // the caller's name for the collective, e.g. "layer 3 dispatch"
  // Cumulative counters of this rank.
  double seconds = 0;        // wall time spent inside collectives (waiting included)
  double a2a_seconds = 0;    // the part of `seconds` spent in all-to-all(v)
  int64_t a2a_bytes = 0;     // bytes sent to other ranks by all-to-all(v), as on the wire
  int64_t reduce_bytes = 0;  // bytes all-reduced, as on the wire
  int64_t collectives = 0;   // collectives issued
  // A collective timed out and its request is still pending: communicators
  // are not freed (that could wait on the lost peer); the job is aborting.
  bool broken = false;
};

// Sets CommActivity::label for its lifetime and restores the previous one.
class CommLabel {
 public:
  CommLabel(CommActivity& a, std::string label);
  ~CommLabel();
  CommLabel(const CommLabel&) = delete;
  CommLabel& operator=(const CommLabel&) = delete;

 private:
  CommActivity& a_;
  std::string prev_;
};

// A collective waited longer than CommActivity::timeout_s: a peer is stopped,
// stuck or dead. app/ aborts the job on it (every rank's waits end there).
struct CommTimeout : Error {
  explicit CommTimeout(const std::string& m) : Error(m, ExitCode::Internal) {}
};

// The message of a CommTimeout: "step 12: timed out after 5.0 s waiting in
// all_to_all_v (layer 3 dispatch) on the ep communicator (2 ranks); ...".
std::string comm_timeout_message(const CommActivity& a, double waited_s, const char* op,
                                 const std::string& comm_name, int comm_size);

class Comm {
 public:
  explicit Comm(std::shared_ptr<CommActivity> activity);
  virtual ~Comm() = default;
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "self", "mpi", "nccl"
  CommActivity& activity() { return *activity_; }
  const std::shared_ptr<CommActivity>& activity_ptr() const { return activity_; }
  // The role of this communicator in the process grid ("world", "ep", "edp"),
  // used in timeout messages.
  const std::string& role() const { return role_; }
  void set_role(std::string r) { role_ = std::move(r); }

  // ---- typed collectives (buffers hold elements of type t) -------------------
  // In place over `count` elements. BF16/F16 buffers are summed in fp32 and
  // rounded back to half after each addition.
  virtual void all_reduce(void* buf, size_t count, CommDType t, ReduceOp op) = 0;
  // Element counts and displacements per peer (size() entries each).
  virtual void all_to_all_v(const void* send, const int64_t* send_counts,
                            const int64_t* send_displs, void* recv, const int64_t* recv_counts,
                            const int64_t* recv_displs, CommDType t) = 0;
  // recv holds size() * count elements, rank-major.
  virtual void all_gather(const void* send, void* recv, size_t count, CommDType t) = 0;
  virtual void broadcast(void* buf, size_t count, CommDType t, int root) = 0;
  virtual void barrier() = 0;
  // A sub-communicator of the ranks passing the same color, ordered by key;
  // collective over this communicator. Shares this one's CommActivity.
  virtual std::unique_ptr<Comm> split(int color, int key) = 0;

  // ---- fp32 payloads sent in a chosen wire precision (precision.comm) --------
  // wire F32 sends as is; BF16/F16 converts to half before sending and back
  // after receiving (M6's half-precision communication). `scale` multiplies
  // the values before rounding to half and is divided out afterwards: fp16
  // gradient traffic uses kFp16GradCommScale so that small gradients stay
  // above fp16's subnormal range. The default implementations convert on the
  // host; a device communicator (NCCL) overrides them with kernels.
  virtual void all_reduce_f32(float* buf, size_t count, ReduceOp op, CommDType wire,
                              float scale = 1.0f);
  virtual void all_to_all_v_f32(const float* send, const int64_t* send_counts,
                                const int64_t* send_displs, float* recv, const int64_t* recv_counts,
                                const int64_t* recv_displs, CommDType wire, float scale = 1.0f);

  // ---- conveniences on top of the above ------------------------------------
  // Fixed-size all-to-all: `count` elements to and from every peer, rank-major.
  void all_to_all(const void* send, void* recv, size_t count, CommDType t);
  double all_reduce_scalar(double v, ReduceOp op);    // F64
  int64_t all_reduce_scalar(int64_t v, ReduceOp op);  // I64

 protected:
  // Bytes of one all-to-all-v that leave this rank (the self block excluded).
  int64_t a2a_wire_bytes(const int64_t* send_counts, CommDType t) const;

 private:
  std::shared_ptr<CommActivity> activity_;
  std::string role_ = "world";
  std::vector<uint16_t> half_send_, half_recv_;  // staging of the host conversion
};

// Fixed scale of fp16 gradient communication (EPL's "fp16 communication with
// a fixed scale of 128", M6-FACTS.md): gradients of a mean loss are small, and
// fp16 loses them below 6e-5; bf16 has fp32's exponent range and needs none.
constexpr float kFp16GradCommScale = 128.0f;
// The scale for gradient traffic in wire precision t.
inline float grad_comm_scale(CommDType wire) {
  return wire == CommDType::F16 ? kFp16GradCommScale : 1.0f;
}

// The single-process communicator: every collective is a copy or a no-op.
std::unique_ptr<Comm> make_self_comm(std::shared_ptr<CommActivity> activity = nullptr);

}  // namespace m6
