// Model FLOPs utilisation (MFU, PaLM appendix B): the FLOPs the model needs per
// training token, times tokens per second, over the peak FLOP/s of the
// devices. Model FLOPs count the matrix products of forward and backward of
// the architecture -- not what the kernels happened to do (recomputation,
// dropped expert slots and padding do not change them):
//   flops_per_token = 6 N + 12 L H Q T
// N the parameters one token uses (token embedding -- the tied LM head --
// attention, LayerNorms, routers, the dense FFNs and the top_k (or k
// prototype) experts of each MoE layer; not the position table, a lookup),
// L layers, H heads, Q = d_model / H, T = train.seq_len (the attention
// scores and their weighted sum, every key counted as PaLM does).
#pragma once
#include <string>

#include "core/backend/backend.h"
#include "core/config/config.h"

namespace m6 {

struct ModelFlops {
  double active_params = 0;  // N
  double per_token = 0;      // 6 N + 12 L H Q T
  double attention_per_token = 0;  // 12 L H Q T
};
ModelFlops model_flops(const ModelConfig& m, int seq_len);

// The peak one rank's device is measured against.
struct PeakFlops {
  double flops = 0;  // FLOP/s of one rank
  std::string source;  // "train.peak_tflops" or "measured: sgemm 512^3 on cpu(2 threads), best of 9"
};

// Best FLOP/s of a square fp32 GEMM of side n on the backend, timed over at
// least min_seconds (after one warm-up product). A short start-up measurement:
// a lower bound of what the backend's GEMM reaches, not a vendor figure.
double measure_gemm_flops(Backend& be, int n, double min_seconds, int* reps = nullptr);

// train.peak_tflops when set, else measure_gemm_flops over 0.1 s (n = 512 on
// the CPU, 4096 on a GPU).
PeakFlops peak_flops(const Config& cfg, Backend& be);

// "7.33 MFLOP per token (6 x 1090560 active parameters + attention 0.79
// MFLOP), peak 123.6 GFLOP/s per rank (measured: ...)"
std::string describe_flops(const ModelFlops& f, double peak_per_rank, const std::string& source);

// tokens_per_s * flops_per_token / (peak_flops_per_rank * world)
double mfu(double tokens_per_s, double flops_per_token, double peak_flops_per_rank, int world);

}  // namespace m6
