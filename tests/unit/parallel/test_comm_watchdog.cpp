// The collective watchdog without MPI: a guarded call that outlives
// timeout_s is reported once, with the step, the collective, its label, the
// communicator and the seconds waited; a call that ends in time never is.
#include <catch2/catch.hpp>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/parallel/comm_watchdog.h"

using namespace m6;

namespace {

struct Recorder {
  std::mutex mu;
  std::vector<std::string> messages;
  CommWatchdog::Fire fire() {
    return [this](const std::string& m) {
      std::lock_guard<std::mutex> lk(mu);
      messages.push_back(m);
    };
  }
  size_t count() {
    std::lock_guard<std::mutex> lk(mu);
    return messages.size();
  }
};

}  // namespace

TEST_CASE("watchdog: a collective past timeout_s is reported once, named", "[comm]") {
  Recorder rec;
  CommWatchdog w(rec.fire());
  CommActivity a;
  a.timeout_s = 0.05;
  a.step = 12;
  const CommLabel label(a, "layer 3 dispatch");
  const std::string comm = "ep";
  {
    const CommWatchdog::Guard g(&w, a, "all_to_all_v", comm, 2);
    // The blocked collective: wait (up to 20 s, generous under load) for the report.
    for (int i = 0; i < 2000 && rec.count() == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // no second report
  }
  REQUIRE(rec.count() == 1);
  CHECK(w.fired() == 1);
  const std::string& m = rec.messages[0];
  CHECK_THAT(m, Catch::Contains("step 12: timed out after"));
  CHECK_THAT(m, Catch::Contains("waiting in all_to_all_v (layer 3 dispatch)"));
  CHECK_THAT(m, Catch::Contains("on the ep communicator (2 ranks)"));
  CHECK_THAT(m, Catch::Contains("parallel.timeout_s = 0.05"));
  // The seconds waited are at least the timeout.
  const auto at = m.find("timed out after ") + 16;
  CHECK(std::stod(m.substr(at)) >= 0.0);
  CHECK(std::stod(m.substr(at)) < 20.0);
}

TEST_CASE("watchdog: collectives that end in time are never reported", "[comm]") {
  Recorder rec;
  CommWatchdog w(rec.fire());
  CommActivity a;
  a.timeout_s = 2;
  const std::string comm = "world";
  double total = 0;
  for (int i = 0; i < 10000; ++i) {  // the hot path: many short calls
    const CommWatchdog::Guard g(&w, a, "all_reduce", comm, 4);
    total += g.seconds();
  }
  {
    const CommWatchdog::Guard g(&w, a, "barrier", comm, 4);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // long, but within timeout_s
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // idle, nothing armed
  CHECK(rec.count() == 0);
  CHECK(w.fired() == 0);
  CHECK(total < 2);
}

TEST_CASE("watchdog: a guard without a watchdog only measures", "[comm]") {
  CommActivity a;
  const std::string comm = "world";
  const CommWatchdog::Guard g(nullptr, a, "barrier", comm, 1);
  CHECK(g.seconds() >= 0);
}

TEST_CASE("watchdog: park_on_fire keeps a collective that ends after the timeout from returning",
          "[comm]") {
  // The late peer arrives while the abort is under way: the collective
  // completes, but its caller must not go on (it would start a checkpoint
  // that waits on ranks the abort is ending).
  Recorder rec;
  CommWatchdog w(rec.fire(), /*park_on_fire=*/true);
  static CommActivity a;  // outlives the parked thread's guard
  a.timeout_s = 0.05;
  static const std::string comm = "world";
  auto returned = std::make_shared<std::atomic<bool>>(false);
  auto ended = std::make_shared<std::atomic<bool>>(false);
  std::thread([&w, &rec, returned, ended] {
    {
      const CommWatchdog::Guard g(&w, a, "all_reduce", comm, 2);
      // The collective outlives the timeout until the report (up to 20 s,
      // generous under load), then completes.
      for (int i = 0; i < 2000 && rec.count() == 0; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      ended->store(true);
    }
    returned->store(true);
  }).detach();
  for (int i = 0; i < 2500 && !ended->load(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // after the collective ended
  CHECK(ended->load());
  CHECK(rec.count() == 1);
  CHECK_FALSE(returned->load());

  // Without it (the default) the same collective returns after the report.
  Recorder rec2;
  CommWatchdog w2(rec2.fire());
  bool back = false;
  {
    const CommWatchdog::Guard g(&w2, a, "all_reduce", comm, 2);
    for (int i = 0; i < 2000 && rec2.count() == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  back = true;
  CHECK(rec2.count() == 1);
  CHECK(back);
}
