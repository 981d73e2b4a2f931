// The loss-spike guard's z-score and window, and the stop-signal flag of
// preemption.
#include <catch2/catch.hpp>
#include <pthread.h>

#include <csignal>

#include "core/config/config.h"
#include "core/train/preempt.h"
#include "core/train/spike_guard.h"
#include "core/util/error.h"

using namespace m6;

TEST_CASE("spike guard: silent until the window is full, then a z-score over it", "[guard]") {
  SpikeGuard g(4, 3.0);
  REQUIRE(g.enabled());
  for (double x : {2.0, 4.0, 2.0}) {
    CHECK_FALSE(g.is_spike(1000.0));  // window not full yet
    g.accept(x);
  }
  g.accept(4.0);  // window {2,4,2,4}: mean 3, population std 1
  CHECK(g.z_score(6.0) == Approx(3.0));
  CHECK_FALSE(g.is_spike(6.0));  // z = 3 is not above 3
  CHECK(g.is_spike(6.01));
  CHECK_FALSE(g.is_spike(-100.0));  // only upward spikes
  g.accept(6.0);                    // oldest (2) leaves: {4,2,4,6}
  CHECK(g.history() == std::vector<double>{4.0, 2.0, 4.0, 6.0});
}

TEST_CASE("spike guard: a flat window does not turn rounding noise into a spike", "[guard]") {
  SpikeGuard g(3, 6.0);
  for (int i = 0; i < 3; ++i) g.accept(2.5);
  CHECK_FALSE(g.is_spike(2.5 + 1e-9));
  CHECK(g.is_spike(2.6));
}

TEST_CASE("spike guard: restore keeps the newest entries of a saved window", "[guard]") {
  SpikeGuard g(2, 3.0);
  g.restore({1.0, 2.0, 3.0});
  CHECK(g.history() == std::vector<double>{2.0, 3.0});
  SpikeGuard off(0, 3.0);
  CHECK_FALSE(off.enabled());
  off.accept(1.0);
  off.restore({1.0});
  CHECK(off.history().empty());
  CHECK_FALSE(off.is_spike(1e30));
}

TEST_CASE("preemption: SIGTERM and SIGUSR1 set the flag, the first one wins", "[preempt]") {
  {
    StopSignals s;
    CHECK(s.pending() == 0);
    std::raise(SIGUSR1);
    CHECK(s.pending() == SIGUSR1);
    std::raise(SIGTERM);  // a second signal (during the save) changes nothing
    CHECK(s.pending() == SIGUSR1);
    CHECK(std::string(stop_signal_name(SIGUSR1)) == "SIGUSR1");
  }
  {
    StopSignals s;  // a new run starts clear
    CHECK(s.pending() == 0);
    std::raise(SIGTERM);
    CHECK(s.pending() == SIGTERM);
  }
  {
    StopSignals outer;  // app/'s, around start-up: a signal before training is kept
    std::raise(SIGTERM);
    StopSignals inner;  // the trainer's
    CHECK(inner.pending() == SIGTERM);
  }
  {
    StopSignals s;  // Ctrl-C asks for a save; a second one is the same request
    std::raise(SIGINT);
    CHECK(s.pending() == SIGINT);
    std::raise(SIGINT);
    std::raise(SIGTERM);
    CHECK(s.pending() == SIGINT);
  }
  // The handlers stay installed after the last instance is gone: a signal
  // after the save (the process is exiting 75) must not kill it with 143.
  for (int sig : {SIGTERM, SIGUSR1, SIGINT}) {
    struct sigaction now;
    sigaction(sig, nullptr, &now);
    CHECK(now.sa_handler != SIG_DFL);
    CHECK(now.sa_handler != SIG_IGN);
    CHECK((now.sa_flags & SA_RESETHAND) == 0);
  }
  std::raise(SIGTERM);  // would end the test binary if the default action were back
  {
    StopSignals s;
    CHECK(s.pending() == 0);
  }
}

namespace {
volatile sig_atomic_t g_library_got = 0;
extern "C" void library_handler(int) { g_library_got = 1; }
}  // namespace

TEST_CASE("preemption: a stop signal during a deferred section arrives after it", "[preempt]") {
  StopSignals s;
  {
    StopSignalsDeferred deferred;  // as around MPI_Init
    std::raise(SIGUSR1);           // blocked: pending, not lost
    CHECK(s.pending() == 0);
    // A library replacing the handler meanwhile does not get it either.
    signal(SIGUSR1, library_handler);
  }
  CHECK(s.pending() == SIGUSR1);
  CHECK(g_library_got == 0);
  struct sigaction now;
  sigaction(SIGUSR1, nullptr, &now);
  CHECK(now.sa_handler != library_handler);
  sigset_t mask;
  pthread_sigmask(SIG_BLOCK, nullptr, &mask);
  CHECK_FALSE(sigismember(&mask, SIGUSR1));
}

TEST_CASE("spike guard: config keys are validated", "[guard]") {
  Config c;
  c.data.train = c.data.val = "x";
  CHECK_NOTHROW(validate_config(c, 1));
  c.train.spike_guard.window = 1;
  CHECK_THROWS_WITH(validate_config(c, 1), Catch::Contains("train.spike_guard.window"));
  c.train.spike_guard.window = 16;
  c.train.spike_guard.z_threshold = 0;
  CHECK_THROWS_AS(validate_config(c, 1), ConfigError);
}
