// The NCCL communicator (cuda/comm_nccl.cu) in a world of one GPU, created
// without MPI: every collective of the Comm interface on device buffers and
// on host buffers (staged), half-precision payloads against the host
// rounding of core/parallel/half.h, all-to-all-v with displacements and gaps,
// split, the activity counters, and the timeout: a collective stuck behind a
// stalled stream is aborted after parallel.timeout_s with a CommTimeout
// naming it.
//
//   test_cuda_nccl          NCCL on CUDA device 0 (exit 77 without a device
//                           or without NCCL in the build)
//   test_cuda_nccl --self   the same checks on the single-process
//                           communicator and the CPU backend: runs anywhere,
//                           exercising this harness (no rounding there, no
//                           timeout check)
#include <chrono>
#include <cstdlib>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "core/backend/cuda_factory.h"
#include "core/parallel/comm.h"
#include "core/parallel/half.h"
#ifdef M6_HAVE_NCCL
#include "core/parallel/comm_nccl.h"
#endif

using namespace m6;

namespace {

int g_checks = 0, g_failures = 0;

void expect(const std::string& what, bool ok, const std::string& detail = "") {
  ++g_checks;
  if (!ok) ++g_failures;
  std::printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", what.c_str(), detail.empty() ? "" : ": ",
              detail.c_str());
}

template <class T>
bool same(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// A device buffer (the backend's memory) with host round trips.
template <class T>
struct Dev {
  Backend& be;
  T* p;
  size_t n;
  Dev(Backend& b, const std::vector<T>& v) : be(b), n(v.size()) {
    p = static_cast<T*>(be.alloc(n * sizeof(T)));
    be.to_device(p, v.data(), n * sizeof(T));
  }
  ~Dev() { be.release(p); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    be.sync();
    be.to_host(h.data(), p, n * sizeof(T));
    return h;
  }
};

std::vector<float> ramp(size_t n, float a, float b) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = a + b * static_cast<float>(i) + 1e-3f * std::sin(float(i));
  return v;
}

void run_checks(Comm& comm, Backend& be, bool rounds) {
  CommActivity& act = comm.activity();
  expect("world of one", comm.size() == 1 && comm.rank() == 0);

  // all_reduce in place on the device (fp32, every op) and on the host.
  const std::vector<float> x = ramp(1000, -3.0f, 0.01f);
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
    Dev<float> d(be, x);
    comm.all_reduce(d.p, x.size(), CommDType::F32, op);
    expect(fmt("all_reduce f32 device op ", static_cast<int>(op)), same(d.get(), x));
  }
  {
    const int64_t before = act.reduce_bytes, coll = act.collectives;
    double acc[3] = {1.5, -2.0, 1e300};
    comm.all_reduce(acc, 3, CommDType::F64, ReduceOp::Sum);
    expect("all_reduce f64 host (staged)", acc[0] == 1.5 && acc[1] == -2.0 && acc[2] == 1e300);
    expect("all_reduce counts its bytes", comm.name() == "self" || act.reduce_bytes - before == 24,
           fmt(act.reduce_bytes - before, " bytes"));
    expect("all_reduce counts the collective", comm.name() == "self" || act.collectives > coll);
    const int64_t s = comm.all_reduce_scalar(int64_t{42}, ReduceOp::Max);
    expect("all_reduce_scalar i64 host", s == 42);
  }
  // Half payloads: world of one sums nothing, so the result is the wire's
  // rounding of x * scale, divided by scale again.
  for (CommDType wire : {CommDType::BF16, CommDType::F16}) {
    for (float scale : {1.0f, 128.0f}) {
      std::vector<float> want = x;
      if (rounds) {
        std::vector<uint16_t> h(x.size());
        f32_to_half(h.data(), x.data(), x.size(), wire, scale);
        half_to_f32(want.data(), h.data(), x.size(), wire, 1.0f / scale);
      }
      Dev<float> d(be, x);
      comm.all_reduce_f32(d.p, x.size(), ReduceOp::Sum, wire, scale);
      expect(fmt("all_reduce_f32 ", comm_dtype_name(wire), " scale ", scale, " device"),
             same(d.get(), want));
    }
  }
  // all_to_all_v: 5 elements from offset 3 of send to offset 7 of recv; the
  // rest of recv (gaps) is left alone.
  {
    const std::vector<float> s = ramp(10, 1.0f, 1.0f);
    std::vector<float> r0(14, -9.0f), want = r0;
    for (int i = 0; i < 5; ++i) want[7 + i] = s[3 + i];
    const int64_t sc[1] = {5}, sd[1] = {3}, rc[1] = {5}, rdp[1] = {7};
    Dev<float> ds(be, s), dr(be, r0);
    comm.all_to_all_v(ds.p, sc, sd, dr.p, rc, rdp, CommDType::F32);
    expect("all_to_all_v f32 device, displacements and gaps", same(dr.get(), want));
    std::vector<float> hr = r0;
    comm.all_to_all_v(s.data(), sc, sd, hr.data(), rc, rdp, CommDType::F32);
    expect("all_to_all_v f32 host (staged), gaps kept", same(hr, want));
    for (CommDType wire : {CommDType::BF16, CommDType::F16}) {
      std::vector<float> w = r0;
      for (int i = 0; i < 5; ++i) {
        float v = s[3 + i];
        if (rounds) {
          uint16_t h;
          f32_to_half(&h, &v, 1, wire, 128.0f);
          half_to_f32(&v, &h, 1, wire, 1.0f / 128.0f);
        }
        w[7 + i] = v;
      }
      Dev<float> dr2(be, r0);
      comm.all_to_all_v_f32(ds.p, sc, sd, dr2.p, rc, rdp, wire, 128.0f);
      expect(fmt("all_to_all_v_f32 ", comm_dtype_name(wire), " device, gaps kept"),
             same(dr2.get(), w));
    }
    // Zero counts (an expert group that sends nothing this step).
    const int64_t zc[1] = {0}, zd[1] = {0};
    Dev<float> dz(be, r0);
    comm.all_to_all_v(ds.p, zc, zd, dz.p, zc, zd, CommDType::F32);
    expect("all_to_all_v with zero counts", same(dz.get(), r0));
    // Fixed-size all_to_all of host int32 (the MoE dispatch counts).
    std::vector<int32_t> cnt = {3, 0, 7}, got(3, -1);
    comm.all_to_all(cnt.data(), got.data(), 3, CommDType::I32);
    expect("all_to_all i32 host", same(got, cnt));
  }
  // all_gather and broadcast, device and host.
  {
    const std::vector<int64_t> v = {5, -6, 7};
    Dev<int64_t> dv(be, v), dg(be, std::vector<int64_t>(3, 0));
    comm.all_gather(dv.p, dg.p, 3, CommDType::I64);
    expect("all_gather i64 device", same(dg.get(), v));
    char host[8] = "node-a", all[8] = {0};
    comm.all_gather(host, all, 8, CommDType::U8);
    expect("all_gather u8 host", std::strcmp(all, "node-a") == 0);
    Dev<float> db(be, x);
    comm.broadcast(db.p, x.size(), CommDType::F32, 0);
    expect("broadcast f32 device", same(db.get(), x));
    unsigned char id[128];
    for (int i = 0; i < 128; ++i) id[i] = static_cast<unsigned char>(i * 7);
    comm.broadcast(id, 128, CommDType::U8, 0);
    bool ok = true;
    for (int i = 0; i < 128; ++i) ok = ok && id[i] == static_cast<unsigned char>(i * 7);
    expect("broadcast u8 host", ok);
    comm.barrier();
    expect("barrier", true);
  }
  // A split communicator shares the activity and works on its own.
  {
    auto sub = comm.split(0, 0);
    sub->set_role("ep");
    Dev<float> d(be, x);
    sub->all_reduce(d.p, x.size(), CommDType::F32, ReduceOp::Sum);
    expect("split(0, 0): all_reduce", sub->size() == 1 && same(d.get(), x));
    expect("split shares the activity", &sub->activity() == &comm.activity());
  }
}

#ifdef M6_HAVE_NCCL
// A collective behind a stalled stream: with timeout_s = 1 the wait ends
// after about a second with CommTimeout naming the collective and the label,
// and the communicator is aborted.
void check_timeout(Backend& be) {
  auto boot = make_self_comm();
  auto comm = make_nccl_comm(*boot, be);
  comm->activity().timeout_s = 1.0;
  comm->activity().step = 7;
  Dev<float> d(be, std::vector<float>(256, 1.0f));
  cuda_stall_stream(be, 5.0);
  const auto t0 = std::chrono::steady_clock::now();
  std::string msg;
  try {
    CommLabel label(comm->activity(), "test label");
    comm->all_reduce(d.p, 256, CommDType::F32, ReduceOp::Sum);
  } catch (const CommTimeout& e) {
    msg = e.what();
  }
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  expect("stuck all_reduce times out", !msg.empty(), msg);
  expect("the timeout names the step, the collective and the label",
         msg.find("step 7") != std::string::npos &&
             msg.find("all_reduce (test label)") != std::string::npos &&
             msg.find("aborted") != std::string::npos);
  // When the wait gave up: the message's "timed out after X s". The whole
  // call may take longer: ncclCommAbort can wait for the stalled stream (it
  // frees NCCL's device memory), up to the 5 s stall.
  double gave_up = -1.0;
  const size_t at = msg.find("timed out after ");
  if (at != std::string::npos) gave_up = std::atof(msg.c_str() + at + 16);
  expect("the wait gave up after about timeout_s", gave_up >= 0.9 && gave_up < 3.0,
         fmt(gave_up, " s (message: ", msg, ")"));
  expect("the call, abort included, returned within the 5 s stall plus 3 s", waited < 8.0,
         fmt(waited, " s"));
  std::printf("info nccl timeout: gave up after %.1f s, returned after %.2f s\n", gave_up, waited);
  expect("the activity is marked broken", comm->activity().broken);
  comm.reset();  // aborted already: must not wait
  be.sync();     // the stall ends by itself
  expect("the stream recovers after the abort", true);
}
#endif

}  // namespace

int main(int argc, char** argv) {
  const bool self = argc > 1 && std::strcmp(argv[1], "--self") == 0;
  try {
    if (self) {
      auto be = make_cpu_backend(1);
      auto comm = make_self_comm();
      std::printf("checking the harness on %s with %s\n", comm->name().c_str(), be->name().c_str());
      run_checks(*comm, *be, false);
    } else {
#ifndef M6_HAVE_NCCL
      std::printf("built without NCCL: skipping the NCCL communicator tests\n");
      return 77;
#else
      if (cuda_device_count() == 0) {
        std::printf("no CUDA device: skipping the NCCL communicator tests\n");
        return 77;
      }
      auto be = make_cuda_backend(0);
      auto boot = make_self_comm();
      auto comm = make_nccl_comm(*boot, *be);
      std::printf("NCCL %s on %s, world of 1 without MPI\n", nccl_runtime_version().c_str(),
                  be->name().c_str());
      run_checks(*comm, *be, true);
      comm.reset();
      check_timeout(*be);
#endif
    }
  } catch (const std::exception& e) {
    std::printf("FAIL exception: %s\n", e.what());
    return 1;
  }
  std::printf("%d of %d checks failed\n", g_failures, g_checks);
  return g_failures == 0 ? 0 : 1;
}
