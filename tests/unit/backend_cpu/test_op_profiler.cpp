// The op profiler (core/backend/op_profiler.h) over the CPU backend: every
// device op counted under its name, times from the marks, the host reads
// passed through, results unchanged.
#include <catch2/catch.hpp>

#include <vector>

#include "core/backend/op_profiler.h"

using namespace m6;

TEST_CASE("op profiler: counts and times each op, changes no result", "[profile]") {
  auto be = make_op_profiler(make_cpu_backend(1));
  CHECK_FALSE(be->graphs_available());  // a replay would hide the ops
  const size_t n = 1 << 16;
  float* x = static_cast<float*>(be->alloc(n * sizeof(float)));
  float* y = static_cast<float*>(be->alloc(n * sizeof(float)));
  std::vector<float> h(n, 0.5f);
  be->to_device(x, h.data(), n * sizeof(float));
  for (int i = 0; i < 3; ++i) be->gelu_fwd(y, x, n);
  be->scale(y, 2.0f, n);
  CHECK(be->sum(y, n) == Approx(2.0 * n * 0.34571400982514394).epsilon(1e-5));  // 2 gelu(0.5)
  std::vector<OpTime> t = op_profile(*be);
  REQUIRE(t.size() == 2);
  const OpTime* gelu = t[0].op == "gelu_fwd" ? &t[0] : &t[1];
  const OpTime* scale = t[0].op == "scale" ? &t[0] : &t[1];
  CHECK(gelu->op == "gelu_fwd");
  CHECK(gelu->calls == 3);
  CHECK(scale->op == "scale");
  CHECK(scale->calls == 1);
  CHECK(gelu->ms > 0);
  CHECK(t[0].ms >= t[1].ms);  // most time first
  op_profile_reset(*be);
  CHECK(op_profile(*be).empty());
  // Not a profiler: an empty table.
  auto cpu = make_cpu_backend(1);
  CHECK(op_profile(*cpu).empty());
  be->release(x);
  be->release(y);
}

TEST_CASE("op profiler: host-clock marks measure the time between them", "[profile]") {
  auto be = make_cpu_backend(1);
  be->marks_reset();
  const int a = be->mark();
  volatile double s = 0;
  for (int i = 0; i < 2000000; ++i) s = s + i * 1e-9;
  const int b = be->mark();
  CHECK(b == a + 1);
  CHECK(be->mark_ms(a, b) > 0);
  CHECK(be->mark_ms(a, a) == 0);
  CHECK_THROWS_WITH(be->mark_ms(a, b + 5), Catch::Contains("not recorded"));
  be->marks_reset();
  CHECK(be->mark() == 0);
}

// A device communicator finds the device backend's stream through the
// wrappers (wrapped()): the profiler and the recording twin each name the
// backend they wrap; a plain backend wraps none.
TEST_CASE("op profiler: wrappers name the backend they wrap", "[profile]") {
  auto plain = make_cpu_backend(1);
  CHECK(plain->wrapped() == nullptr);
  auto inner = make_cpu_backend(1);
  Backend* cpu = inner.get();
  auto rec = make_recording_backend(std::move(inner));
  Backend* recp = rec.get();
  auto prof = make_op_profiler(std::move(rec));
  REQUIRE(prof->wrapped() == recp);
  CHECK(recp->wrapped() == cpu);
  CHECK(cpu->wrapped() == nullptr);
}
