// What a training step needs to run without host reads (backend.h, "stream-
// ordered results" and "graphs"), on CudaBackend against CpuBackend:
//  - sum_to, router_aux_sums and routing_hash leave their results in device
//    memory, equal to the CPU reference's (routing_hash bit for bit, sum_to
//    bit for bit with the CUDA sum()), and none of them reads to the host;
//  - bad indices (crossentropy targets, moe_assign experts) are thrown by
//    check_errors() / sync() with the CPU's message, not at the op;
//  - small to_device copies (the pinned staging ring) keep their semantics
//    while the stream is busy and the ring wraps;
//  - a captured graph replays gemm + add_bias + gelu + sum_to with the
//    inputs' current contents, as the eager ops compute them, without a host
//    read during the capture; a host read inside a capture throws, the
//    capture returns no graph, and the next capture works;
//  - the model's graph path (train.graphs): a dense model trained from
//    replayed micro-batches equals the eager one bit for bit.
// See test_cuda_ops.cpp for the conventions. With --cpu-vs-cpu the "GPU" is a
// second CpuBackend in the recording backend: graphs as closures, errors at
// the op, the CUDA-only checks (read counts, staging) skipped.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "core/backend/cuda_factory.h"
#include "core/model/model.h"
#include "core/train/optimizer.h"
#include "core/util/splitmix.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/tiny_model.h"

using namespace m6;
using namespace m6::cuda_test;

namespace {

bool is_cuda(const Backend& g) { return g.name().rfind("cuda", 0) == 0; }

double read_double(Backend& be, const double* p) {
  double v = 0.0;
  be.to_host(&v, p, sizeof v);
  return v;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_near(const std::string& what, double got, double want, double rel, double abs) {
  const bool ok = std::fabs(got - want) <= abs + rel * std::fabs(want);
  expect_true(what + ": " + std::to_string(got) + " vs " + std::to_string(want), ok);
}

void expect_bits(const std::string& what, double got, double want) {
  expect_true(what + " (bitwise)", std::memcmp(&got, &want, sizeof got) == 0);
}

}  // namespace

// sum_to, router_aux_sums, routing_hash against the CPU reference, and the
// host-read count of the CUDA backend around them. The sums add floats in
// double in another order than the CPU: a relative 1e-10 is far above their
// rounding (about 1e-13 here) and far below any wrong term.
void test_stream_results(Backend& c, Backend& g) {
  double* dc = static_cast<double*>(c.alloc(16 * sizeof(double)));
  double* dg = static_cast<double*>(g.alloc(16 * sizeof(double)));
  for (size_t n : {size_t{0}, size_t{1}, size_t{4097}, size_t{300001}}) {
    Twin t{c, g};
    auto x = t.f32(randn(n + 1));
    c.sum_to(dc, x.fc(), n);
    g.sum_to(dg, x.fg(), n);
    const double want = read_double(c, dc), got = read_double(g, dg);
    const std::string s = " n=" + std::to_string(n);
    expect_near("sum_to vs cpu" + s, got, want, 1e-10, 1e-10);
    expect_bits("sum_to = sum()" + s, got, g.sum(x.fg(), n));
  }
  struct AuxCase {
    int n, e, groups;
  };
  for (AuxCase k : {AuxCase{257, 8, 1}, AuxCase{33, 6, 2}, AuxCase{0, 4, 1}}) {
    Twin t{c, g};
    RouterArgs a;
    a.n = k.n, a.e = k.e, a.groups = k.groups, a.top_k = 1;
    auto probs = t.f32(randn(static_cast<size_t>(k.n) * k.e + 1));
    auto lse = t.f32(randn(static_cast<size_t>(k.n) * k.groups + 1, 3.0f));
    const std::vector<double> garbage(16, 7.0);  // every sum must be overwritten
    c.to_device(dc, garbage.data(), 16 * sizeof(double));
    g.to_device(dg, garbage.data(), 16 * sizeof(double));
    c.router_aux_sums(dc, probs.fc(), lse.fc(), a);
    g.router_aux_sums(dg, probs.fg(), lse.fg(), a);
    std::vector<double> hc(static_cast<size_t>(k.e) + 1), hg(hc.size());
    c.to_host(hc.data(), dc, hc.size() * sizeof(double));
    g.to_host(hg.data(), dg, hg.size() * sizeof(double));
    for (size_t i = 0; i < hc.size(); ++i)
      expect_near("router_aux_sums n=" + std::to_string(k.n) + " [" + std::to_string(i) + "]",
                  hg[i], hc[i], 1e-10, 1e-10);
  }
  for (auto [n, S] : {std::pair{0, 2}, std::pair{1, 1}, std::pair{1000, 2}, std::pair{150001, 2}}) {
    Twin t{c, g};
    const size_t slots = static_cast<size_t>(n) * S;
    std::vector<int32_t> ex = randi(slots + 1, 8), pos = randi(slots + 1, 5);
    for (auto& p : pos) p -= 1;  // -1: dropped
    auto e = t.i(ex), p = t.i(pos);
    auto* hc = static_cast<uint64_t*>(c.alloc(8));
    auto* hg = static_cast<uint64_t*>(g.alloc(8));
    c.routing_hash(hc, e.ic(), p.ic(), n, S);
    g.routing_hash(hg, e.ig(), p.ig(), n, S);
    uint64_t vc = 0, vg = 0, want = 0;
    c.to_host(&vc, hc, 8);
    g.to_host(&vg, hg, 8);
    for (size_t i = 0; i < slots; ++i) want += routing_slot_hash(i, ex[i], pos[i] >= 0);
    const std::string s = " n=" + std::to_string(n) + " S=" + std::to_string(S);
    expect_true("routing_hash = cpu" + s + " (bitwise)", vg == vc);
    expect_true("routing_hash = sum of routing_slot_hash" + s, vg == want);
    c.release(hc);
    g.release(hg);
  }
  // Host reads: none for the stream-ordered ops and the staged copies, one
  // for each read.
  const int64_t r0 = g.host_reads();
  if (is_cuda(g)) expect_true("cuda backend counts host reads", r0 >= 0);
  if (r0 >= 0) {
    Twin t{c, g};
    auto x = t.f32(randn(5000));
    auto ex = t.i(randi(64, 4)), pos = t.i(randi(64, 3));
    RouterArgs a;
    a.n = 16, a.e = 4, a.top_k = 1;
    const int64_t r1 = g.host_reads();
    const std::vector<float> hx = randn(5000);
    g.to_device(x.fg(), hx.data(), hx.size() * 4);
    g.sum_to(dg, x.fg(), 5000);
    g.router_aux_sums(dg + 1, x.fg(), x.fg(), a);
    g.routing_hash(reinterpret_cast<uint64_t*>(dg + 8), ex.ig(), pos.ig(), 32, 2);
    g.zero(x.fg(), 4 * 100);
    expect_true("no host read: to_device, sum_to, router_aux_sums, routing_hash, zero",
                g.host_reads() == r1);
    double v = 0.0;
    g.to_host(&v, dg, sizeof v);
    expect_true("to_host: one host read", g.host_reads() == r1 + 1);
    (void)g.sum(x.fg(), 5000);
    expect_true("sum: one host read", g.host_reads() == r1 + 2);
    g.sync();
    expect_true("sync: one host read", g.host_reads() == r1 + 3);
    g.check_errors();
    expect_true("check_errors: one host read", g.host_reads() == r1 + 4);
  } else {
    std::printf("info %s does not count host reads\n", g.name().c_str());
  }
  c.release(dc);
  g.release(dg);
}

// Bad indices: the CPU throws at the op; CUDA records them on the device and
// throws the same message at check_errors() or sync().
void test_deferred_errors(Backend& c, Backend& g) {
  const bool deferred = is_cuda(g);
  Twin t{c, g};
  auto targets = t.i({0, 5}), logits = t.f32(randn(2 * 4)), loss = t.zeros_f(2);
  auto targets8 = t.i({9, 0}), logits8 = t.f32(randn(2 * 8)), loss8 = t.zeros_f(2);
  // token 1 slot 1 (flat index 3) names expert 7 of E = 2
  auto ex = t.i({0, 1, 1, 7}), pos = t.i({0, 0, 0, 0}), cnt = t.i({0, 0}), dem = t.i({0, 0});
  // Several bad indices in one launch: the message names the CPU's first
  // whatever order the GPU threads ran in -- row 1 of rows 1, 2, 3; and
  // token 1 slot 0 (slot-major first) before token 0 slot 1 (token-major first).
  auto targets3 = t.i({0, 6, 5, 9}), logits3 = t.f32(randn(4 * 4)), loss3 = t.zeros_f(4);
  auto ex2 = t.i({0, 9, 8, 1});
  struct Case {
    const char* name;
    std::function<void(Backend&, bool)> op;  // bool: the CPU side's buffers
  };
  const Case cases[] = {
      {"crossentropy_fwd",
       [&](Backend& be, bool cpu) {
         be.crossentropy_fwd(cpu ? loss.fc() : loss.fg(), cpu ? logits.fc() : logits.fg(),
                             cpu ? logits.fc() : logits.fg(), cpu ? targets.ic() : targets.ig(),
                             2, 4);
       }},
      {"crossentropy_bwd",
       [&](Backend& be, bool cpu) {
         be.crossentropy_bwd(cpu ? logits.fc() : logits.fg(), cpu ? logits.fc() : logits.fg(),
                             cpu ? targets.ic() : targets.ig(), 0.5f, 2, 4);
       }},
      {"moe_assign",
       [&](Backend& be, bool cpu) {
         be.moe_assign(cpu ? pos.ic() : pos.ig(), cpu ? cnt.ic() : cnt.ig(),
                       cpu ? dem.ic() : dem.ig(), cpu ? ex.ic() : ex.ig(), 2, 2, 2, 0);
       }},
      {"crossentropy_fwd, three bad rows",
       [&](Backend& be, bool cpu) {
         be.crossentropy_fwd(cpu ? loss3.fc() : loss3.fg(), cpu ? logits3.fc() : logits3.fg(),
                             cpu ? logits3.fc() : logits3.fg(), cpu ? targets3.ic() : targets3.ig(),
                             4, 4);
       }},
      {"moe_assign, two bad experts",
       [&](Backend& be, bool cpu) {
         be.moe_assign(cpu ? pos.ic() : pos.ig(), cpu ? cnt.ic() : cnt.ig(),
                       cpu ? dem.ic() : dem.ig(), cpu ? ex2.ic() : ex2.ig(), 2, 2, 2, 0);
       }},
  };
  for (const Case& k : cases) {
    const std::string want = error_of([&] { k.op(c, true); });
    expect_true(std::string(k.name) + ": the cpu throws at the op", !want.empty());
    const std::string at_op = error_of([&] { k.op(g, false); });
    const std::string at_check = error_of([&] { g.check_errors(); });
    if (deferred) {
      expect_true(std::string(k.name) + ": no throw at the op (deferred)", at_op.empty());
      expect_true(std::string(k.name) + ": check_errors throws \"" + at_check +
                      "\", the cpu's message",
                  at_check == want);
      expect_true(std::string(k.name) + ": reported once",
                  error_of([&] { g.check_errors(); }).empty());
      k.op(g, false);
      expect_true(std::string(k.name) + ": sync() throws it too",
                  error_of([&] { g.sync(); }) == want);
    } else {
      expect_true(std::string(k.name) + ": throws at the op with the cpu's message",
                  at_op == want);
    }
  }
  if (deferred) {
    // The first error of an op kind is kept, with the limit of its launch:
    // a later bad call with another vocabulary does not replace it.
    const std::string first = error_of([&] {
      c.crossentropy_fwd(loss.fc(), logits.fc(), logits.fc(), targets.ic(), 2, 4);
    });
    g.crossentropy_fwd(loss.fg(), logits.fg(), logits.fg(), targets.ig(), 2, 4);
    g.crossentropy_fwd(loss8.fg(), logits8.fg(), logits8.fg(), targets8.ig(), 2, 8);
    const std::string got = error_of([&] { g.check_errors(); });
    expect_true("deferred errors keep the first (\"" + got + "\")", got == first);
    expect_true("a second check_errors does not throw",
                error_of([&] { g.check_errors(); }).empty());
    // Until the report, the slot of a bad expert is dropped (pos -1), so
    // that the ops after moe_assign never index a block with it.
    const std::vector<int32_t> stale = {5, 5, 5, 5};
    g.to_device(pos.ig(), stale.data(), 16);
    g.moe_assign(pos.ig(), cnt.ig(), dem.ig(), ex.ig(), 2, 2, 2, 0);
    std::vector<int32_t> hp(4);
    g.to_host(hp.data(), pos.ig(), 16);
    expect_true("moe_assign drops the slot of a bad expert (pos -1)", hp[3] == -1);
    // slot-major: token 0 slot 0 -> expert 0 row 0, token 1 slot 0 -> expert
    // 1 row 0, token 0 slot 1 -> expert 1 row 1
    expect_true("moe_assign keeps the valid slots (pos 0, 1, 0)",
                hp[0] == 0 && hp[1] == 1 && hp[2] == 0);
    expect_true("moe_assign's error is reported", !error_of([&] { g.check_errors(); }).empty());
  }
}

// to_device through the staging ring: 10 MiB in 64 KiB copies (the ring,
// 4 MiB, wraps twice) from one host buffer rewritten between the calls, while
// the stream is held busy so that the first copies are still pending when the
// ring wraps; then one copy above the staging limit, and a small one into the
// pinned host arena, which the host reads at once.
void test_staged_copies(Backend& g) {
  if (!is_cuda(g)) {
    std::printf("info staged copies: %s is not the CUDA backend, skipped\n", g.name().c_str());
    return;
  }
  const size_t chunk = 64 << 10, count = 160, words = chunk / 4;
  auto* d = static_cast<uint32_t*>(g.alloc(chunk * count));
  std::vector<uint32_t> h(words);
  const int64_t r0 = g.host_reads();
  cuda_stall_stream(g, 0.2);
  for (size_t i = 0; i < count; ++i) {
    for (size_t j = 0; j < words; ++j) h[j] = static_cast<uint32_t>(i * 2654435761u + j);
    g.to_device(d + i * words, h.data(), chunk);
  }
  expect_true("staged to_device: no host read", g.host_reads() == r0);
  std::vector<uint32_t> back(words * count);
  g.to_host(back.data(), d, chunk * count);
  size_t wrong = 0;
  for (size_t i = 0; i < count; ++i)
    for (size_t j = 0; j < words; ++j)
      wrong += back[i * words + j] != static_cast<uint32_t>(i * 2654435761u + j);
  expect_true("staged to_device: 160 copies of 64 KiB through a wrapping ring, " +
                  std::to_string(wrong) + " words wrong",
              wrong == 0);
  // Above the staging limit (2 MiB): the synchronous path.
  std::vector<uint32_t> big(words * 32);
  for (size_t j = 0; j < big.size(); ++j) big[j] = static_cast<uint32_t>(j * 7 + 1);
  g.to_device(d, big.data(), big.size() * 4);
  std::vector<uint32_t> big_back(big.size());
  g.to_host(big_back.data(), d, big.size() * 4);
  expect_true("to_device of 2 MiB", big_back == big);
  // Into the pinned host arena: visible to the host when to_device returns.
  auto* hp = static_cast<uint32_t*>(g.alloc_host(4096));
  cuda_stall_stream(g, 0.05);
  for (size_t j = 0; j < 1024; ++j) h[j] = static_cast<uint32_t>(j + 11);
  g.to_device(hp, h.data(), 4096);
  expect_true("to_device into the pinned host arena is complete on return",
              std::memcmp(hp, h.data(), 4096) == 0);
  g.release_host(hp);
  g.release(d);
}

// A short captured sequence replayed twice, against the same ops run eagerly
// (same backend) and against the CPU. Half mode: the inputs are half values
// (Twin::f) and the GEMM runs on the backend's half path, so the CPU
// comparison allows gemm_abs (test_cuda_ops.cpp's test_gemm), twice for the
// GELU (slope below 1.13) and MN times for the sum.
void test_graphs(Backend& c, Backend& g) {
  if (!g.graphs_available()) {
    std::printf("info graphs: %s has none, skipped\n", g.name().c_str());
    return;
  }
  const int M = 33, K = 64, N = 40;
  const size_t MN = static_cast<size_t>(M) * N;
  Twin t{c, g};
  auto half_values = [](std::vector<float> v) {
    if (g_half)
      for (float& e : v) e = round_half(e, *g_half);
    return v;
  };
  std::vector<float> hx = half_values(randn(static_cast<size_t>(M) * K));
  const std::vector<float> hw = half_values(randn(static_cast<size_t>(N) * K, 0.2f));
  auto x = t.f32(hx), w = t.f32(hw), b = t.f32(randn(N));
  auto y = t.zeros_f(MN), act = t.zeros_f(MN), y2 = t.zeros_f(MN), act2 = t.zeros_f(MN);
  double* sum_c = static_cast<double*>(c.alloc(sizeof(double)));
  double* sum_g = static_cast<double*>(g.alloc(2 * sizeof(double)));  // [graph, eager]
  // y[M,N] = x[M,K] w[N,K]^T + b; act = gelu(y); *sum = sum(act)
  auto run = [&](Backend& be, const float* xx, const float* ww, const float* bb, float* yy,
                 float* aa, double* ss) {
    GemmArgs a;
    a.trans_b = Trans::Yes;
    a.m = M, a.n = N, a.k = K;
    a.a = xx, a.lda = K, a.b = ww, a.ldb = K, a.c = yy, a.ldc = N;
    be.gemm(a);
    be.add_bias(yy, bb, M, N);
    be.gelu_fwd(aa, yy, MN);
    be.sum_to(ss, aa, MN);
  };
  const int64_t r0 = g.host_reads();
  g.capture_begin();
  run(g, x.fg(), w.fg(), b.fg(), y.fg(), act.fg(), sum_g);
  std::unique_ptr<Backend::Graph> graph = g.capture_end();
  expect_true("graph: capture_end returns a graph", graph != nullptr);
  expect_true("graph: no host read during the capture", g.host_reads() == r0);
  std::vector<float> h(MN);
  g.to_host(h.data(), act.fg(), MN * 4);
  bool untouched = true;
  for (float v : h) untouched = untouched && v == 0.0f;
  expect_true("graph: the capture ran nothing (output still zero)", untouched);
  if (!graph) return;
  for (int round = 0; round < 2; ++round) {
    const std::string s = " launch " + std::to_string(round + 1);
    if (round == 1) {  // new input contents, same buffer: the replay reads them
      hx = half_values(randn(hx.size()));
      c.to_device(x.fc(), hx.data(), hx.size() * 4);
      g.to_device(x.fg(), hx.data(), hx.size() * 4);
    }
    g.graph_launch(*graph);
    run(g, x.fg(), w.fg(), b.fg(), y2.fg(), act2.fg(), sum_g + 1);
    run(c, x.fc(), w.fc(), b.fc(), y.fc(), act.fc(), sum_c);
    std::vector<float> ga(MN), ea(MN);
    g.to_host(ga.data(), act.fg(), MN * 4);
    g.to_host(ea.data(), act2.fg(), MN * 4);
    const double ga_abs = gemm_abs(K, hx, hw);
    expect_close("graph: gelu output vs eager" + s, ga, ea, kGemm);
    t.check_f32("graph: gelu output vs cpu" + s, act, kGemm, 2 * ga_abs);
    t.check_f32("graph: pre-activation vs cpu" + s, y, kGemm, ga_abs);
    double sg[2] = {0, 0};
    g.to_host(sg, sum_g, sizeof sg);
    expect_near("graph: sum_to vs eager" + s, sg[0], sg[1], 1e-6, 1e-6);
    expect_near("graph: sum_to vs cpu" + s, sg[0], read_double(c, sum_c), 1e-4,
                1e-4 + 2.0 * MN * ga_abs);
  }
  // A host read, a host-to-device copy, an allocation or a sync inside a
  // capture throws; the capture returns no graph and ran nothing.
  std::vector<float> before(MN), after(MN);
  g.to_host(before.data(), act.fg(), MN * 4);
  const std::vector<float> hsmall(16, 1.0f);
  const std::pair<const char*, std::function<void()>> bad_ops[] = {
      {"to_host", [&] { g.to_host(h.data(), act.fg(), 64); }},
      {"to_device", [&] { g.to_device(act.fg(), hsmall.data(), 64); }},
      {"alloc", [&] { g.release(g.alloc(64)); }},
      {"sync", [&] { g.sync(); }},
      {"sum", [&] { (void)g.sum(act.fg(), MN); }},
  };
  for (const auto& [name, op] : bad_ops) {
    const int64_t r1 = g.host_reads();
    g.capture_begin();
    g.scale(act.fg(), 2.0f, MN);
    const std::string err = error_of(op);
    std::unique_ptr<Backend::Graph> failed = g.capture_end();
    expect_true(std::string("graph: ") + name + " inside a capture throws (" + err + ")",
                !err.empty());
    if (std::string(name) == "to_device" && is_cuda(g))
      expect_true("graph: the to_device message names the copy",
                  err.find("host-to-device copy inside a graph capture") != std::string::npos);
    expect_true(std::string("graph: capture_end after the failed ") + name + " returns nullptr",
                failed == nullptr);
    expect_true(std::string("graph: no host read counted for the refused ") + name,
                g.host_reads() == r1);
  }
  g.to_host(after.data(), act.fg(), MN * 4);
  expect_true("graph: the abandoned captures ran nothing", before == after);
  // The next capture works.
  g.capture_begin();
  g.scale(act.fg(), 3.0f, MN);
  std::unique_ptr<Backend::Graph> again = g.capture_end();
  expect_true("graph: a capture after the failed ones works", again != nullptr);
  if (again) {
    g.graph_launch(*again);
    g.to_host(after.data(), act.fg(), MN * 4);
    bool tripled = true;
    for (size_t i = 0; i < MN; ++i) tripled = tripled && after[i] == before[i] * 3.0f;
    expect_true("graph: its launch scales the output by 3", tripled);
  }
  c.release(sum_c);
  g.release(sum_g);
}

// The model's graph path on the GPU (train.graphs): a dense model trained
// with its micro-batches replayed from a CUDA graph against the same model
// run eagerly on the same device, 4 steps of 2 micro-batches: losses and
// weights bit-identical (the same kernels with the same arguments).
void test_model_graphs(Backend& g) {
  if (!g.graphs_available()) {
    std::printf("info model graphs: %s has none, skipped\n", g.name().c_str());
    return;
  }
  Config on = tiny_moe_config(2, 0, 21), off = on;
  on.train.global_batch = off.train.global_batch = 2 * on.train.micro_batch;
  on.train.graphs = GraphMode::On;
  off.train.graphs = GraphMode::Off;
  Model m_on(on, g, ExpertRange{0, 0}), m_off(off, g, ExpertRange{0, 0});
  expect_true("model graphs: on for a dense model", m_on.graphs_on());
  m_on.init_params(on.train.seed);
  m_off.init_params(off.train.seed);
  std::vector<float> ce_on, ce_off;
  for (int s = 0; s < 4; ++s) {
    for (Model* m : {&m_on, &m_off}) {
      m->zero_grads();
      MicroStats st[2];
      for (int a = 0; a < 2; ++a)
        st[a] = m->train_micro(test::random_batch(on, 10 * s + a), 0.5f, a);
      m->collect_stats(st, 2);
      for (const auto& x : st) (m == &m_on ? ce_on : ce_off).push_back(static_cast<float>(x.ce_sum));
      adamw_step(g, m->chunks(), on.optim, 1e-2, 1.0f, s + 1);
    }
  }
  expect_true("model graphs: " + std::to_string(m_on.graph_replays()) + " replays (7 expected)",
              m_on.graph_replays() == 7);
  expect_close("model graphs: losses, replayed vs eager", ce_on, ce_off, kExact);
  for (size_t i = 0; i < m_on.chunks().size(); ++i) {
    const Chunk& a = m_on.chunks()[i];
    const Chunk& b = m_off.chunks()[i];
    std::vector<float> pa(a.numel), pb(b.numel);
    g.to_host(pa.data(), a.param, a.numel * sizeof(float));
    g.to_host(pb.data(), b.param, b.numel * sizeof(float));
    expect_close("model graphs: weights of " + a.name + " after 4 steps", pa, pb, kExact);
  }
}
