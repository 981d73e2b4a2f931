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

std::vector<double> grad_squares(Backend& be, const std::vector<Chunk>& chunks) {
  std::vector<const float*> xs;
  std::vector<size_t> ns;
  for (const auto& c : chunks) xs.push_back(c.grad), ns.push_back(c.numel);
  std::vector<double> out(chunks.size());
  be.sum_squares_multi(out.data(), xs.data(), ns.data(), chunks.size());
  return out;
}

HostStaging::HostStaging(Backend& be, const std::vector<Chunk>& chunks, const OffloadConfig& o)
    : be_(be) {
  size_t largest = 0;
  for (const Chunk& c : chunks)
    if (c.adam_on_host) largest = std::max(largest, c.numel);
  if (largest == 0) return;
  floats = std::min(largest, offload_piece_floats(o));
  for (int s = 0; s < 2; ++s) {
    grad[s] = static_cast<float*>(be_.alloc_host(floats * sizeof(float)));
    param[s] = static_cast<float*>(be_.alloc_host(floats * sizeof(float)));
  }
}

HostStaging::~HostStaging() {
  for (int s = 0; s < 2; ++s) {
    if (grad[s]) be_.release_host(grad[s]);
    if (param[s]) be_.release_host(param[s]);
  }
}

namespace {

// One piece of an offloaded tensor: elements [off, off + n) of chunk c.
struct HostPiece {
  Chunk* c;
  size_t off, n;
  Backend::AdamArgs a;
};

constexpr int kStagingSlot = 2;  // Backend copy slots 2 and 3 (0, 1: the weight window)

// AdamW of the offloaded pieces, double-buffered through the two staging
// sets: set k % 2 (copy slot 2 + k % 2) holds piece k.
void host_steps(Backend& be, const std::vector<HostPiece>& pieces, HostStaging& staging) {
  auto fetch = [&](size_t k) {  // queue piece k's download
    const HostPiece& p = pieces[k];
    const int s = static_cast<int>(k % 2);
    be.copy_async(kStagingSlot + s, staging.grad[s], p.c->grad + p.off, p.n * sizeof(float));
    if (!p.c->master_on_host)
      be.copy_async(kStagingSlot + s, staging.param[s], p.c->param + p.off, p.n * sizeof(float));
  };
  if (!pieces.empty()) fetch(0);
  for (size_t k = 0; k < pieces.size(); ++k) {
    const HostPiece& p = pieces[k];
    const int s = static_cast<int>(k % 2);
    // The next piece reuses the other set, whose upload (queued earlier on
    // the same in-order copy stream) is ahead of this download.
    if (k + 1 < pieces.size()) fetch(k + 1);
    be.copy_async_sync(kStagingSlot + s);
    Chunk& c = *p.c;
    if (c.master_on_host) {
      host_adamw(c.param + p.off, staging.grad[s], c.adam_m + p.off, c.adam_v + p.off, p.n, p.a);
    } else {
      host_adamw(staging.param[s], staging.grad[s], c.adam_m + p.off, c.adam_v + p.off, p.n, p.a);
      be.copy_async(kStagingSlot + s, c.param + p.off, staging.param[s], p.n * sizeof(float));
    }
  }
  // Every upload done (and ordered before the next kernels) before the
  // staging is reused or the weights are read.
  for (int s = 0; s < 2; ++s) {
    be.copy_async_sync(kStagingSlot + s);
    be.copy_async_wait(kStagingSlot + s);
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
  std::vector<HostPiece> pieces;
  for (auto& c : chunks) {
    for (const auto& tn : c.tensors) {
      const float wd = tn.decay ? static_cast<float>(o.weight_decay) : 0.0f;
      if (c.adam_on_host) {
        M6_CHECK(staging && staging->floats > 0, "chunk ", c.name,
                 " keeps its Adam moments on the host, but no host staging was given");
        Backend::AdamArgs h = a;
        h.weight_decay = wd;
        for (size_t at = 0; at < tn.numel; at += staging->floats)
          pieces.push_back({&c, tn.offset + at, std::min(staging->floats, tn.numel - at), h});
        continue;
      }
      ts.push_back({c.param + tn.offset, c.grad + tn.offset, c.adam_m + tn.offset,
                    c.adam_v + tn.offset, static_cast<size_t>(tn.numel), wd});
    }
  }
  a.weight_decay = 0.0f;  // per tensor
  // The device's update first: on a GPU it runs while the host updates its share.
  if (!ts.empty()) be.adamw_multi(ts.data(), ts.size(), a);
  if (!pieces.empty()) host_steps(be, pieces, *staging);
}

float clip_factor(const OptimConfig& o, double grad_norm) {
  if (o.grad_clip <= 0.0 || !(grad_norm > o.grad_clip)) return 1.0f;
  return static_cast<float>(o.grad_clip / grad_norm);
}

}  // namespace m6
