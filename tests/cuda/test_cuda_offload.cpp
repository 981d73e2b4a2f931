// The host arena and the offload copies of the CUDA backend (Backend::
// alloc_host / copy_async / copy_async_wait / copy_async_sync; core/model streams the
// offload.params layer sets through them). See test_cuda_ops.cpp for the
// conventions; with --cpu-vs-cpu the CPU backend's synchronous defaults stand
// in, which checks the flow of these tests on a machine without a GPU.
#include <cstring>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "core/model/model.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/tiny_model.h"

using namespace m6;
using namespace m6::cuda_test;

namespace {

std::vector<float> download(Backend& be, const float* p, size_t n) {
  std::vector<float> h(n);
  be.to_host(h.data(), p, n * sizeof(float));
  return h;
}

void test_host_arena(Backend& g) {
  expect_true("host arena: present", g.has_host_arena());
  const size_t n = 3000, bytes = n * sizeof(float);
  const Backend::MemoryStats before = g.memory_stats();
  float* h = static_cast<float*>(g.alloc_host(bytes));
  const Backend::MemoryStats held = g.memory_stats();
  expect_true("host arena: counted (" + std::to_string(held.host_live - before.host_live) + " B)",
              held.host_live - before.host_live >= static_cast<int64_t>(bytes) &&
                  held.host_peak >= held.host_live && held.device_live == before.device_live);
  bool zero = true;
  for (size_t i = 0; i < n; ++i) zero = zero && h[i] == 0.0f;
  expect_true("host arena: zero-filled", zero);

  // Synchronous copies with a pinned side (an offloaded master or moment).
  const std::vector<float> v = randn(n);
  float* d = static_cast<float*>(g.alloc(bytes));
  std::memcpy(h, v.data(), bytes);
  g.to_device(d, h, bytes);
  expect_close("host arena: to_device from pinned", download(g, d, n), v, kExact);
  g.scale(d, 2.0f, n);
  g.to_host(h, d, bytes);
  std::vector<float> twice(v);
  for (float& x : twice) x *= 2.0f;
  expect_close("host arena: to_host into pinned", std::vector<float>(h, h + n), twice, kExact);
  g.copy(d, h + 10, (n - 10) * sizeof(float));  // pinned -> device through copy()
  expect_close("host arena: copy from pinned", download(g, d, n - 10),
               std::vector<float>(twice.begin() + 10, twice.end()), kExact);
  // zero() of a range inside a pinned allocation (an offloaded Adam moment).
  g.zero(h + 100, 50 * sizeof(float));
  bool ok = h[99] == twice[99] && h[150] == twice[150];
  for (size_t i = 100; i < 150; ++i) ok = ok && h[i] == 0.0f;
  expect_true("host arena: zero() inside a pinned allocation", ok);

  g.release(d);
  g.release_host(h);
  expect_true("host arena: released", g.memory_stats().host_live == before.host_live);
}

void test_prefetch(Backend& g) {
  // Large enough that a copy racing ahead of the kernels before it would show.
  const size_t n = size_t{1} << 22, bytes = n * sizeof(float);
  float* host[2] = {static_cast<float*>(g.alloc_host(bytes)),
                    static_cast<float*>(g.alloc_host(bytes))};
  float* slot[2] = {static_cast<float*>(g.alloc(bytes)), static_cast<float*>(g.alloc(bytes))};
  const std::vector<float> a = randn(n), b = randn(n);
  std::memcpy(host[0], a.data(), bytes);
  std::memcpy(host[1], b.data(), bytes);
  g.copy_async(0, slot[0], host[0], bytes);
  g.copy_async(1, slot[1], host[1], bytes);
  g.copy_async_wait(0);
  g.copy_async_wait(1);
  expect_close("prefetch: slot 0 arrives", download(g, slot[0], n), a, kExact);
  expect_close("prefetch: slot 1 arrives", download(g, slot[1], n), b, kExact);

  // Ordering: work on the slot issued before a prefetch into it completes
  // first (the copy must not overwrite what those kernels still read or
  // write), and work issued after copy_async_wait sees the new contents.
  for (int r = 0; r < 8; ++r) g.scale(slot[0], 1.5f, n);  // reads and writes slot 0
  g.copy_async(0, slot[0], host[1], bytes);       // then b arrives over it
  g.copy_async_wait(0);
  g.scale(slot[0], 2.0f, n);
  std::vector<float> want(b);
  for (float& x : want) x *= 2.0f;
  expect_close("prefetch: ordered after earlier work, before later work", download(g, slot[0], n),
               want, kExact);

  // Device to host under a staging slot: the host waits (copy_async_sync)
  // for the copy, which itself waited for the kernels before it.
  g.scale(slot[0], 0.5f, n);  // slot 0 holds b again
  g.copy_async(2, host[0], slot[0], bytes);
  g.copy_async_sync(2);
  expect_close("copy_async: device to host after earlier work", std::vector<float>(host[0], host[0] + n),
               b, kExact);
  for (int s = 0; s < 2; ++s) {
    g.release(slot[s]);
    g.release_host(host[s]);
  }
}

// The model with every layer's master weights and moments in the host arena
// (offload.params = optimizer = 1: the layers stream through the two-slot
// prefetch window) computes the same bits as with everything resident, in
// fp32 and (half mode) under precision.compute bf16/fp16.
void test_offload_model(Backend& g) {
  // Half mode: the streamed weights are rounded when their layer runs, as
  // the resident chunks' compute copies are (tiny_moe_config sets precision.compute).
  Config cfg = tiny_moe_config(4, 2, 11);
  const Batch b = test::random_batch(cfg, 3);
  const int E = cfg.model.moe.experts;
  Config off = cfg;
  off.offload.optimizer = off.offload.params = 1.0;
  off.offload.chunk_mb = 0.001;
  for (const Recompute rc : {Recompute::None, Recompute::Layer}) {
    cfg.train.recompute = off.train.recompute = rc;
    const std::string tag = rc == Recompute::None ? "" : " (recompute layer)";
    Model m0(cfg, g, ExpertRange{0, E}), m1(off, g, ExpertRange{0, E});
    m0.init_params(cfg.train.seed);
    m1.init_params(cfg.train.seed);
    int64_t allocs_after_first = 0;
    for (int rep = 0; rep < 3; ++rep) {  // again: later passes start from a filled window
      if (rep == 1) allocs_after_first = g.memory_stats().allocs;
      m0.zero_grads();
      m1.zero_grads();
      const MicroStats s0 = m0.forward(b, Phase::Train), s1 = m1.forward(b, Phase::Train);
      m0.backward(1.0f);
      m1.backward(1.0f);
      expect_close("offload model loss" + tag, {static_cast<float>(s1.loss(cfg.model.moe))},
                   {static_cast<float>(s0.loss(cfg.model.moe))}, kExact);
    }
    const int64_t later = g.memory_stats().allocs - allocs_after_first;
    expect_true("model steps allocate nothing after the first" + tag + " (" +
                    std::to_string(later) + " allocations)",
                later == 0 && allocs_after_first > 0);
    const auto g0 = m0.logical_tensors(true), g1 = m1.logical_tensors(true);
    expect_true("offload model: same tensor list" + tag, g0.size() == g1.size());
    for (size_t i = 0; i < g0.size() && i < g1.size(); ++i)
      expect_close("offload model grad " + g0[i].name + tag, g1[i].values, g0[i].values, kExact);
  }
}

}  // namespace

void test_offload(Backend& g) {
  test_host_arena(g);
  test_prefetch(g);
  test_offload_model(g);
}
