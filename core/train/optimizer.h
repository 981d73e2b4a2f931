// AdamW over parameter chunks, the learning-rate schedule and global-norm
// gradient clipping (DESIGN.md section 1, core/train).
#pragma once
#include <cstdint>
#include <vector>

#include "core/backend/backend.h"
#include "core/config/config.h"
#include "core/model/params.h"

namespace m6 {

// Linear warmup over warmup_steps, then cosine decay from lr to min_lr over
// the remaining decay_steps (train.steps when 0); min_lr afterwards. step is 0-based.
double lr_at(const OptimConfig& o, int64_t total_steps, int64_t step);

// Sum of squares of each chunk's gradient, in chunk order (for the global
// norm; the caller adds the contributions of other ranks).
// Backend::sum_squares_multi: one host round trip for all of them.
std::vector<double> grad_squares(Backend& be, const std::vector<Chunk>& chunks);

// Host buffers of the offloaded optimizer step (offload.optimizer): two sets
// (double buffering: one piece is updated on the host while the next comes
// down) of a gradient piece and a parameter piece of at most offload.chunk_mb,
// sized to the largest chunk whose moments live on the host; none without
// offload.
class HostStaging {
 public:
  HostStaging(Backend& be, const std::vector<Chunk>& chunks, const OffloadConfig& o);
  ~HostStaging();
  HostStaging(const HostStaging&) = delete;
  HostStaging& operator=(const HostStaging&) = delete;
  float* grad[2] = {nullptr, nullptr};   // [floats] each
  float* param[2] = {nullptr, nullptr};  // [floats] each
  size_t floats = 0;

 private:
  Backend& be_;
};

// One AdamW update of every chunk. grad_scale multiplies the gradients (the
// clipping factor); t is the 1-based update count used for bias correction.
// Weight decay applies only to tensors marked `decay` (not biases or LayerNorm).
// A chunk with its moments in the host arena is updated on the host
// (host_adamw), piece by piece through STAGING: its gradient comes down, and
// its weights too unless the master already lives on the host, in which case
// the next forward streams the new weights up. The device-resident update is
// issued first; the host pieces are pipelined (Backend::copy_async, slots 2
// and 3): piece k+1 comes down while piece k is updated, piece k's weights go
// up behind it. The arithmetic is that of one piece at a time.
void adamw_step(Backend& be, std::vector<Chunk>& chunks, const OptimConfig& o, double lr,
                float grad_scale, int64_t t, HostStaging* staging = nullptr);

// The clipping factor for a global gradient norm: min(1, clip / norm); 1 when clip is 0.
float clip_factor(const OptimConfig& o, double grad_norm);

}  // namespace m6
