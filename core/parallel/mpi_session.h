// MPI for the whole process: initialised only when the process is one rank of
// a job started by a parallel launcher (mpirun, srun), so a single-rank run
// needs no launcher and no MPI at all. Owns MPI_Init/MPI_Finalize and the
// job-wide failure path that app/ takes when a rank fails.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "core/parallel/comm.h"

namespace m6 {

// The launcher that started this process as one of several ranks, judged from
// the environment: "mpirun" (OMPI_COMM_WORLD_SIZE), "pmix" (PMIX_RANK: srun
// --mpi=pmix, Open MPI's launcher), "pmi" (PMI_RANK: MPICH's hydra, srun
// --mpi=pmi2), "srun" (SLURM_PROCID with SLURM_NTASKS > 1), or "" when none.
// `getenv` is a parameter for the unit test.
std::string detect_parallel_launcher(
    const std::function<const char*(const char*)>& getenv_fn = nullptr);

class MpiSession {
 public:
  MpiSession();
  // MPI_Finalize when initialised (communicators must be gone by then). A
  // finalise that does not return within 10 s -- the launcher is tearing the
  // job down or gone -- ends the process with the exit code set below.
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  // Initialises MPI when detect_parallel_launcher() names one; otherwise the
  // session stays a world of one. Call once, before any thread starts. Asks
  // for MPI_THREAD_MULTIPLE: the main thread communicates, and the collective
  // watchdog thread (comm_watchdog.h) may call MPI_Abort meanwhile.
  void start(int* argc, char*** argv);
  bool active() const { return state_ != nullptr; }
  int rank() const { return rank_; }
  int size() const { return size_; }

  // The world communicator: MPI over a private duplicate of MPI_COMM_WORLD,
  // or the single-process one when MPI is not active.
  std::unique_ptr<Comm> world(std::shared_ptr<CommActivity> activity = nullptr);

  // For app/ only: ends a run that failed on this rank with exit code `code`
  // and returns the code to exit with. When every rank fails (a config error
  // is found identically everywhere) they meet within a short grace period,
  // finalise MPI and each exit with the code; otherwise -- a peer is busy in
  // a collective or gone, or `immediate` (a collective timed out) -- the rank
  // calls MPI_Abort, which ends every process of the job with `code`.
  // MPI_Abort ends this process with `code` itself 2 s after telling the
  // launcher, should the launcher not have killed it by then.
  int fail(int code, bool immediate);

  // The exit code of a normal end (app/ sets it before returning from main).
  void set_exit_code(int code) { exit_code_ = code; }

 private:
  void finish();  // frees the session's communicators and finalises MPI
  struct State;
  std::unique_ptr<State> state_;
  int rank_ = 0, size_ = 1;
  int exit_code_ = 0;
};

}  // namespace m6
