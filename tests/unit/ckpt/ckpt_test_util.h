// Shared fixtures of the checkpoint tests: a small MoE config, a model of one
// rank's share with distinct values in weights and both Adam moments, and
// host snapshots of every tensor by global name for comparisons.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "core/ckpt/checkpoint.h"
#include "core/config/config.h"
#include "core/model/model.h"

namespace m6::test {

namespace fs = std::filesystem;

// A fresh directory per test case, removed at the end of the case.
struct TempDir {
  fs::path dir;
  explicit TempDir(const std::string& tag) {
    dir = fs::temp_directory_path() / ("m6_ckpt_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string str() const { return dir.string(); }
};

// 2 layers (layer 1 MoE with 4 experts), d 8: every kind of chunk, small.
inline Config small_config(int ep) {
  Config c;
  c.model.vocab_size = 32;
  c.model.max_seq_len = 8;
  c.model.d_model = 8;
  c.model.n_heads = 2;
  c.model.n_layers = 2;
  c.model.d_ff = 16;
  c.model.moe.every = 2;
  c.model.moe.experts = 4;
  c.model.moe.top_k = 2;
  c.train.seq_len = 8;
  c.train.micro_batch = 2;
  c.train.global_batch = 4;
  c.train.threads = 1;
  c.parallel.ep = ep;
  c.checkpoint.keep = 100;
  c.data.train = "unused";
  c.data.val = "unused";
  return c;
}

inline ExpertRange experts_of(const Config& c, int ep_rank) {
  const int per = c.model.moe.experts / c.parallel.ep;
  return {ep_rank * per, per};
}

// Weights from `seed`; Adam m = 0.5 * w + 1, v = w * w + 2 (distinct per part).
inline void fill_model(Model& model, uint64_t seed) {
  model.init_params(seed);
  Backend& be = model.backend();
  for (auto& c : model.chunks()) {
    std::vector<float> w(c.numel), m(c.numel), v(c.numel);
    be.to_host(w.data(), c.param, c.numel * sizeof(float));
    for (size_t i = 0; i < c.numel; ++i) m[i] = 0.5f * w[i] + 1.0f, v[i] = w[i] * w[i] + 2.0f;
    be.to_device(c.adam_m, m.data(), c.numel * sizeof(float));
    be.to_device(c.adam_v, v.data(), c.numel * sizeof(float));
  }
}

// name -> values of one part (0 weights, 1 m, 2 v) of every tensor the model holds.
inline std::map<std::string, std::vector<float>> snapshot(Model& model, int part) {
  std::map<std::string, std::vector<float>> out;
  Backend& be = model.backend();
  for (const auto& c : model.chunks()) {
    std::vector<float> h(c.numel);
    const float* src = part == 0 ? c.param : part == 1 ? c.adam_m : c.adam_v;
    be.to_host(h.data(), src, c.numel * sizeof(float));
    for (const auto& t : c.tensors)
      out[t.name] = std::vector<float>(h.begin() + t.offset, h.begin() + t.offset + t.numel);
  }
  return out;
}

}  // namespace m6::test
