// Preemption (DESIGN.md section 7, exit code 75): SIGTERM (scancel, the
// cluster's shutdown), SIGUSR1 (Slurm's --signal=USR1@300 warning) and SIGINT
// (Ctrl-C; a second one ends the process at once) ask the run to stop. The handler only records the
// signal; the trainer polls it at every step boundary, agrees on it across ranks (all-reduce max,
// so a signal delivered to one rank stops them all at the same step), saves a checkpoint and
// returns, and app/ exits 75 so that a requeued job resumes with
// --resume auto. A second signal during the save changes nothing: the handler
// stays installed and the flag is already set.
#pragma once
#include <csignal>

namespace m6 {

// Installs the handlers for SIGTERM, SIGUSR1 and SIGINT for its lifetime and
// restores the previous ones on destruction. Instances nest: app/ holds one
// for the whole process (a signal just before or after training must not
// kill the process mid-way with the default action), the trainer its own
// (re-installing the handlers should MPI_Init have replaced them); only the
// outermost starts with a clear flag.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The number of the first stop signal received since installation, 0 if none.
  int pending() const;

 private:
  struct sigaction old_term_ {
  }, old_usr1_{}, old_int_{};
};

// "SIGTERM", "SIGUSR1", or "signal N".
const char* stop_signal_name(int sig);

}  // namespace m6
