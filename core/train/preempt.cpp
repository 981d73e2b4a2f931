#include "core/train/preempt.h"

#include <pthread.h>

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

constexpr int kSignals[3] = {SIGTERM, SIGUSR1, SIGINT};
// The dispositions found before the first installation (for release()).
struct sigaction g_before[3];
bool g_have_before = false;

extern "C" void on_stop_signal(int sig) {
  // The first signal wins; every later one -- of any of the three kinds, at
  // any moment, also during the save -- is the same request and changes
  // nothing. The handler stays installed.
  int expected = 0;
  g_stop_signal.compare_exchange_strong(expected, sig);
}

void install_all() {
  for (int i = 0; i < 3; ++i) {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    for (int s : kSignals) sigaddset(&sa.sa_mask, s);  // one handler at a time
    sa.sa_flags = SA_RESTART;  // a blocking read or write resumes instead of failing with EINTR
    struct sigaction old;
    if (::sigaction(kSignals[i], &sa, &old) != 0)
      throw Error(fmt("cannot install the handler for ", stop_signal_name(kSignals[i])));
    if (!g_have_before && old.sa_handler != on_stop_signal) g_before[i] = old;
  }
  g_have_before = true;
}

sigset_t stop_set() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : kSignals) sigaddset(&set, s);
  return set;
}

}  // namespace

StopSignals::StopSignals() {
  if (g_depth.fetch_add(1) == 0) g_stop_signal.store(0);
  install_all();
}

StopSignals::~StopSignals() { g_depth.fetch_sub(1); }

int StopSignals::pending() const { return g_stop_signal.load(); }

void StopSignals::release() {
  for (int i = 0; i < 3; ++i) ::sigaction(kSignals[i], &g_before[i], nullptr);
  const int sig = g_stop_signal.exchange(0);
  if (sig != 0) ::raise(sig);  // the default action, as if the handler had never been there
}

StopSignalsDeferred::StopSignalsDeferred() {
  const sigset_t set = stop_set();
  ::pthread_sigmask(SIG_BLOCK, &set, &old_);
}

StopSignalsDeferred::~StopSignalsDeferred() {
  try {
    install_all();
  } catch (...) {  // keeps the earlier installation
  }
  ::pthread_sigmask(SIG_SETMASK, &old_, nullptr);
}

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
