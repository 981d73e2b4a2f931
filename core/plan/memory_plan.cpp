#include "core/plan/memory_plan.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "core/backend/backend.h"
#include "core/model/moe.h"
#include "core/model/offload.h"
#include "core/model/params.h"
#include "core/parallel/grad_buckets.h"

namespace m6 {

const char* recompute_name(Recompute r) {
  switch (r) {
    case Recompute::None:
      return "none";
    case Recompute::Attention:
      return "attention";
    case Recompute::Layer:
      return "layer";
  }
  return "?";
}

namespace {

constexpr int64_t kAlign = 64;  // the arena's allocation granularity

int64_t buf(int64_t bytes) { return (std::max<int64_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign; }

int64_t precision_bytes(Precision p) { return p == Precision::Fp32 ? 4 : 2; }

// Staging floats of GradBuckets over spans of these sizes (the largest packed
// bucket; see core/parallel/grad_buckets.cpp).
int64_t bucket_staging(const std::vector<int64_t>& spans) {
  const int64_t cap = static_cast<int64_t>(kGradBucketBytes / sizeof(float));
  int64_t staging = 0, cur = 0, pieces = 0;
  auto flush = [&] {
    if (pieces > 1) staging = std::max(staging, cur);
    cur = 0, pieces = 0;
  };
  for (int64_t n : spans) {
    if (n == 0) continue;
    if (n >= cap) {
      flush();
      continue;
    }
    if (cur + n > cap) flush();
    cur += n, ++pieces;
  }
  flush();
  return staging;
}

// Byte widths of one plan: fp32 values (master, moments, router, LayerNorm
// statistics), compute-precision values (v), int32 indices.
struct Widths {
  int64_t f32 = 4, v = 4, i32 = 4;
};

struct Shapes {
  int64_t B, T, N, d, F, V, H, E, S, groups, P, El, R;
};

Shapes shapes_of(const Config& cfg) {
  const ModelConfig& m = cfg.model;
  Shapes s{};
  s.B = cfg.train.micro_batch, s.T = cfg.train.seq_len, s.N = s.B * s.T;
  s.d = m.d_model, s.F = m.d_ff, s.V = m.vocab_size, s.H = m.n_heads;
  const bool moe = m.moe.every > 0;
  s.E = moe ? m.moe.experts : 0;
  s.S = moe ? m.moe.slots() : 0;
  s.groups = moe && m.moe.router == RouterKind::Prototypes ? m.moe.prototypes : 1;
  s.P = cfg.parallel.ep;
  s.El = moe ? s.E / s.P : 0;
  // Rows the local experts can receive (MoeLayer's constructor).
  const int64_t NS = s.N * s.S;
  if (s.P == 1) {
    s.R = NS;
  } else {
    s.R = s.P * NS;
    if (moe && m.moe.capacity_factor > 0 && m.moe.eval_capacity_factor > 0) {
      const int c = std::max(moe_capacity(m.moe, static_cast<int>(s.N), Phase::Train),
                             moe_capacity(m.moe, static_cast<int>(s.N), Phase::Eval));
      s.R = std::min(s.R, s.P * s.El * c);
    }
  }
  return s;
}

// One MoeLayer's buffers: {router and expert activations, packed rows}.
std::pair<int64_t, int64_t> moe_layer_bytes(const Shapes& s, const Widths& w) {
  const int64_t NS = s.N * s.S;
  int64_t acts = 3 * buf(s.N * s.E * w.f32) + buf(s.N * s.groups * w.f32) + 2 * buf(NS * w.f32) +
                 2 * buf(NS * w.i32) + buf(2 * s.E * w.i32) /* count | demand */ +
                 buf(s.E * w.i32) /* offset */ + buf((s.E + 2) * 8) /* its own statistics */;
  acts += 3 * buf(s.R * s.F * w.v);  // he_pre, he_act, dhe
  int64_t rows = 4 * buf(NS * s.d * w.v);
  if (s.P > 1) rows += 4 * buf(s.R * s.d * w.v);  // xr, xe, ye, dxe
  return {acts, rows};
}

// Activations one layer keeps besides the attention probabilities (and, for
// MoE, besides the packed rows).
int64_t layer_common_bytes(const Shapes& s, const Widths& w) {
  return 4 * buf(s.N * s.d * w.v) /* ln1_out atty res1 ln2_out */ + buf(s.N * 3 * s.d * w.v) +
         4 * buf(s.N * w.f32) /* LayerNorm mean, rstd */;
}

struct PlanInputs {
  const Config& cfg;
  int world;
  PlanStorage storage;
  const std::vector<Chunk>& chunks;  // one rank's chunk plan
};

MemoryPlan plan_with(const PlanInputs& in, Recompute rc, const OffloadConfig& off) {
  const Config& cfg = in.cfg;
  const ModelConfig& m = cfg.model;
  MemoryPlan p;
  p.world = in.world;
  p.storage = in.storage;
  p.recompute = rc;
  p.offload_optimizer = off.optimizer;
  p.offload_params = off.params;
  Widths w;
  const bool gpu = in.storage == PlanStorage::Gpu;
  if (gpu) w.v = precision_bytes(cfg.precision.compute);
  const bool compute_copy = gpu && cfg.precision.compute != Precision::Fp32;
  const Shapes s = shapes_of(cfg);
  const int L = m.n_layers;

  // ---- parameters, gradients, optimizer state, offload ---------------------------
  const std::vector<OffloadPlacement> place = place_offload(in.chunks, off);
  MemoryLine master{"parameters (fp32 master)"}, copy{"compute copy"}, grads{"gradients"},
      adam{"optimizer state (Adam m, v fp32)"}, offload{"offload window + host staging"};
  std::map<int, int64_t> streamed_per_set;  // layer set -> floats streamed
  int64_t host_adam_max = 0;
  std::vector<int64_t> dense_spans, expert_spans;
  for (size_t i = 0; i < in.chunks.size(); ++i) {
    const Chunk& c = in.chunks[i];
    const int64_t n = static_cast<int64_t>(c.numel);
    (place[i].master_on_host ? master.host : master.device) += buf(4 * n);
    if (compute_copy && !place[i].master_on_host) copy.device += buf(w.v * n);
    grads.device += buf(w.v * n);
    (place[i].adam_on_host ? adam.host : adam.device) += 2 * buf(4 * n);
    if (place[i].master_on_host) streamed_per_set[c.layer] += n;
    if (place[i].adam_on_host) host_adam_max = std::max(host_adam_max, n);
    (c.kind == ChunkKind::Expert ? expert_spans : dense_spans).push_back(n);
  }
  int64_t window = 0;
  for (const auto& [set, n] : streamed_per_set) window = std::max(window, n);
  if (window > 0) offload.device += 2 * buf(w.v * window);  // two layer sets in flight
  if (host_adam_max > 0) {
    const int64_t piece =
        std::min<int64_t>(host_adam_max, static_cast<int64_t>(offload_piece_floats(off)));
    offload.host += 4 * buf(4 * piece);  // two sets of a gradient and a parameter piece
  }

  // ---- activations ------------------------------------------------------------------
  int64_t any_dense = 0, any_moe = 0;
  for (int l = 0; l < L; ++l) (m.is_moe_layer(l) ? any_moe : any_dense) = 1;
  p.moe_layers = 0;
  for (int l = 0; l < L; ++l) p.moe_layers += m.is_moe_layer(l);
  p.dense_layers = L - p.moe_layers;
  // Attention's saved state per layer and its backward scratch: on the CPU
  // backend the probabilities [B,H,T,T] (compute precision), shared by the
  // layers under recompute attention; the CUDA backend's fused kernel keeps
  // a log-sum-exp [B,H,T] and D [B,H,T] in fp32 (flash_attention_buffers in
  // core/backend/backend.h), every layer its own (nothing to recompute). A
  // GPU layout of a config pinned to train.device: cpu counts the CPU's.
  const bool flash = gpu && cfg.train.device != DeviceKind::Cpu;
  const Backend::AttentionBuffers fa =
      flash_attention_buffers(static_cast<int>(s.B), static_cast<int>(s.T), static_cast<int>(s.H));
  const int64_t att =
      flash ? buf(static_cast<int64_t>(fa.saved) * w.f32) : buf(s.B * s.H * s.T * s.T * w.v);
  const int64_t att_scratch = flash ? buf(static_cast<int64_t>(fa.scratch) * w.f32) : att;
  const int64_t att_rc = flash ? att : 0;  // kept per layer under recompute attention
  const int64_t common = layer_common_bytes(s, w);
  const int64_t ffn = 2 * buf(s.N * s.F * w.v);
  const auto [moe_acts, moe_rows] =
      any_moe ? moe_layer_bytes(s, w) : std::pair<int64_t, int64_t>{0, 0};
  const int64_t residual = buf(s.N * s.d * w.v);
  p.per_layer.dense[0] = residual + common + att + ffn;
  p.per_layer.dense[1] = residual + common + att_rc + ffn;
  p.per_layer.dense[2] = residual;
  p.per_layer.moe[0] = residual + common + att + moe_acts + moe_rows;
  p.per_layer.moe[1] = residual + common + att_rc + moe_acts + moe_rows;
  p.per_layer.moe[2] = residual;
  MemoryLine acts{"activations"}, rows{"all-to-all buffers"}, buckets{"comm buckets"},
      work{"workspace"};
  acts.device += (L + 1) * residual;
  if (rc == Recompute::Layer) {
    acts.device += att + common + any_dense * ffn + any_moe * moe_acts;
    rows.device += any_moe * moe_rows;
  } else {
    if (rc == Recompute::Attention) acts.device += flash ? L * att : att;
    acts.device += L * common + p.dense_layers * ffn + p.moe_layers * moe_acts;
    if (rc == Recompute::None) acts.device += L * att;
    rows.device += p.moe_layers * moe_rows;
  }
  // Gradient buckets stage fp32 (the wire precision is applied by the comm).
  buckets.device += buf(4 * bucket_staging(dense_spans)) * (bucket_staging(dense_spans) > 0);
  buckets.device += buf(4 * bucket_staging(expert_spans)) * (bucket_staging(expert_spans) > 0);
  // Inputs, the head (final LayerNorm, logits [N,V], losses) and the backward
  // scratch (dres, dtmp [N,d], dqkv [N,3d], dff [N,F], attention's scratch).
  work.device += 2 * buf(s.N * w.i32);
  work.device +=
      buf(s.N * s.d * w.v) + 2 * buf(s.N * w.f32) + buf(s.N * s.V * w.v) + buf(s.N * w.f32);
  work.device +=
      2 * buf(s.N * s.d * w.v) + buf(s.N * 3 * s.d * w.v) + buf(s.N * s.F * w.v) + att_scratch;
  // The deferred statistics of a step's micro-batches (Model::collect_stats):
  // the loss sum and, per MoE layer, E + 1 router sums and a fingerprint,
  // per micro-batch and once more for a graph's replays.
  work.device += buf(8 * (1 + p.moe_layers * (s.E + 2)) * (cfg.accum_steps(in.world) + 1));

  p.lines = {master, copy, grads, adam, offload, acts, rows, buckets, work};
  if (!compute_copy) p.lines.erase(p.lines.begin() + 1);
  for (const MemoryLine& l : p.lines) {
    p.device_total += l.device;
    p.host_total += l.host;
  }

  // ---- traffic per step -------------------------------------------------------------
  const int accum = cfg.accum_steps(in.world);
  const int64_t wire = precision_bytes(cfg.precision.comm);
  if (s.P > 1 && p.moe_layers > 0) {
    const int cap = moe_capacity(m.moe, static_cast<int>(s.N), Phase::Train);
    const double kept = cap > 0 ? std::min<double>(s.N * s.S, static_cast<double>(s.E) * cap)
                                : static_cast<double>(s.N * s.S);
    const double others = static_cast<double>(s.P - 1) / s.P;
    const int exchanges = rc == Recompute::Layer ? 6 : 4;  // dispatch + combine, fwd and bwd
    const int count_exchanges = rc == Recompute::Layer ? 2 : 1;
    p.a2a_bytes_per_step =
        static_cast<double>(accum) * p.moe_layers *
        (exchanges * kept * others * s.d * wire + count_exchanges * (s.P - 1) * s.El * 4.0);
  }
  double dense = 0, expert = 0;
  for (int64_t n : dense_spans) dense += static_cast<double>(n);
  for (int64_t n : expert_spans) expert += static_cast<double>(n);
  if (in.world > 1) p.allreduce_bytes_per_step += dense * wire;
  if (in.world / s.P > 1) p.allreduce_bytes_per_step += expert * wire;
  return p;
}

std::vector<Chunk> rank_chunks(const Config& cfg) {
  const int E = cfg.model.moe.every > 0 ? cfg.model.moe.experts : 0;
  return plan_chunks(cfg.model, ExpertRange{0, E / cfg.parallel.ep});
}

bool within(const MemoryPlan& p, int64_t device_cap, int64_t host_cap) {
  return (device_cap <= 0 || p.device_total <= device_cap) &&
         (host_cap <= 0 || p.host_total <= host_cap);
}

}  // namespace

MemoryPlan plan_memory(const Config& cfg, int world, PlanStorage storage) {
  const std::vector<Chunk> chunks = rank_chunks(cfg);
  return plan_with(PlanInputs{cfg, world, storage, chunks}, cfg.train.recompute, cfg.offload);
}

FitCheck check_fit(const Config& cfg, int world, PlanStorage storage, int64_t device_capacity,
                   int64_t host_capacity) {
  const std::vector<Chunk> chunks = rank_chunks(cfg);
  const PlanInputs in{cfg, world, storage, chunks};
  FitCheck f;
  f.device_capacity = device_capacity;
  f.host_capacity = host_capacity;
  f.fits = within(plan_with(in, cfg.train.recompute, cfg.offload), device_capacity, host_capacity);
  // Cost model of the search: recompute attention ~5% more compute, layer
  // ~33%; moving the moments costs PCIe time the backward mostly hides,
  // streaming the weights costs more.
  const double rc_cost[3] = {0.0, 0.05, 0.33};
  double best = 1e9;
  for (int r = 0; r < 3; ++r)
    for (int i = 0; i <= 8; ++i)
      for (int j = 0; j <= i; ++j) {
        const double fo = i / 8.0, fp = j / 8.0;
        const double cost = rc_cost[r] + 0.1 * fo + 0.4 * fp;
        if (cost >= best) continue;
        OffloadConfig off = cfg.offload;
        off.optimizer = fo;
        off.params = fp;
        MemoryPlan p = plan_with(in, static_cast<Recompute>(r), off);
        if (!within(p, device_capacity, host_capacity)) continue;
        best = cost;
        f.found = true;
        f.recompute = static_cast<Recompute>(r);
        f.offload_optimizer = fo;
        f.offload_params = fp;
        f.suggested = std::move(p);
      }
  return f;
}

}  // namespace m6
