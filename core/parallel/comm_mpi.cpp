// The MPI communicator (CPU buffers) and the process-wide MPI session.
// Collectives are plain blocking MPI calls (as fast as MPI gets: no polling)
// watched by the session's CommWatchdog, so that a stopped or dead peer ends
// the job with a message naming the step, the collective and the
// communicator instead of a silent hang. MPI runs at MPI_THREAD_MULTIPLE so
// that the watchdog thread may call MPI_Abort while the main thread is inside
// a collective. bf16/fp16 reductions use user-defined operations that add in fp32.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

#include "core/parallel/comm_watchdog.h"
#include "core/parallel/half.h"
#include "core/parallel/mpi_session.h"
#include "core/util/error.h"
#include "core/util/log.h"

// Every MPI call goes through this: a failure throws with the expression, the
// place and MPI's own message (communicators are set to MPI_ERRORS_RETURN).
#define M6_MPI_CHECK(expr)                                                                \
  do {                                                                                    \
    const int m6_mpi_rc_ = (expr);                                                        \
    if (m6_mpi_rc_ != MPI_SUCCESS) ::m6::mpi_fail(#expr, __FILE__, __LINE__, m6_mpi_rc_); \
  } while (0)

namespace m6 {

[[noreturn]] void mpi_fail(const char* expr, const char* file, int line, int rc) {
  char msg[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  int rank = -1, inited = 0;
  MPI_Initialized(&inited);
  if (inited) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  throw Error(fmt(file, ":", line, ": ", expr, " failed on world rank ", rank, ": ", msg));
}

namespace {

using Clock = std::chrono::steady_clock;

// ---- half-precision reductions ------------------------------------------------
template <uint16_t (*To)(float), float (*From)(uint16_t), int Kind>
void half_op(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) {
    const float x = From(a[i]), y = From(b[i]);
    b[i] = To(Kind == 0 ? x + y : Kind == 1 ? std::max(x, y) : std::min(x, y));
  }
}

// The user-defined operations, created once per session and shared by its communicators.
struct HalfOps {
  MPI_Op op[2][3];  // [bf16, f16][sum, max, min]
  HalfOps() {
    M6_MPI_CHECK(MPI_Op_create(&half_op<f32_to_bf16, bf16_to_f32, 0>, 1, &op[0][0]));
    M6_MPI_CHECK(MPI_Op_create(&half_op<f32_to_bf16, bf16_to_f32, 1>, 1, &op[0][1]));
    M6_MPI_CHECK(MPI_Op_create(&half_op<f32_to_bf16, bf16_to_f32, 2>, 1, &op[0][2]));
    M6_MPI_CHECK(MPI_Op_create(&half_op<f32_to_f16, f16_to_f32, 0>, 1, &op[1][0]));
    M6_MPI_CHECK(MPI_Op_create(&half_op<f32_to_f16, f16_to_f32, 1>, 1, &op[1][1]));
    M6_MPI_CHECK(MPI_Op_create(&half_op<f32_to_f16, f16_to_f32, 2>, 1, &op[1][2]));
  }
  ~HalfOps() {
    for (auto& row : op)
      for (auto& o : row) MPI_Op_free(&o);
  }
  HalfOps(const HalfOps&) = delete;
  HalfOps& operator=(const HalfOps&) = delete;
};

MPI_Datatype mpi_type(CommDType t) {
  switch (t) {
    case CommDType::F32:
      return MPI_FLOAT;
    case CommDType::BF16:
      return MPI_UINT16_T;
    case CommDType::F16:
      return MPI_UINT16_T;
    case CommDType::I32:
      return MPI_INT32_T;
    case CommDType::I64:
      return MPI_INT64_T;
    case CommDType::U8:
      return MPI_UINT8_T;
    case CommDType::F64:
      return MPI_DOUBLE;
  }
  return MPI_DATATYPE_NULL;
}

MPI_Op mpi_op(const HalfOps& h, CommDType t, ReduceOp op) {
  const int k = op == ReduceOp::Sum ? 0 : op == ReduceOp::Max ? 1 : 2;
  if (t == CommDType::BF16) return h.op[0][k];
  if (t == CommDType::F16) return h.op[1][k];
  M6_CHECK(t != CommDType::U8 || op != ReduceOp::Sum, "u8 sums are not supported");
  return k == 0 ? MPI_SUM : k == 1 ? MPI_MAX : MPI_MIN;
}

// MPI counts are int. Larger all-to-all-v blocks travel in units of g elements,
// g the gcd of every count and displacement (a contiguous derived type).
struct CountUnit {
  MPI_Datatype type = MPI_DATATYPE_NULL;
  int64_t g = 1;
  bool derived = false;
  ~CountUnit() {
    if (derived) MPI_Type_free(&type);
  }
};

void pick_unit(CountUnit& u, MPI_Datatype base, const std::vector<const int64_t*>& arrays, int n) {
  u.type = base;
  int64_t mx = 0, g = 0;
  for (const int64_t* a : arrays)
    for (int i = 0; i < n; ++i) {
      mx = std::max(mx, a[i]);
      g = std::gcd(g, a[i]);
    }
  if (mx <= INT_MAX) return;
  M6_CHECK(g > 0 && mx / g <= INT_MAX, "all_to_all_v: counts up to ", mx,
           " elements have no common unit that fits MPI's int counts (gcd ", g, ")");
  M6_CHECK(g <= INT_MAX, "all_to_all_v: unit of ", g, " elements is too large");
  M6_MPI_CHECK(MPI_Type_contiguous(static_cast<int>(g), base, &u.type));
  M6_MPI_CHECK(MPI_Type_commit(&u.type));
  u.g = g;
  u.derived = true;
}

class MpiComm final : public Comm {
 public:
  MpiComm(MPI_Comm c, std::shared_ptr<CommActivity> a, std::shared_ptr<HalfOps> ops,
          std::shared_ptr<CommWatchdog> watchdog)
      : Comm(std::move(a)), comm_(c), ops_(std::move(ops)), watchdog_(std::move(watchdog)) {
    M6_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    M6_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  }
  ~MpiComm() override {
    // After a timeout the job is being aborted, and freeing the communicator
    // could wait on the lost peer.
    if (!activity().broken) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }

  void all_reduce(void* buf, size_t count, CommDType t, ReduceOp op) override {
    const size_t es = comm_dtype_size(t);
    const MPI_Op mop = mpi_op(*ops_, t, op);
    activity().reduce_bytes += static_cast<int64_t>(count * es);
    size_t done = 0;
    do {  // in pieces of at most 2^30 elements (MPI counts are int)
      const size_t n = std::min<size_t>(count - done, size_t{1} << 30);
      const Watch w(*this, "all_reduce");
      M6_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, static_cast<char*>(buf) + done * es,
                                 static_cast<int>(n), mpi_type(t), mop, comm_));
      done += n;
    } while (done < count);
  }

  void all_to_all_v(const void* send, const int64_t* send_counts, const int64_t* send_displs,
                    void* recv, const int64_t* recv_counts, const int64_t* recv_displs,
                    CommDType t) override {
    const int P = size_;
    CountUnit u;
    pick_unit(u, mpi_type(t), {send_counts, send_displs, recv_counts, recv_displs}, P);
    std::vector<int> sc(P), sd(P), rc(P), rd(P);
    for (int p = 0; p < P; ++p) {
      sc[p] = static_cast<int>(send_counts[p] / u.g);
      sd[p] = static_cast<int>(send_displs[p] / u.g);
      rc[p] = static_cast<int>(recv_counts[p] / u.g);
      rd[p] = static_cast<int>(recv_displs[p] / u.g);
    }
    activity().a2a_bytes += a2a_wire_bytes(send_counts, t);
    const double before = activity().seconds;
    {
      const Watch w(*this, "all_to_all_v");
      M6_MPI_CHECK(MPI_Alltoallv(send, sc.data(), sd.data(), u.type, recv, rc.data(), rd.data(),
                                 u.type, comm_));
    }
    activity().a2a_seconds += activity().seconds - before;
  }

  void all_gather(const void* send, void* recv, size_t count, CommDType t) override {
    CountUnit u;
    const int64_t c = static_cast<int64_t>(count);
    pick_unit(u, mpi_type(t), {&c}, 1);
    const int n = static_cast<int>(c / u.g);
    const Watch w(*this, "all_gather");
    M6_MPI_CHECK(MPI_Allgather(send, n, u.type, recv, n, u.type, comm_));
  }

  void broadcast(void* buf, size_t count, CommDType t, int root) override {
    const size_t es = comm_dtype_size(t);
    size_t done = 0;
    do {
      const size_t n = std::min<size_t>(count - done, size_t{1} << 30);
      const Watch w(*this, "broadcast");
      M6_MPI_CHECK(MPI_Bcast(static_cast<char*>(buf) + done * es, static_cast<int>(n), mpi_type(t),
                             root, comm_));
      done += n;
    } while (done < count);
  }

  void barrier() override {
    const Watch w(*this, "barrier");
    M6_MPI_CHECK(MPI_Barrier(comm_));
  }

  std::unique_ptr<Comm> split(int color, int key) override {
    // Collective over this communicator (the start-up grid split): watched
    // like any other collective.
    MPI_Comm c;
    {
      const Watch w(*this, "split");
      M6_MPI_CHECK(MPI_Comm_split(comm_, color, key, &c));
    }
    return std::make_unique<MpiComm>(c, activity_ptr(), ops_, watchdog_);
  }

 private:
  // One blocking collective: counted, timed into the activity, and watched.
  class Watch {
   public:
    Watch(MpiComm& c, const char* op)
        : a_(c.activity()), guard_(c.watchdog_.get(), a_, op, c.role(), c.size_) {
      ++a_.collectives;
    }
    ~Watch() { a_.seconds += guard_.seconds(); }

   private:
    CommActivity& a_;
    CommWatchdog::Guard guard_;
  };

  MPI_Comm comm_;
  std::shared_ptr<HalfOps> ops_;
  std::shared_ptr<CommWatchdog> watchdog_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

// ---- the session ----------------------------------------------------------------

std::string detect_parallel_launcher(const std::function<const char*(const char*)>& getenv_fn) {
  auto get = [&](const char* k) -> const char* {
    const char* v = getenv_fn ? getenv_fn(k) : std::getenv(k);
    return v && *v ? v : nullptr;
  };
  if (get("OMPI_COMM_WORLD_SIZE")) return "mpirun";
  if (get("PMIX_RANK")) return "pmix";
  if (get("PMI_RANK")) return "pmi";
  if (get("SLURM_PROCID")) {
    const char* n = get("SLURM_STEP_NUM_TASKS");
    if (!n) n = get("SLURM_NTASKS");
    if (n && std::atoi(n) > 1) return "srun";
  }
  return "";
}

namespace {

// MPI_Abort and MPI_Finalize wait on the launcher: while mpirun tears a job
// down it kills the ranks only after its own grace period (SIGCONT, SIGTERM,
// SIGKILL, odls_base_sigkill_timeout apart), and a launcher that is gone or
// stuck never answers. A rank must not outlive its job that way: past
// `seconds` it ends itself with `code` (the abort has been sent by then, and
// a finalising rank has recorded its result and committed its checkpoint).
void exit_after(double seconds, int code) {
  std::thread([seconds, code] {
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    std::_Exit(code);
  }).detach();
}

constexpr double kAbortGraceS = 2.0;     // MPI_Abort: the launcher has been told at once
constexpr double kFinalizeGraceS = 10.0;  // MPI_Finalize: every rank arrives within ms

}  // namespace

struct MpiSession::State {
  MPI_Comm err_comm = MPI_COMM_NULL;  // only the failure path's barrier travels here
  std::shared_ptr<HalfOps> ops;
  std::shared_ptr<CommWatchdog> watchdog;
  bool thread_multiple = false;  // MPI may be called from the watchdog thread
};

MpiSession::MpiSession() = default;

MpiSession::~MpiSession() { finish(); }

void MpiSession::finish() {
  if (!state_) return;
  state_->watchdog.reset();  // joins the thread before MPI goes away
  MPI_Comm_free(&state_->err_comm);
  state_.reset();
  std::fflush(stdout);
  std::fflush(stderr);
  exit_after(kFinalizeGraceS, exit_code_);
  MPI_Finalize();
}

void MpiSession::start(int* argc, char*** argv) {
  if (state_ || detect_parallel_launcher().empty()) return;
  int provided = 0;
  M6_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
  state_ = std::make_unique<State>();
  state_->thread_multiple = provided >= MPI_THREAD_MULTIPLE;
  M6_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  M6_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  M6_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size_));
  log_set_rank(rank_, size_);  // errors, the watchdog's included, name their rank
  M6_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &state_->err_comm));
  state_->ops = std::make_shared<HalfOps>();
  // A collective that outlives parallel.timeout_s ends the job from the
  // watchdog thread: the message first (every rank that waits prints its own),
  // then MPI_Abort, which the launcher turns into the end of every process.
  // Without MPI_THREAD_MULTIPLE no MPI call is allowed from this thread: the
  // process exits instead, and the launcher ends the job when it sees a rank
  // die without MPI_Finalize.
  const bool multiple = state_->thread_multiple;
  if (!multiple)
    log_warn(fmt("MPI provides thread level ", provided,
                 " (not MPI_THREAD_MULTIPLE): a collective timeout exits this rank instead of "
                 "calling MPI_Abort"));
  state_->watchdog = std::make_shared<CommWatchdog>([multiple](const std::string& msg) {
    log_error(msg);
    std::fflush(stdout);
    // As in fail(): a launcher that is gone or stuck never ends this rank.
    exit_after(kAbortGraceS, static_cast<int>(ExitCode::Internal));
    if (multiple) MPI_Abort(MPI_COMM_WORLD, static_cast<int>(ExitCode::Internal));
    std::_Exit(static_cast<int>(ExitCode::Internal));
  }, /*park_on_fire=*/true);
}

std::unique_ptr<Comm> MpiSession::world(std::shared_ptr<CommActivity> activity) {
  if (!state_) return make_self_comm(std::move(activity));
  if (!activity) activity = std::make_shared<CommActivity>();
  MPI_Comm c;
  {
    const std::string name = "world";
    const CommWatchdog::Guard g(state_->watchdog.get(), *activity, "dup", name,
                                size_);
    M6_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &c));
  }
  return std::make_unique<MpiComm>(c, std::move(activity), state_->ops, state_->watchdog);
}

int MpiSession::fail(int code, bool immediate) {
  if (!state_) return code;
  if (!immediate) {
    // Meet the other ranks if they failed too; give up after a grace period.
    constexpr double kGraceS = 3.0;
    MPI_Request req;
    if (MPI_Ibarrier(state_->err_comm, &req) == MPI_SUCCESS) {
      const auto t0 = Clock::now();
      int done = 0;
      while (!done && std::chrono::duration<double>(Clock::now() - t0).count() < kGraceS) {
        if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) break;
        if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      if (done) {
        exit_code_ = code;
        finish();
        return code;
      }
    }
  }
  std::fflush(stdout);
  std::fflush(stderr);
  exit_after(kAbortGraceS, code);
  MPI_Abort(MPI_COMM_WORLD, code);
  return code;  // not reached
}

}  // namespace m6
