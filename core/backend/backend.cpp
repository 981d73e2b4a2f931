// The Backend's default ops: the stream-ordered results through the
// synchronous ops (the reference), and no graphs.
#include "core/backend/backend.h"
#include "core/backend/cpu/cpu_moe.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "core/util/error.h"
#include "core/util/splitmix.h"

namespace m6 {

void Backend::sum_to(double* dst, const float* x, size_t n) {
  const double s = sum(x, n);
  to_device(dst, &s, sizeof s);
}

void Backend::router_aux_sums(double* dst, const float* probs, const float* lse,
                              const RouterArgs& a) {
  const size_t E = static_cast<size_t>(a.e), rows = static_cast<size_t>(a.n);
  std::vector<float> p(rows * E), l(rows * static_cast<size_t>(a.groups));
  to_host(p.data(), probs, p.size() * sizeof(float));
  to_host(l.data(), lse, l.size() * sizeof(float));
  std::vector<double> s(E + 1);
  cpu::router_aux_sums(s.data(), p.data(), l.data(), a);
  to_device(dst, s.data(), s.size() * sizeof(double));
}

void Backend::routing_hash(uint64_t* dst, const int32_t* expert, const int32_t* pos, int n,
                           int S) {
  const size_t slots = static_cast<size_t>(n) * static_cast<size_t>(S);
  std::vector<int32_t> e(slots), p(slots);
  to_host(e.data(), expert, slots * sizeof(int32_t));
  to_host(p.data(), pos, slots * sizeof(int32_t));
  uint64_t h = 0;
  for (size_t i = 0; i < slots; ++i) h += routing_slot_hash(i, e[i], p[i] >= 0);
  to_device(dst, &h, sizeof h);
}

void Backend::add_layernorm_fwd_half(float* x_out, float* y, float* mean, float* rstd,
                                     const float* x, const float* delta, const float* w,
                                     const float* b, int N, int d, HalfType t) {
  const size_t n = static_cast<size_t>(N) * static_cast<size_t>(d);
  add(x_out, x, delta, n);
  round_half(x_out, n, t);
  layernorm_fwd(y, mean, rstd, x_out, w, b, N, d);
  round_half(y, n, t);
}

void Backend::gelu_fwd_half(float* y, float* x, size_t n, HalfType t) {
  round_half(x, n, t);
  gelu_fwd(y, x, n);
  round_half(y, n, t);
}

void Backend::gelu_bwd_half(float* dx, const float* x, float* dy, size_t n, HalfType t) {
  round_half(dy, n, t);
  gelu_bwd(dx, x, dy, n);
  round_half(dx, n, t);
}

Backend::AuxLosses Backend::router_aux_combine(const double* sums, const int32_t* demand,
                                               const RouterArgs& a) {
  if (a.n == 0) return {0.0, 0.0};
  const int E = a.e, G = a.groups, Eg = E / G;
  double aux = 0.0;
  for (int e = 0; e < E; e++)
    aux += (static_cast<double>(demand[e]) / (static_cast<double>(a.n) * a.top_k)) *
           (sums[e] / a.n);
  aux *= static_cast<double>(Eg) / G;
  const double z = sums[E] / (static_cast<double>(a.n) * G);
  return {aux, z};
}

// Host-clock marks, in a table shared by the backends that keep this default
// (their ops are synchronous, so the host clock is the device's).
namespace {
struct HostMarks {
  std::vector<std::chrono::steady_clock::time_point> t;
};
HostMarks& host_marks() {
  static thread_local HostMarks m;
  return m;
}
}  // namespace

int Backend::mark() {
  auto& t = host_marks().t;
  t.push_back(std::chrono::steady_clock::now());
  return static_cast<int>(t.size()) - 1;
}
double Backend::mark_ms(int a, int b) {
  const auto& t = host_marks().t;
  M6_CHECK(a >= 0 && b >= 0 && static_cast<size_t>(std::max(a, b)) < t.size(), "mark_ms: marks ",
           a, ", ", b, " are not recorded (", t.size(), " marks)");
  return std::chrono::duration<double, std::milli>(t[b] - t[a]).count();
}
void Backend::marks_reset() { host_marks().t.clear(); }

void Backend::capture_begin() {
  throw Error(fmt("backend ", name(), " has no graphs (train.graphs: off, or a CUDA device)"));
}
std::unique_ptr<Backend::Graph> Backend::capture_end() {
  throw Error(fmt("backend ", name(), " has no graphs"));
}
void Backend::graph_launch(Graph&) { throw Error(fmt("backend ", name(), " has no graphs")); }

}  // namespace m6
