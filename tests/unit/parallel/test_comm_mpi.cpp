// Multi-rank tests of the MPI communicator (hidden [.mpi]; run under mpirun by
// tests/cli/mpi_unit.sh). As in nccl-tests, every input is chosen so that the
// exact output is known, and each check counts the wrong elements.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <thread>
#include <vector>

#include "core/parallel/grad_buckets.h"
#include "core/parallel/grid.h"
#include "core/parallel/half.h"
#include "mpi_world.h"

using namespace m6;
using m6::test::mpi_world;

namespace {
Comm& world2() {
  Comm& w = mpi_world();
  REQUIRE(w.size() >= 2);  // run under mpirun -np >= 2; a world of one proves nothing
  return w;
}
}  // namespace

TEST_CASE("mpi all_reduce: sums, max and min are exact in every type", "[.mpi]") {
  Comm& c = world2();
  const int W = c.size(), r = c.rank();
  const size_t n = 1037;  // odd, not a multiple of any segment size
  const double ranks_sum = W * (W + 1) / 2.0;
  std::vector<float> f(n);
  std::vector<double> d(n);
  std::vector<int64_t> l(n);
  for (size_t i = 0; i < n; ++i) {
    f[i] = static_cast<float>((r + 1) * (i % 7 + 1));
    d[i] = 0.25 * (r + 1) * static_cast<double>(i);
    l[i] = (int64_t{1} << 40) * (r + 1) + static_cast<int64_t>(i);
  }
  c.all_reduce(f.data(), n, CommDType::F32, ReduceOp::Sum);
  c.all_reduce(d.data(), n, CommDType::F64, ReduceOp::Sum);
  c.all_reduce(l.data(), n, CommDType::I64, ReduceOp::Max);
  int wrong = 0;
  for (size_t i = 0; i < n; ++i) {
    wrong += f[i] != static_cast<float>(ranks_sum * (i % 7 + 1));
    wrong += d[i] != 0.25 * ranks_sum * static_cast<double>(i);
    wrong += l[i] != (int64_t{1} << 40) * W + static_cast<int64_t>(i);
  }
  CHECK(wrong == 0);
  std::vector<int32_t> m(n, r * 10 - 5);
  c.all_reduce(m.data(), n, CommDType::I32, ReduceOp::Min);
  CHECK(std::count(m.begin(), m.end(), -5) == static_cast<long>(n));
  // Zero elements: every rank joins, nothing happens.
  c.all_reduce(f.data(), 0, CommDType::F32, ReduceOp::Sum);
}

TEST_CASE("mpi all_reduce in bf16 and fp16: exact for representable sums", "[.mpi]") {
  Comm& c = world2();
  const int W = c.size(), r = c.rank();
  const size_t n = 515;
  for (CommDType t : {CommDType::BF16, CommDType::F16}) {
    // Small integers and halves: every partial sum is exact in 8 significant bits.
    std::vector<uint16_t> h(n);
    for (size_t i = 0; i < n; ++i) {
      const float v = 0.5f * static_cast<float>((r + 1) * (i % 5));
      h[i] = t == CommDType::BF16 ? f32_to_bf16(v) : f32_to_f16(v);
    }
    c.all_reduce(h.data(), n, t, ReduceOp::Sum);
    int wrong = 0;
    for (size_t i = 0; i < n; ++i) {
      const float got = t == CommDType::BF16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]);
      wrong += got != 0.5f * static_cast<float>(W * (W + 1) / 2 * (i % 5));
    }
    CHECK(wrong == 0);
  }
  // fp32 buffers on a half wire: within the half rounding of each step.
  std::vector<float> g(n);
  for (size_t i = 0; i < n; ++i) g[i] = 1e-6f * static_cast<float>(i + 1) / 3.0f;
  std::vector<float> want = g;
  for (auto& x : want) x *= static_cast<float>(W);
  c.all_reduce_f32(g.data(), n, ReduceOp::Sum, CommDType::F16, kFp16GradCommScale);
  int wrong = 0;
  for (size_t i = 0; i < n; ++i) wrong += std::fabs(g[i] - want[i]) > want[i] * W * 0x1.0p-11f;
  CHECK(wrong == 0);
  CHECK(c.activity().reduce_bytes > 0);
}

TEST_CASE("mpi all_to_all_v: uneven blocks, empty blocks, half wire", "[.mpi]") {
  Comm& c = world2();
  const int P = c.size(), r = c.rank();
  // Rank s sends (s + 2q) % 3 * 5 elements to q (some blocks empty), valued
  // s*1000 + q*10 + k, with gaps between the send blocks.
  auto count = [](int s, int q) { return static_cast<int64_t>((s + 2 * q) % 3 * 5); };
  std::vector<int64_t> sc(P), sd(P), rc(P), rd(P);
  int64_t st = 0, rt = 0;
  for (int q = 0; q < P; ++q) {
    sc[q] = count(r, q), sd[q] = st + 1, st += sc[q] + 1;  // gaps between blocks
    rc[q] = count(q, r), rd[q] = rt, rt += rc[q];
  }
  std::vector<float> send(st + 1, -1.0f), recv(rt + 1, -7.0f);
  for (int q = 0; q < P; ++q)
    for (int64_t k = 0; k < sc[q]; ++k) send[sd[q] + k] = static_cast<float>(r * 1000 + q * 10 + k);
  const int64_t before = c.activity().a2a_bytes;
  c.all_to_all_v(send.data(), sc.data(), sd.data(), recv.data(), rc.data(), rd.data(),
                 CommDType::F32);
  int64_t to_others = 0;
  for (int q = 0; q < P; ++q) to_others += q == r ? 0 : sc[q] * 4;
  CHECK(c.activity().a2a_bytes - before == to_others);
  int wrong = 0;
  for (int s = 0; s < P; ++s)
    for (int64_t k = 0; k < rc[s]; ++k)
      wrong += recv[rd[s] + k] != static_cast<float>(s * 1000 + r * 10 + k);
  wrong += recv[rt] != -7.0f;  // nothing written past the blocks
  CHECK(wrong == 0);

  // Half wire: values k/4 + s are exact in bf16 and fp16.
  for (int q = 0; q < P; ++q)
    for (int64_t k = 0; k < sc[q]; ++k) send[sd[q] + k] = static_cast<float>(r) + 0.25f * k + q;
  for (CommDType wire : {CommDType::BF16, CommDType::F16}) {
    std::fill(recv.begin(), recv.end(), -7.0f);
    c.all_to_all_v_f32(send.data(), sc.data(), sd.data(), recv.data(), rc.data(), rd.data(), wire);
    wrong = 0;
    for (int s = 0; s < P; ++s)
      for (int64_t k = 0; k < rc[s]; ++k)
        wrong += recv[rd[s] + k] != static_cast<float>(s) + 0.25f * k + r;
    CHECK(wrong == 0);
  }
}

TEST_CASE("mpi all_gather, broadcast, barrier", "[.mpi]") {
  Comm& c = world2();
  const int P = c.size(), r = c.rank();
  std::vector<int32_t> mine(3), all(3 * P);
  for (int i = 0; i < 3; ++i) mine[i] = r * 3 + i;
  c.all_gather(mine.data(), all.data(), 3, CommDType::I32);
  std::vector<int32_t> want(3 * P);
  std::iota(want.begin(), want.end(), 0);
  CHECK(all == want);
  std::vector<double> b(17, r == P - 1 ? 2.5 : 0.0);
  c.broadcast(b.data(), b.size(), CommDType::F64, P - 1);
  CHECK(std::count(b.begin(), b.end(), 2.5) == 17);
  c.barrier();
}

TEST_CASE("mpi process grid: EP and expert-DP communicators", "[.mpi]") {
  Comm& c = world2();
  const int W = c.size();
  for (int ep = 1; ep <= W; ++ep) {
    if (W % ep) continue;
    ProcessGrid g(c, ep);
    const GridLayout& l = g.layout();
    CHECK(g.ep().size() == ep);
    CHECK(g.edp().size() == W / ep);
    // Sum of world ranks over each group: EP groups are consecutive ranks,
    // expert-DP groups the ranks with the same rank % ep.
    int32_t v = l.rank;
    g.ep().all_reduce(&v, 1, CommDType::I32, ReduceOp::Sum);
    CHECK(v == l.ep_group * ep * ep + ep * (ep - 1) / 2);
    v = l.rank;
    g.edp().all_reduce(&v, 1, CommDType::I32, ReduceOp::Sum);
    int want = 0;
    for (int grp = 0; grp < W / ep; ++grp) want += grp * ep + l.ep_rank;
    CHECK(v == want);
  }
}

TEST_CASE("mpi gradient buckets: sums of rank-dependent spans", "[.mpi]") {
  Comm& c = world2();
  const int W = c.size(), r = c.rank();
  auto be = make_cpu_backend(1);
  const std::vector<size_t> sizes = {7, 300, 40, 41, 1};
  std::vector<float*> bufs;
  std::vector<GradSpan> spans;
  for (size_t i = 0; i < sizes.size(); ++i) {
    std::vector<float> h(sizes[i]);
    for (size_t j = 0; j < sizes[i]; ++j) h[j] = static_cast<float>((r + 1) * (i + 1) + j);
    float* p = static_cast<float*>(be->alloc(sizes[i] * sizeof(float)));
    be->to_device(p, h.data(), sizes[i] * sizeof(float));
    bufs.push_back(p);
    spans.push_back({p, sizes[i]});
  }
  GradBuckets b(*be, spans, 64 * sizeof(float));
  b.all_reduce_sum(c, CommDType::F32, "test");
  int wrong = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    std::vector<float> h(sizes[i]);
    be->to_host(h.data(), bufs[i], sizes[i] * sizeof(float));
    for (size_t j = 0; j < sizes[i]; ++j)
      wrong += h[j] != static_cast<float>(W * (W + 1) / 2 * (i + 1) + W * j);
    be->release(bufs[i]);
  }
  CHECK(wrong == 0);
}

// Hidden from the [mpi] run, since it ends the job: tests/cli/mpi_unit.sh runs
// it alone and checks the exit status and the message. Rank 1 arrives 30 s
// late at the collective named by M6_TEST_TIMEOUT_OP (barrier, all_reduce,
// split); the others wait with timeout_s 0.3, so their watchdog aborts the job.
TEST_CASE("mpi timeout: a rank late past timeout_s aborts the job", "[.mpi_timeout]") {
  Comm& w = world2();
  const char* env = std::getenv("M6_TEST_TIMEOUT_OP");
  const std::string op = env ? env : "barrier";
  w.barrier();
  w.activity().step = 7;
  if (w.rank() == 1) {
    std::this_thread::sleep_for(std::chrono::seconds(30));
    w.activity().timeout_s = 600;
  } else {
    w.activity().timeout_s = 0.3;
  }
  CommLabel label(w.activity(), "test " + op);
  if (op == "barrier") {
    w.barrier();
  } else if (op == "all_reduce") {
    std::vector<float> v(1 << 20, 1.0f);
    w.all_reduce(v.data(), v.size(), CommDType::F32, ReduceOp::Sum);
  } else if (op == "split") {
    auto sub = w.split(0, w.rank());
  }
  FAIL("rank " << w.rank() << " returned from " << op << " instead of being aborted");
}
