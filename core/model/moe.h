// One MoE layer over the N tokens of a micro-batch (DESIGN.md section 3):
// fp32 router, top-k or prototype ("k top-1") routing, slot-major capacity,
// dispatch into per-expert blocks, expert FFNs, gate-weighted combine, and
// the Switch load-balancing and router z losses. Forward saves what backward
// needs; backward accumulates parameter gradients (+=).
//
// Expert parallelism (DESIGN.md section 4): with an EP group of P ranks, EP
// rank j holds experts [j*E/P, (j+1)*E/P). Routing and capacity stay local
// (capacity counts this rank's N tokens, exactly as a 1-rank run with
// gradient accumulation does), the packed rows -- ordered by global expert id,
// so the rows for rank q's experts are contiguous -- travel to their owners
// by all-to-all-v, are regrouped per local expert, run, and travel back the
// same way; backward mirrors it. Every rank of the group joins every exchange,
// with zero rows if need be.
#pragma once
#include <cstdint>
#include <vector>

#include "core/backend/backend.h"
#include "core/config/config.h"
#include "core/model/device_arena.h"
#include "core/model/mixed_precision.h"
#include "core/model/params.h"
#include "core/parallel/comm.h"
#include "core/parallel/grad_buckets.h"

namespace m6 {

enum class Phase { Train, Eval };

struct MoeStats {
  double aux = 0, z = 0;
  std::vector<int64_t> load;  // kept slots per expert (global expert ids), from this rank's tokens
  std::vector<int64_t> demand;  // slots that chose each expert, before dropping
  int64_t slots = 0, dropped = 0;
  // Fingerprint of every routing decision of these tokens: a hash over slots
  // (token, k) of the chosen expert and whether the slot was kept. Two runs
  // that route a micro-batch the same way have the same fingerprint, so a
  // comparison of two runs can tell rounding differences from a decision that
  // flipped on a near-tie (DESIGN.md section 4: 1 vs W ranks).
  uint64_t routing = 0;
};

// Capacity per expert for N tokens: max(min_capacity, ceil(cf * N * S / E)),
// or 0 (no limit) when the capacity factor is 0.
int moe_capacity(const MoeConfig& moe, int n_tokens, Phase phase);

// How an MoE layer reaches the experts held by other ranks.
struct MoeExchange {
  Comm* ep = nullptr;               // the EP group; null (or 1 rank): every expert is local
  CommDType wire = CommDType::F32;  // precision.comm of the token payloads
  GradWire grads = GradWire::Unscaled;  // LossScaled: backward payloads carry the fp16 loss scale
};

class MoeLayer {
 public:
  // max_tokens bounds N; layer (the logical layer) names the exchanges in
  // timeout messages ("layer 3 dispatch").
  MoeLayer(Backend& be, const ModelConfig& m, int max_tokens, int layer = -1, MoeExchange ex = {});
  // precision.compute: expert activations, the combined output and the
  // expert-side gradients are stored rounded; the router stays fp32.
  void set_rounding(ActRound r) { round_ = r; }

  // y[N,d] = MoE(x[N,d]). Pointers to x must stay valid until backward.
  // router: the layer chunk holding moe.router.weight; experts: this rank's
  // expert chunks of the layer, in expert order. The loads and demand are
  // read to the host here (the capacity logic needs them: the only host
  // read of a training micro-batch); aux, z and routing are left in
  // dev_stats (stats_doubles() device doubles) for finish_stats.
  MoeStats forward(float* y, const float* x, int n, const Chunk& router,
                   const std::vector<const Chunk*>& experts, Phase phase, double* dev_stats);
  // Device doubles forward leaves per call: the E + 1 router sums, the
  // routing fingerprint (training only; 64 bits).
  int stats_doubles() const { return ra_.e + 2; }
  // Fills st.aux, st.z and st.routing from the host copy of forward's dev_stats.
  void finish_stats(MoeStats& st, const double* host_stats) const;
  // forward with its statistics read back at once (inference, tests).
  MoeStats forward(float* y, const float* x, int n, const Chunk& router,
                   const std::vector<const Chunk*>& experts, Phase phase);
  // dx[N,d] += d loss/d x given dy[N,d]; grad_scale multiplies the aux and z
  // loss gradients (dy already carries it for the main loss).
  void backward(float* dx, const float* dy, const Chunk& router,
                const std::vector<const Chunk*>& experts, float grad_scale);
  // The logical layer named in exchange labels (one MoeLayer serves every
  // layer when train.recompute is layer).
  void set_layer(int layer) { layer_ = layer; }

 private:
  // Row counts of one forward's exchange, in elements of d floats.
  void plan_exchange();
  // rows[src layout] -> owners (source-major), regrouped expert-major into dst.
  void exchange_to_experts(float* dst, const float* src, float scale, const char* what);
  // expert-major src -> back to the source ranks, into dst (source layout).
  void exchange_from_experts(float* dst, const float* src, float scale, const char* what);
  void experts_fwd(const std::vector<const Chunk*>& experts);
  void experts_bwd(const std::vector<const Chunk*>& experts);
  void check_experts(const std::vector<const Chunk*>& experts) const;

  Backend& be_;
  const ModelConfig& m_;
  RouterArgs ra_;
  int S_;
  int layer_;
  MoeExchange ex_;
  ActRound round_;
  int64_t rows_ = 0;  // kept rows of this rank's tokens (last forward)
  int P_ = 1, first_ = 0, El_ = 0;  // EP group size, first local expert, local experts
  int64_t max_rows_ = 0;            // rows the local experts can receive
  DeviceArena arena_;
  // saved by forward
  const float* x_ = nullptr;
  int n_ = 0;
  std::vector<int32_t> count_h_, offset_h_;  // [E] kept rows per expert from this rank's tokens
  std::vector<int32_t> assign_h_;            // [2E] count_, demand_ read back together
  std::vector<int32_t> recv_cnt_;            // [P, El] rows source p sends to local expert le
  std::vector<int32_t> erows_, eoff_;        // [El] rows and first row of each local expert's block
  std::vector<int64_t> sc_, sd_, rc_, rd_;   // [P] element counts/displacements of the exchange
  struct Segment {
    int64_t src_row, dst_row, rows;  // source-major row -> expert-major row
  };
  std::vector<Segment> segs_;
  // device buffers (sized for max_tokens)
  float *logits_, *probs_, *lse_, *gate_, *dgate_, *dlogits_;
  int32_t *expert_, *pos_, *count_, *demand_, *offset_;  // count_, demand_ adjacent
  float *xp_, *yp_, *dxp_, *dyp_;  // [N*S, d] packed rows in this rank's (source) layout
  // Expert side, [max_rows, *]: the local experts' inputs, activations and
  // outputs, expert-major. With P = 1 xe_ aliases xp_ (and ye_ yp_, ...).
  float *xe_, *he_pre_, *he_act_, *ye_, *dxe_, *dhe_, *dye_;
  float* xr_ = nullptr;  // [max_rows, d] received rows, source-major (P > 1)
  double* own_stats_ = nullptr;  // [stats_doubles()] for the reading forward
};

}  // namespace m6
