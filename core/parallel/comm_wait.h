// How a communicator waits for a non-blocking collective without hanging
// forever: poll, spinning for the first microseconds (most collectives of a
// step finish there), then yielding the core (ranks may share cores, as under
// mpirun --oversubscribe), then sleeping briefly; past the activity's
// timeout_s throw CommTimeout naming the step, the collective and the label.
// For communicators that can only poll (a device communicator's asynchronous
// error state); the MPI communicator blocks under CommWatchdog instead, since
// polling costs 1.5-2x in all-reduce time at 1-16 MiB.
#pragma once
#include <sched.h>

#include <chrono>
#include <string>
#include <thread>

#include "core/parallel/comm.h"

namespace m6 {

// done() is called until it returns true. Returns the seconds waited.
template <class Poll>
double wait_collective(Poll&& done, const CommActivity& a, const char* op,
                       const std::string& comm_name, int comm_size) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  constexpr int kSpins = 2000;
  for (int i = 0;; ++i) {
    if (done()) return std::chrono::duration<double>(Clock::now() - t0).count();
    if (i < kSpins) continue;
    const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
    if (waited > a.timeout_s)
      throw CommTimeout(comm_timeout_message(a, waited, op, comm_name, comm_size));
    if (waited < 0.005)
      sched_yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

}  // namespace m6
