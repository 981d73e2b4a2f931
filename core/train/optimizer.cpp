#include "core/train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/model/offload.h"
#include "core/util/error.h"

namespace m6 {

double lr_at(const OptimConfig& o, int64_t total_steps, int64_t step) {
  if (o.warmup_steps > 0 && step < o.warmup_steps)
    return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup_steps);
  const int64_t decay = o.decay_steps > 0 ? o.decay_steps : total_steps;
  const int64_t span = std::max<int64_t>(1, decay - o.warmup_steps);
  const double progress =
      std::min(1.0, static_cast<double>(step - o.warmup_steps) / static_cast<double>(span));
  return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + std::cos(M_PI * progress));
}

double grad_sum_squares(Backend& be, const std::vector<Chunk>& chunks) {
  double s = 0;
  for (const auto& c : chunks) s += be.sum_squares(c.grad, c.numel);
  return s;
}

HostStaging::HostStaging(Backend& be, const std::vector<Chunk>& chunks, const OffloadConfig& o)
    : be_(be) {
  size_t largest = 0;
  for (const Chunk& c : chunks)
    if (c.adam_on_host) largest = std::max(largest, c.numel);
  if (largest == 0) return;
  floats = std::min(largest, offload_piece_floats(o));
  grad = static_cast<float*>(be_.alloc_host(floats * sizeof(float)));
  param = static_cast<float*>(be_.alloc_host(floats * sizeof(float)));
}

HostStaging::~HostStaging() {
  if (grad) be_.release_host(grad);
  if (param) be_.release_host(param);
}

namespace {

// AdamW of one tensor of an offloaded chunk, in pieces of staging.floats.
void host_step(Backend& be, Chunk& c, const ParamTensor& tn, const Backend::AdamArgs& a,
               HostStaging& staging) {
  for (size_t at = 0; at < tn.numel; at += staging.floats) {
    const size_t off = tn.offset + at, n = std::min(staging.floats, tn.numel - at);
    be.to_host(staging.grad, c.grad + off, n * sizeof(float));
    if (c.master_on_host) {
      host_adamw(c.param + off, staging.grad, c.adam_m + off, c.adam_v + off, n, a);
    } else {
      be.to_host(staging.param, c.param + off, n * sizeof(float));
      host_adamw(staging.param, staging.grad, c.adam_m + off, c.adam_v + off, n, a);
      be.to_device(c.param + off, staging.param, n * sizeof(float));
    }
  }
}

}  // namespace

void adamw_step(Backend& be, std::vector<Chunk>& chunks, const OptimConfig& o, double lr,
                float grad_scale, int64_t t, HostStaging* staging) {
  Backend::AdamArgs a;
  a.lr = static_cast<float>(lr);
  a.beta1 = static_cast<float>(o.beta1);
  a.beta2 = static_cast<float>(o.beta2);
  a.eps = static_cast<float>(o.eps);
  a.grad_scale = grad_scale;
  a.t = t;
  // Device-resident moments: every tensor in one call (one launch on the
  // GPU, multi-tensor AdamW); offloaded ones on the host, piece by piece.
  std::vector<Backend::AdamTensor> ts;
  for (auto& c : chunks) {
    for (const auto& tn : c.tensors) {
      const float wd = tn.decay ? static_cast<float>(o.weight_decay) : 0.0f;
      if (c.adam_on_host) {
        M6_CHECK(staging && staging->floats > 0, "chunk ", c.name,
                 " keeps its Adam moments on the host, but no host staging was given");
        Backend::AdamArgs h = a;
        h.weight_decay = wd;
        host_step(be, c, tn, h, *staging);
        continue;
      }
      ts.push_back({c.param + tn.offset, c.grad + tn.offset, c.adam_m + tn.offset,
                    c.adam_v + tn.offset, static_cast<size_t>(tn.numel), wd});
    }
  }
  a.weight_decay = 0.0f;  // per tensor
  if (!ts.empty()) be.adamw_multi(ts.data(), ts.size(), a);
}

float clip_factor(const OptimConfig& o, double grad_norm) {
  if (o.grad_clip <= 0.0 || !(grad_norm > o.grad_clip)) return 1.0f;
  return static_cast<float>(o.grad_clip / grad_norm);
}

}  // namespace m6
