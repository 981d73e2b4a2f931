// Preemption (DESIGN.md section 7, exit code 75): SIGTERM (scancel, the
// cluster's shutdown), SIGUSR1 (Slurm's --signal=USR1@300 warning) and SIGINT
// (Ctrl-C) ask the run to stop. The handler only records the signal; the
// trainer polls it at every step boundary, agrees on it across ranks
// (all-reduce max, so a signal delivered to one rank stops them all at the
// same step), saves a checkpoint and returns, and app/ exits 75 so that a
// requeued job resumes with --resume auto.
//
// Once installed the handlers stay installed until the process exits: no
// SA_RESETHAND, and nothing restores the default action, so a second signal
// of any of the three kinds -- Slurm's TERM right after its USR1 warning, a
// scancel during the save, a second Ctrl-C -- is the same request and cannot
// end the process before its checkpoint is committed. Only SIGKILL (or
// SIGQUIT) ends a training run at once.
#pragma once
#include <csignal>

namespace m6 {

// Installs the handlers for SIGTERM, SIGUSR1 and SIGINT (again, should
// anything have replaced them). Instances nest: app/ holds one for the whole
// process, from the first line of main(), the trainer its own; only the
// outermost starts with a clear flag (a later run in the same process, as in
// the unit tests, starts clear). Destruction leaves the handlers installed.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The number of the first stop signal received since the outermost
  // instance was created, 0 if none.
  int pending() const;

  // For commands that do not train (data build, export, --help, ...): the
  // default actions are back, and a stop signal that arrived meanwhile ends
  // the process now, as it would have without the handlers.
  void release();
};

// Blocks the three stop signals for its lifetime (library start-up such as
// MPI_Init may start threads or install handlers of its own), then installs
// the handlers again and unblocks: a signal that arrived meanwhile stays
// pending and reaches the handler then, instead of being lost or taking a
// library's action.
class StopSignalsDeferred {
 public:
  StopSignalsDeferred();
  ~StopSignalsDeferred();
  StopSignalsDeferred(const StopSignalsDeferred&) = delete;
  StopSignalsDeferred& operator=(const StopSignalsDeferred&) = delete;

 private:
  sigset_t old_{};
};

// "SIGTERM", "SIGUSR1", "SIGINT", or "a stop signal".
const char* stop_signal_name(int sig);

}  // namespace m6
