// One MoE layer over the N tokens of a micro-batch (DESIGN.md section 3):
// fp32 router, top-k or prototype ("k top-1") routing, slot-major capacity,
// dispatch into per-expert blocks, expert FFNs, gate-weighted combine, and
// the Switch load-balancing and router z losses. Forward saves what backward
// needs; backward accumulates parameter gradients (+=).
#pragma once
#include <cstdint>
#include <vector>

#include "core/backend/backend.h"
#include "core/config/config.h"
#include "core/model/device_arena.h"
#include "core/model/params.h"

namespace m6 {

enum class Phase { Train, Eval };

struct MoeStats {
  double aux = 0, z = 0;
  std::vector<int64_t> load;    // kept slots per expert (global expert ids)
  std::vector<int64_t> demand;  // slots that chose each expert, before dropping
  int64_t slots = 0, dropped = 0;
};

// Capacity per expert for N tokens: max(min_capacity, ceil(cf * N * S / E)),
// or 0 (no limit) when the capacity factor is 0.
int moe_capacity(const MoeConfig& moe, int n_tokens, Phase phase);

class MoeLayer {
 public:
  // router: the layer chunk holding moe.router.weight; experts: this rank's
  // expert chunks of the layer, in expert order. max_tokens bounds N.
  MoeLayer(Backend& be, const ModelConfig& m, int max_tokens);

  // y[N,d] = MoE(x[N,d]). Pointers to x must stay valid until backward.
  MoeStats forward(float* y, const float* x, int n, const Chunk& router,
                   const std::vector<const Chunk*>& experts, Phase phase);
  // dx[N,d] += d loss/d x given dy[N,d]; grad_scale multiplies the aux and z
  // loss gradients (dy already carries it for the main loss).
  void backward(float* dx, const float* dy, const Chunk& router,
                const std::vector<const Chunk*>& experts, float grad_scale);

 private:
  Backend& be_;
  const ModelConfig& m_;
  RouterArgs ra_;
  int S_;
  DeviceArena arena_;
  // saved by forward
  const float* x_ = nullptr;
  int n_ = 0;
  std::vector<int32_t> count_h_, offset_h_;
  // device buffers (sized for max_tokens)
  float *logits_, *probs_, *lse_, *gate_, *dgate_, *dlogits_;
  int32_t *expert_, *pos_, *count_, *demand_, *offset_;
  float *xp_, *h_pre_, *h_act_, *yp_;     // [N*S, d], [N*S, F], [N*S, F], [N*S, d]
  float *dxp_, *dh_, *dyp_;               // [N*S, d], [N*S, F], [N*S, d]
};

}  // namespace m6
