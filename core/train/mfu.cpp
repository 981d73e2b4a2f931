#include "core/train/mfu.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "core/model/params.h"
#include "core/util/error.h"

namespace m6 {

ModelFlops model_flops(const ModelConfig& m, int seq_len) {
  ModelFlops f;
  const ParamCounts pc = count_params(m);
  f.active_params = static_cast<double>(pc.active_per_token) -
                    static_cast<double>(m.max_seq_len) * static_cast<double>(m.d_model);
  // H * Q = d_model
  f.attention_per_token = 12.0 * m.n_layers * static_cast<double>(m.d_model) * seq_len;
  f.per_token = 6.0 * f.active_params + f.attention_per_token;
  return f;
}

double measure_gemm_flops(Backend& be, int n, double min_seconds, int* reps) {
  const size_t bytes = static_cast<size_t>(n) * n * sizeof(float);
  std::vector<float> host(static_cast<size_t>(n) * n);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>((i * 7919) % 17) / 17.0f;
  float* a = static_cast<float*>(be.alloc(bytes));
  float* b = static_cast<float*>(be.alloc(bytes));
  float* c = static_cast<float*>(be.alloc(bytes));
  be.to_device(a, host.data(), bytes);
  be.to_device(b, host.data(), bytes);
  GemmArgs g;
  g.m = g.n = g.k = n;
  g.a = a, g.b = b, g.c = c;
  using Clock = std::chrono::steady_clock;
  be.gemm(g);  // warm-up: thread pools, library initialisation
  be.sync();
  double best = 0, total = 0;
  int count = 0;
  while (total < min_seconds || count < 3) {
    const auto t0 = Clock::now();
    be.gemm(g);
    be.sync();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    total += s;
    ++count;
    if (s > 0) best = std::max(best, 2.0 * n * n * static_cast<double>(n) / s);
  }
  be.release(a);
  be.release(b);
  be.release(c);
  if (reps) *reps = count;
  return best;
}

PeakFlops peak_flops(const Config& cfg, Backend& be) {
  PeakFlops p;
  if (cfg.train.peak_tflops > 0) {
    p.flops = cfg.train.peak_tflops * 1e12;
    p.source = "train.peak_tflops";
    return p;
  }
  const bool gpu = be.name().rfind("cuda", 0) == 0;
  const int n = gpu ? 4096 : 512;
  int reps = 0;
  p.flops = measure_gemm_flops(be, n, 0.1, &reps);
  p.source = fmt("measured: sgemm ", n, "^3 on ", be.name(), ", best of ", reps);
  return p;
}

std::string describe_flops(const ModelFlops& f, double peak_per_rank, const std::string& source) {
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "%.2f MFLOP per token (6 x %.0f active parameters + attention %.2f MFLOP), peak "
                "%.1f GFLOP/s per rank (%s)",
                f.per_token / 1e6, f.active_params, f.attention_per_token / 1e6,
                peak_per_rank / 1e9, source.c_str());
  return buf;
}

double mfu(double tokens_per_s, double flops_per_token, double peak_flops_per_rank, int world) {
  const double peak = peak_flops_per_rank * world;
  if (!(peak > 0)) return std::nan("");
  return tokens_per_s * flops_per_token / peak;
}

}  // namespace m6
