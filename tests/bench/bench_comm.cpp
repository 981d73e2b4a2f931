// Collective benchmark of the Comm layer (run by scripts/bench-comm.sh under
// mpirun), in the manner of nccl-tests: for message sizes from 1 KiB to
// 64 MiB per rank it times all-reduce (fp32 sum) and all-to-all (equal
// blocks), checks the result (count of wrong elements), and prints the time
// per call, the algorithm bandwidth (bytes / time) and the bus bandwidth --
// algbw * 2(n-1)/n for all-reduce, algbw * (n-1)/n for all-to-all -- which
// is comparable across rank counts. Rank 0 prints; the time is the slowest
// rank's mean. With an fp32 payload each collective is also timed as a plain
// blocking MPI call on the same buffers, side by side: the fastest single
// call of each ("best", "mpi best") and their ratio ("x"), the cost of the
// Comm layer's timeout watchdog and accounting.
//
//   mpirun -np N bench_comm [--min-bytes B] [--max-bytes B] [--wire f32|bf16|fp16]
//                           [--rounds R]   (alternating timing rounds, default 3)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <mpi.h>

#include "core/parallel/comm.h"
#include "core/parallel/mpi_session.h"

namespace {

using Clock = std::chrono::steady_clock;

// Seconds per call of fn over enough calls to fill ~0.2 s (at least 2, at
// most 200): the mean, and the fastest single call (the cost without
// interference: the fair comparison on a machine shared with other work),
// each the slowest rank's.
struct Timing {
  double mean = 0, best = 0;
};

template <class Fn>
Timing time_calls(m6::Comm& c, Fn&& fn) {
  fn();  // warm-up
  c.barrier();
  auto t0 = Clock::now();
  fn();
  double once = std::chrono::duration<double>(Clock::now() - t0).count();
  once = c.all_reduce_scalar(once, m6::ReduceOp::Max);
  const int iters = std::max(2, std::min(200, static_cast<int>(0.2 / std::max(once, 1e-7))));
  c.barrier();
  Timing t;
  t.best = 1e30;
  t0 = Clock::now();
  for (int i = 0; i < iters; ++i) {
    const auto c0 = Clock::now();
    fn();
    t.best = std::min(t.best, std::chrono::duration<double>(Clock::now() - c0).count());
  }
  t.mean = std::chrono::duration<double>(Clock::now() - t0).count() / iters;
  t.mean = c.all_reduce_scalar(t.mean, m6::ReduceOp::Max);
  t.best = c.all_reduce_scalar(t.best, m6::ReduceOp::Max);
  return t;
}

// The Comm call and its blocking-MPI twin (when `raw`), timed alternately
// `rounds` times with the best of each kept, so that background load on a
// shared machine hits both alike.
template <class A, class B>
std::pair<Timing, Timing> time_pair(m6::Comm& c, bool raw, int rounds, A&& comm_fn, B&& mpi_fn) {
  Timing t{1e30, 1e30}, t_mpi{raw ? 1e30 : 0.0, raw ? 1e30 : 0.0};
  for (int round = 0; round < rounds; ++round) {
    const Timing a = time_calls(c, comm_fn);
    t = {std::min(t.mean, a.mean), std::min(t.best, a.best)};
    if (!raw) continue;
    const Timing b = time_calls(c, mpi_fn);
    t_mpi = {std::min(t_mpi.mean, b.mean), std::min(t_mpi.best, b.best)};
  }
  return {t, t_mpi};
}

std::string human(size_t b) {
  char s[32];
  if (b >= (1u << 20))
    std::snprintf(s, sizeof s, "%zu MiB", b >> 20);
  else
    std::snprintf(s, sizeof s, "%zu KiB", b >> 10);
  return s;
}

int run(int argc, char** argv) {
  m6::MpiSession mpi;
  mpi.start(&argc, &argv);
  size_t min_b = 1 << 10, max_b = 64 << 20;
  m6::CommDType wire = m6::CommDType::F32;
  int rounds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--min-bytes")
      min_b = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--max-bytes")
      max_b = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--rounds")
      rounds = std::max(1, std::atoi(v.c_str()));
    else if (k == "--wire")
      wire = v == "bf16"   ? m6::CommDType::BF16
             : v == "fp16" ? m6::CommDType::F16
                           : m6::CommDType::F32;
  }
  auto world = mpi.world();
  m6::Comm& c = *world;
  c.activity().timeout_s = 600;
  const int P = c.size(), r = c.rank();
  if (r == 0) {
    std::printf("# m6train Comm benchmark: %d ranks, %s, payload %s; sizes per rank\n", P,
                c.name().c_str(), m6::comm_dtype_name(wire));
    std::printf("# %10s | %10s %9s %9s %6s %9s %9s %5s | %10s %9s %9s %6s %9s %9s %5s\n", "size",
                "allreduce", "algbw", "busbw", "wrong", "best", "mpi best", "", "alltoall",
                "algbw", "busbw", "wrong", "best", "mpi best", "");
    std::printf("# %10s | %10s %9s %9s %6s %9s %9s %5s | %10s %9s %9s %6s %9s %9s %5s\n", "",
                "us", "GB/s", "GB/s", "", "us", "us", "x", "us", "GB/s", "GB/s", "", "us", "us",
                "x");
  }
  for (size_t bytes = min_b; bytes <= max_b; bytes *= 2) {
    const size_t n = bytes / sizeof(float);
    const size_t blk = n / P;
    std::vector<float> buf(n), send(blk * P), recv(blk * P);
    // all-reduce: rank r holds r+1 everywhere, so the sum is P(P+1)/2 (after
    // the timed repetitions the buffer is refilled and reduced once more).
    auto fill = [&] { std::fill(buf.begin(), buf.end(), static_cast<float>(r + 1)); };
    fill();
    // The same collective as one plain blocking MPI call (fp32 payloads only).
    const bool raw = wire == m6::CommDType::F32;
    const auto [t_ar, t_ar_mpi] = time_pair(
        c, raw, rounds, [&] { c.all_reduce_f32(buf.data(), n, m6::ReduceOp::Sum, wire); },
        [&] {
          MPI_Allreduce(MPI_IN_PLACE, buf.data(), static_cast<int>(n), MPI_FLOAT, MPI_SUM,
                        MPI_COMM_WORLD);
        });
    fill();
    c.all_reduce_f32(buf.data(), n, m6::ReduceOp::Sum, wire);
    int64_t wrong_ar = 0;
    for (float v : buf) wrong_ar += v != static_cast<float>(P * (P + 1) / 2);
    // all-to-all: block q of rank r holds r*P + q; received block s must hold s*P + r.
    for (int q = 0; q < P; ++q)
      for (size_t k = 0; k < blk; ++k) send[q * blk + k] = static_cast<float>(r * P + q);
    std::vector<int64_t> cnt(P, static_cast<int64_t>(blk)), dsp(P);
    for (int q = 0; q < P; ++q) dsp[q] = static_cast<int64_t>(q * blk);
    std::vector<int> icnt(P, static_cast<int>(blk)), idsp(P);
    for (int q = 0; q < P; ++q) idsp[q] = static_cast<int>(q * blk);
    const auto [t_a2a, t_a2a_mpi] = time_pair(
        c, raw, rounds,
        [&] {
          c.all_to_all_v_f32(send.data(), cnt.data(), dsp.data(), recv.data(), cnt.data(),
                             dsp.data(), wire);
        },
        [&] {
          MPI_Alltoallv(send.data(), icnt.data(), idsp.data(), MPI_FLOAT, recv.data(),
                        icnt.data(), idsp.data(), MPI_FLOAT, MPI_COMM_WORLD);
        });
    std::fill(recv.begin(), recv.end(), -1.0f);  // the Comm call's result is the one checked
    c.all_to_all_v_f32(send.data(), cnt.data(), dsp.data(), recv.data(), cnt.data(), dsp.data(),
                       wire);
    int64_t wrong_a2a = 0;
    for (int s = 0; s < P; ++s)
      for (size_t k = 0; k < blk; ++k)
        wrong_a2a += recv[s * blk + k] != static_cast<float>(s * P + r);
    wrong_ar = c.all_reduce_scalar(wrong_ar, m6::ReduceOp::Sum);
    wrong_a2a = c.all_reduce_scalar(wrong_a2a, m6::ReduceOp::Sum);
    if (r == 0) {
      const double ar_alg = bytes / t_ar.mean / 1e9, a2a_alg = bytes / t_a2a.mean / 1e9;
      std::printf(
          "  %10s | %10.1f %9.3f %9.3f %6lld %9.1f %9.1f %5.2f | %10.1f %9.3f %9.3f %6lld %9.1f "
          "%9.1f %5.2f\n",
          human(bytes).c_str(), t_ar.mean * 1e6, ar_alg, ar_alg * 2.0 * (P - 1) / P,
          static_cast<long long>(wrong_ar), t_ar.best * 1e6, t_ar_mpi.best * 1e6,
          raw ? t_ar.best / t_ar_mpi.best : 0.0, t_a2a.mean * 1e6, a2a_alg, a2a_alg * (P - 1) / P,
          static_cast<long long>(wrong_a2a), t_a2a.best * 1e6, t_a2a_mpi.best * 1e6,
          raw ? t_a2a.best / t_a2a_mpi.best : 0.0);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_comm: %s\n", e.what());
    return 1;
  }
}
