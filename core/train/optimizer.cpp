#include "core/train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <vector>

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

void adamw_step(Backend& be, std::vector<Chunk>& chunks, const OptimConfig& o, double lr,
                float grad_scale, int64_t t) {
  Backend::AdamArgs a;
  a.lr = static_cast<float>(lr);
  a.beta1 = static_cast<float>(o.beta1);
  a.beta2 = static_cast<float>(o.beta2);
  a.eps = static_cast<float>(o.eps);
  a.grad_scale = grad_scale;
  a.t = t;
  a.weight_decay = 0.0f;  // per tensor below
  // Every tensor in one call: one launch on the GPU (multi-tensor AdamW).
  std::vector<Backend::AdamTensor> ts;
  for (auto& c : chunks)
    for (const auto& tn : c.tensors)
      ts.push_back({c.param + tn.offset, c.grad + tn.offset, c.adam_m + tn.offset,
                    c.adam_v + tn.offset, static_cast<size_t>(tn.numel),
                    tn.decay ? static_cast<float>(o.weight_decay) : 0.0f});
  be.adamw_multi(ts.data(), ts.size(), a);
}

float clip_factor(const OptimConfig& o, double grad_norm) {
  if (o.grad_clip <= 0.0 || !(grad_norm > o.grad_clip)) return 1.0f;
  return static_cast<float>(o.grad_clip / grad_norm);
}

}  // namespace m6
