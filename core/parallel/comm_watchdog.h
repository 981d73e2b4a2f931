// The collective watchdog: a blocking collective runs at full MPI speed while
// a helper thread watches the clock. Each blocking call is bracketed by a
// CommWatchdog::Guard; when one outlives CommActivity::timeout_s the watchdog
// hands the CommTimeout message (step, collective, label, communicator,
// seconds waited) to its `fire` action, which ends the job (MpiSession: log
// the message, MPI_Abort). The waiting thread itself is never woken: a
// stopped or dead peer cannot be waited out, only aborted.
//
// Cost on the collective path: two uncontended mutex round trips and two
// clock reads per call; the thread wakes every timeout_s / 10 (10 ms to 1 s).
#pragma once
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "core/parallel/comm.h"

namespace m6 {

class CommWatchdog {
 public:
  // `fire` receives the timeout message; in production it does not return. If
  // it does (tests), the collective is forgotten and the watchdog keeps going.
  // park_on_fire: a collective that completes after its watchdog fired (the
  // late peer arrived while `fire` was aborting the job) does not return to
  // its caller, whose next steps (a checkpoint, say) would wait on ranks the
  // abort is ending: the thread waits for the abort instead.
  using Fire = std::function<void(const std::string& message)>;
  explicit CommWatchdog(Fire fire, bool park_on_fire = false);
  ~CommWatchdog();  // stops and joins the thread
  CommWatchdog(const CommWatchdog&) = delete;
  CommWatchdog& operator=(const CommWatchdog&) = delete;

  // Watches one blocking collective for its lifetime. `a`, `op` and
  // `comm_name` must outlive the guard (they name the collective if it fires).
  class Guard {
   public:
    Guard(CommWatchdog* w, const CommActivity& a, const char* op, const std::string& comm_name,
          int comm_size);
    ~Guard();
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    double seconds() const;  // since the guard started

   private:
    CommWatchdog* w_;
    std::chrono::steady_clock::time_point t0_;
    int64_t fired_before_ = 0;
  };

  int64_t fired() const;  // timeouts reported so far

 private:
  void loop();
  using Clock = std::chrono::steady_clock;
  Fire fire_;
  bool park_on_fire_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  // The collective in progress (armed_), written by the communicating thread.
  bool armed_ = false;
  Clock::time_point start_;
  const CommActivity* activity_ = nullptr;
  const char* op_ = nullptr;
  const std::string* comm_name_ = nullptr;
  int comm_size_ = 0;
  double timeout_s_ = 600;
  int64_t fired_ = 0;
  std::thread thread_;
};

}  // namespace m6
