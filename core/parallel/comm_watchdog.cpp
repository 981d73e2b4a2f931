#include "core/parallel/comm_watchdog.h"

#include <algorithm>

namespace m6 {

CommWatchdog::CommWatchdog(Fire fire, bool park_on_fire)
    : fire_(std::move(fire)), park_on_fire_(park_on_fire), thread_([this] { loop(); }) {}

CommWatchdog::~CommWatchdog() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

int64_t CommWatchdog::fired() const {
  std::lock_guard<std::mutex> lk(mu_);
  return fired_;
}

CommWatchdog::Guard::Guard(CommWatchdog* w, const CommActivity& a, const char* op,
                           const std::string& comm_name, int comm_size)
    : w_(w), t0_(Clock::now()) {
  if (!w_) return;
  std::lock_guard<std::mutex> lk(w_->mu_);
  fired_before_ = w_->fired_;
  w_->armed_ = true;
  w_->start_ = t0_;
  w_->activity_ = &a;
  w_->op_ = op;
  w_->comm_name_ = &comm_name;
  w_->comm_size_ = comm_size;
  w_->timeout_s_ = a.timeout_s;
}

CommWatchdog::Guard::~Guard() {
  if (!w_) return;
  std::unique_lock<std::mutex> lk(w_->mu_);
  w_->armed_ = false;
  if (!w_->park_on_fire_ || w_->fired_ == fired_before_) return;
  lk.unlock();
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));  // `fire` ends the process
}

double CommWatchdog::Guard::seconds() const {
  return std::chrono::duration<double>(Clock::now() - t0_).count();
}

void CommWatchdog::loop() {
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    // Wake often enough to notice a timeout within a tenth of it; the
    // communicating thread never signals (that would cost it a syscall).
    const double tick = std::clamp(timeout_s_ / 10, 0.01, 1.0);
    auto wake = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(tick));
    if (armed_) {
      const auto deadline = start_ + std::chrono::duration_cast<Clock::duration>(
                                         std::chrono::duration<double>(timeout_s_));
      const double waited = std::chrono::duration<double>(Clock::now() - start_).count();
      if (waited > timeout_s_) {
        // The communicating thread is blocked inside the collective: the
        // activity it described is stable until the guard ends, which needs mu_.
        const std::string msg =
            comm_timeout_message(*activity_, waited, op_, *comm_name_, comm_size_);
        armed_ = false;
        ++fired_;
        lk.unlock();
        fire_(msg);
        lk.lock();
        continue;
      }
      wake = std::min(wake, deadline + std::chrono::milliseconds(1));
    }
    cv_.wait_until(lk, wake, [this] { return stop_; });
  }
}

}  // namespace m6
