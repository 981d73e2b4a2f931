#include "core/train/preempt.h"

#include <atomic>
#include <cstring>

#include "core/util/error.h"

namespace m6 {
namespace {

// A signal handler cannot reach a context object, so the flag is the one
// process-wide variable of the trainer: written only by the handler (first
// signal wins), read by StopSignals::pending. Lock-free, hence
// async-signal-safe.
std::atomic<int> g_stop_signal{0};
std::atomic<int> g_depth{0};  // StopSignals alive
static_assert(std::atomic<int>::is_always_lock_free);

extern "C" void on_stop_signal(int sig) {
  int expected = 0;
  if (g_stop_signal.compare_exchange_strong(expected, sig) || sig != SIGINT) return;
  // A second Ctrl-C means "now": the default action ends the process (any
  // save in flight is abandoned, which the commit protocol makes harmless).
  ::signal(SIGINT, SIG_DFL);
  ::raise(SIGINT);
}

void install(int sig, struct sigaction* old) {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // a blocking read or write resumes instead of failing with EINTR
  if (::sigaction(sig, &sa, old) != 0)
    throw Error(fmt("cannot install the handler for ", stop_signal_name(sig)));
}

}  // namespace

StopSignals::StopSignals() {
  if (g_depth.fetch_add(1) == 0) g_stop_signal.store(0);
  install(SIGTERM, &old_term_);
  install(SIGUSR1, &old_usr1_);
  install(SIGINT, &old_int_);
}

StopSignals::~StopSignals() {
  ::sigaction(SIGTERM, &old_term_, nullptr);
  ::sigaction(SIGUSR1, &old_usr1_, nullptr);
  ::sigaction(SIGINT, &old_int_, nullptr);
  g_depth.fetch_sub(1);
}

int StopSignals::pending() const { return g_stop_signal.load(); }

const char* stop_signal_name(int sig) {
  switch (sig) {
    case SIGTERM:
      return "SIGTERM";
    case SIGUSR1:
      return "SIGUSR1";
    case SIGINT:
      return "SIGINT";
    default:
      return "a stop signal";
  }
}

}  // namespace m6
