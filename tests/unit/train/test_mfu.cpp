// Model FLOPs per token (PaLM appendix B: 6N + 12 L H Q T) counted by hand for
// small configs, the MFU ratio, and the start-up GEMM measurement.
#include <catch2/catch.hpp>
#include <cmath>

#include "core/backend/backend.h"
#include "core/config/config.h"
#include "core/train/mfu.h"

TEST_CASE("model flops per token: 6 x active parameters + attention", "[train][mfu]") {
  m6::ModelConfig m;
  m.vocab_size = 256, m.max_seq_len = 64, m.d_model = 64, m.n_heads = 4, m.n_layers = 2;
  m.d_ff = 128;
  // Dense GPT-2 block by hand: LN 2d, qkv 3d^2+3d, proj d^2+d, LN 2d, fc1 Fd+F, fc2 dF+d.
  const double d = 64, F = 128;
  const double block = 2 * d + 3 * d * d + 3 * d + d * d + d + 2 * d + F * d + F + d * F + d;
  const double dense_n = 256 * d + 2 * block + 2 * d;  // token embedding (LM head), ln_f; no pos table
  m6::ModelFlops f = m6::model_flops(m, 64);
  CHECK(f.active_params == dense_n);
  CHECK(f.attention_per_token == 12.0 * 2 * 4 * 16 * 64);  // 12 L H Q T
  CHECK(f.per_token == 6 * dense_n + 12.0 * 2 * 4 * 16 * 64);

  // MoE layer 1 with 4 experts, top-2: router E*d, two experts' FFNs active.
  m.moe.every = 2, m.moe.experts = 4, m.moe.top_k = 2;
  const double ffn = F * d + F + d * F + d;
  const double moe_n = dense_n - ffn + 4 * d + 2 * ffn;
  f = m6::model_flops(m, 32);
  CHECK(f.active_params == moe_n);
  CHECK(f.per_token == 6 * moe_n + 12.0 * 2 * 64 * 32);

  // Prototypes: k groups, one expert each.
  m.moe.router = m6::RouterKind::Prototypes, m.moe.prototypes = 2, m.moe.top_k = 1;
  CHECK(m6::model_flops(m, 32).active_params == moe_n);
  m.moe.prototypes = 4;
  CHECK(m6::model_flops(m, 32).active_params == moe_n + 2 * ffn);
}

TEST_CASE("mfu is achieved over peak flops of all ranks", "[train][mfu]") {
  CHECK(m6::mfu(1000, 1e6, 1e10, 1) == Approx(0.1));
  CHECK(m6::mfu(1000, 1e6, 1e10, 4) == Approx(0.025));
  CHECK(std::isnan(m6::mfu(1000, 1e6, 0, 1)));
}

TEST_CASE("peak flops: the config's value, else a measured sgemm", "[train][mfu]") {
  auto be = m6::make_cpu_backend(1);
  m6::Config cfg;
  cfg.train.peak_tflops = 312;
  m6::PeakFlops p = m6::peak_flops(cfg, *be);
  CHECK(p.flops == 312e12);
  CHECK(p.source == "train.peak_tflops");
  int reps = 0;
  const double measured = m6::measure_gemm_flops(*be, 128, 0.01, &reps);
  CHECK(reps >= 3);
  CHECK(measured > 1e7);  // any CPU multiplies 128^3 faster than 10 MFLOP/s
  CHECK(measured < 1e13);
}
