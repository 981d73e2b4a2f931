#include "core/model/moe.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/model/linear.h"
#include "core/util/error.h"

namespace m6 {

namespace {

// Calls f(first_row, rows) for the rows of a list of expert groups: once over
// their union when the blocks lie back to back (expert-major blocks, the usual
// case: one launch), else once per group. For elementwise ops only.
template <class Group, class F>
void for_row_blocks(const std::vector<Group>& gs, F f) {
  if (gs.empty()) return;
  bool contiguous = true;
  for (size_t i = 1; i < gs.size(); ++i)
    contiguous = contiguous && gs[i].row == gs[i - 1].row + gs[i - 1].rows;
  if (contiguous) {
    f(static_cast<size_t>(gs.front().row),
      static_cast<size_t>(gs.back().row + gs.back().rows - gs.front().row));
    return;
  }
  for (const auto& g : gs) f(static_cast<size_t>(g.row), static_cast<size_t>(g.rows));
}

}  // namespace

int moe_capacity(const MoeConfig& moe, int n_tokens, Phase phase) {
  const double cf = phase == Phase::Train ? moe.capacity_factor : moe.eval_capacity_factor;
  if (cf <= 0.0) return 0;
  const double want = std::ceil(cf * n_tokens * moe.slots() / moe.experts);
  return std::max(moe.min_capacity, static_cast<int>(want));
}

MoeLayer::MoeLayer(Backend& be, const ModelConfig& m, int max_tokens, int layer, MoeExchange ex)
    : be_(be), m_(m), S_(m.moe.slots()), layer_(layer), ex_(ex), arena_(be) {
  const int E = m.moe.experts, d = m.d_model, F = m.d_ff;
  const bool protos = m.moe.router == RouterKind::Prototypes;
  ra_.e = E;
  ra_.groups = protos ? m.moe.prototypes : 1;
  ra_.top_k = protos ? 1 : m.moe.top_k;
  ra_.normalize = !protos && m.moe.normalize();
  P_ = ex_.ep ? ex_.ep->size() : 1;
  if (E % P_ != 0)
    throw ConfigError(fmt("model.moe.experts (", E, ") must be divisible by ep (", P_, ")"));
  El_ = E / P_;
  first_ = (ex_.ep ? ex_.ep->rank() : 0) * El_;

  const size_t N = static_cast<size_t>(max_tokens), NS = N * S_;
  logits_ = arena_.floats(N * E);
  probs_ = arena_.floats(N * E);
  dlogits_ = arena_.floats(N * E);
  lse_ = arena_.floats(N * ra_.groups);
  gate_ = arena_.floats(NS);
  dgate_ = arena_.floats(NS);
  expert_ = arena_.ints(NS);
  pos_ = arena_.ints(NS);
  own_stats_ = arena_.doubles(static_cast<size_t>(E) + 2);
  count_ = arena_.ints(2 * static_cast<size_t>(E));  // [count | demand]: one read back
  demand_ = count_ + E;
  offset_ = arena_.ints(E);
  xp_ = arena_.floats(NS * d);
  yp_ = arena_.floats(NS * d);
  dxp_ = arena_.floats(NS * d);
  dyp_ = arena_.floats(NS * d);
  if (P_ == 1) {
    // The source layout is the expert layout: no exchange, no second copy.
    max_rows_ = static_cast<int64_t>(NS);
    xe_ = xp_, ye_ = yp_, dxe_ = dxp_, dye_ = dyp_;
  } else {
    // Worst case: every source sends all its slots here, unless capacity
    // (each source fills at most C rows per expert) bounds it lower.
    max_rows_ = static_cast<int64_t>(P_) * static_cast<int64_t>(NS);
    const int c = std::max(moe_capacity(m.moe, max_tokens, Phase::Train),
                           moe_capacity(m.moe, max_tokens, Phase::Eval));
    const bool bounded = m.moe.capacity_factor > 0 && m.moe.eval_capacity_factor > 0;
    if (bounded) max_rows_ = std::min(max_rows_, static_cast<int64_t>(P_) * El_ * c);
    const size_t R = static_cast<size_t>(max_rows_);
    xr_ = arena_.floats(R * d);
    xe_ = arena_.floats(R * d);
    ye_ = arena_.floats(R * d);
    dxe_ = arena_.floats(R * d);
    dye_ = ye_;  // the outputs have left for their sources when backward needs the buffer
  }
  const size_t R = static_cast<size_t>(max_rows_);
  he_pre_ = arena_.floats(R * F);
  he_act_ = arena_.floats(R * F);
  dhe_ = arena_.floats(R * F);
  count_h_.assign(E, 0);
  offset_h_.assign(E, 0);
  recv_cnt_.assign(static_cast<size_t>(P_) * El_, 0);
  erows_.assign(El_, 0);
  eoff_.assign(El_, 0);
  sc_.assign(P_, 0), sd_.assign(P_, 0), rc_.assign(P_, 0), rd_.assign(P_, 0);
}

void MoeLayer::check_experts(const std::vector<const Chunk*>& experts) const {
  M6_CHECK(static_cast<int>(experts.size()) == El_, "layer ", layer_, ": ", experts.size(),
           " expert chunks given, this rank holds ", El_);
  for (size_t i = 0; i < experts.size(); ++i)
    M6_CHECK(experts[i]->expert == first_ + static_cast<int>(i), "layer ", layer_,
             ": expert chunk ", i, " is expert ", experts[i]->expert, ", expected ",
             first_ + static_cast<int>(i));
}

void MoeLayer::plan_exchange() {
  Comm& ep = *ex_.ep;
  const int d = m_.d_model;
  {
    // count_h_ is [P, El] rank-major already: block q holds the counts for q's experts.
    CommLabel label(ep.activity(), fmt("layer ", layer_, " dispatch counts"));
    ep.all_to_all(count_h_.data(), recv_cnt_.data(), El_, CommDType::I32);
  }
  int64_t recv_rows = 0;
  for (int q = 0; q < P_; ++q) {
    int64_t to_q = 0, from_q = 0;
    for (int le = 0; le < El_; ++le) {
      to_q += count_h_[q * El_ + le];
      from_q += recv_cnt_[q * El_ + le];
    }
    sc_[q] = to_q * d;
    sd_[q] = static_cast<int64_t>(offset_h_[q * El_]) * d;
    rc_[q] = from_q * d;
    rd_[q] = recv_rows * d;
    recv_rows += from_q;
  }
  M6_CHECK(recv_rows <= max_rows_, "layer ", layer_, ": ", recv_rows,
           " rows received for the local experts, buffers hold ", max_rows_);
  // Expert-major blocks: local expert le gets the rows of source 0, then 1, ...
  int64_t row = 0;
  for (int le = 0; le < El_; ++le) {
    eoff_[le] = static_cast<int32_t>(row);
    for (int p = 0; p < P_; ++p) row += recv_cnt_[p * El_ + le];
    erows_[le] = static_cast<int32_t>(row - eoff_[le]);
  }
  segs_.clear();
  for (int p = 0; p < P_; ++p) {
    int64_t src = rd_[p] / d;
    for (int le = 0; le < El_; ++le) {
      const int64_t rows = recv_cnt_[p * El_ + le];
      int64_t dst = eoff_[le];
      for (int pp = 0; pp < p; ++pp) dst += recv_cnt_[pp * El_ + le];
      if (rows > 0) segs_.push_back({src, dst, rows});
      src += rows;
    }
  }
}

void MoeLayer::exchange_to_experts(float* dst, const float* src, float scale, const char* what) {
  const size_t d = static_cast<size_t>(m_.d_model);
  CommLabel label(ex_.ep->activity(), fmt("layer ", layer_, " ", what));
  ex_.ep->all_to_all_v_f32(src, sc_.data(), sd_.data(), xr_, rc_.data(), rd_.data(), ex_.wire,
                           scale);
  for (const Segment& s : segs_)
    be_.copy(dst + s.dst_row * d, xr_ + s.src_row * d, s.rows * d * sizeof(float));
}

void MoeLayer::exchange_from_experts(float* dst, const float* src, float scale, const char* what) {
  const size_t d = static_cast<size_t>(m_.d_model);
  for (const Segment& s : segs_)
    be_.copy(xr_ + s.src_row * d, src + s.dst_row * d, s.rows * d * sizeof(float));
  CommLabel label(ex_.ep->activity(), fmt("layer ", layer_, " ", what));
  ex_.ep->all_to_all_v_f32(xr_, rc_.data(), rd_.data(), dst, sc_.data(), sd_.data(), ex_.wire,
                           scale);
}

void MoeLayer::experts_fwd(const std::vector<const Chunk*>& experts) {
  const int d = m_.d_model, F = m_.d_ff;
  // Every local expert over its block of rows in one grouped call per layer
  // of the FFN (one launch on the GPU, Backend::linear_fwd_grouped).
  std::vector<Backend::LinearGroup> g1, g2;
  for (const Chunk* c : experts) {
    const int le = c->expert - first_, r = erows_[le];
    if (r == 0) continue;
    g1.push_back({c->weight_of("fc1.weight"), c->weight_of("fc1.bias"), eoff_[le], r});
    g2.push_back({c->weight_of("fc2.weight"), c->weight_of("fc2.bias"), eoff_[le], r});
  }
  if (g1.empty()) return;
  if (!round_.active()) {  // fp32: fc1 with its bias+GELU epilogue
    be_.linear_fwd_grouped(he_pre_, he_act_, xe_, g1.data(), static_cast<int>(g1.size()), d, F);
    be_.linear_fwd_grouped(ye_, nullptr, he_act_, g2.data(), static_cast<int>(g2.size()), F, d);
    return;
  }
  // bf16/fp16: the GELU reads the rounded pre-activation; every output rounded.
  be_.linear_fwd_grouped(he_pre_, nullptr, xe_, g1.data(), static_cast<int>(g1.size()), d, F);
  for_row_blocks(g1, [&](size_t o, size_t r) {  // rounds pre, then act
    be_.gelu_fwd_half(he_act_ + o * F, he_pre_ + o * F, r * F, *round_.type());
  });
  be_.linear_fwd_grouped(ye_, nullptr, he_act_, g2.data(), static_cast<int>(g2.size()), F, d);
  for_row_blocks(g2, [&](size_t o, size_t r) { round_(ye_ + o * d, r * d); });
}

void MoeLayer::experts_bwd(const std::vector<const Chunk*>& experts) {
  const int d = m_.d_model, F = m_.d_ff;
  // Every local expert's backward in one grouped call per layer of the FFN
  // (Backend::linear_bwd_grouped): each expert's rows are its own, so the
  // order across experts does not change a bit.
  std::vector<Backend::LinearGradGroup> g1, g2;
  for (const Chunk* c : experts) {
    const int le = c->expert - first_, r = erows_[le];
    if (r == 0) continue;
    g2.push_back({c->weight_of("fc2.weight"), c->grad_of("fc2.weight"), c->grad_of("fc2.bias"),
                  eoff_[le], r});
    g1.push_back({c->weight_of("fc1.weight"), c->grad_of("fc1.weight"), c->grad_of("fc1.bias"),
                  eoff_[le], r});
  }
  if (g1.empty()) return;
  be_.linear_bwd_grouped(dhe_, dye_, he_act_, g2.data(), static_cast<int>(g2.size()), F, d);
  for_row_blocks(g2, [&](size_t o, size_t r) {
    if (round_.active())  // rounds the incoming gradient, then the GELU's
      be_.gelu_bwd_half(dhe_ + o * F, he_pre_ + o * F, dhe_ + o * F, r * F, *round_.type());
    else
      be_.gelu_bwd(dhe_ + o * F, he_pre_ + o * F, dhe_ + o * F, r * F);
  });
  be_.linear_bwd_grouped(dxe_, dhe_, xe_, g1.data(), static_cast<int>(g1.size()), d, F);
  for_row_blocks(g1, [&](size_t o, size_t r) { round_(dxe_ + o * d, r * d); });
}

void MoeLayer::finish_stats(MoeStats& st, const double* host_stats) const {
  const int E = ra_.e;
  RouterArgs a = ra_;
  a.n = static_cast<int>(st.slots / S_);
  std::vector<int32_t> demand(st.demand.begin(), st.demand.end());
  const Backend::AuxLosses aux = Backend::router_aux_combine(host_stats, demand.data(), a);
  st.aux = aux.aux;
  st.z = aux.z;
  std::memcpy(&st.routing, host_stats + E + 1, sizeof st.routing);
}

MoeStats MoeLayer::forward(float* y, const float* x, int n, const Chunk& router,
                           const std::vector<const Chunk*>& experts, Phase phase) {
  MoeStats st = forward(y, x, n, router, experts, phase, own_stats_);
  be_.check_errors();
  std::vector<double> h(static_cast<size_t>(stats_doubles()));
  be_.to_host(h.data(), own_stats_, h.size() * sizeof(double));
  finish_stats(st, h.data());
  return st;
}

MoeStats MoeLayer::forward(float* y, const float* x, int n, const Chunk& router,
                           const std::vector<const Chunk*>& experts, Phase phase,
                           double* dev_stats) {
  if (dev_stats == nullptr) dev_stats = own_stats_;  // statistics not kept
  const int E = m_.moe.experts, d = m_.d_model;
  check_experts(experts);
  x_ = x;
  n_ = n;
  ra_.n = n;
  // Router in fp32, no bias (its compute copy is fp32; x is the stored
  // activation): fp32 GEMMs also where the backend's run on bf16 tensor cores.
  {
    Fp32Gemms fp32(be_);
    linear_fwd(be_, logits_, x, router.weight_of("router.weight"), nullptr, n, d, E);
  }
  be_.router_fwd(probs_, lse_, expert_, gate_, logits_, ra_);
  be_.moe_assign(pos_, count_, demand_, expert_, n, S_, E, moe_capacity(m_.moe, n, phase));

  MoeStats st;
  assign_h_.resize(2 * static_cast<size_t>(E));
  be_.to_host(assign_h_.data(), count_, assign_h_.size() * sizeof(int32_t));
  std::copy(assign_h_.begin(), assign_h_.begin() + E, count_h_.begin());
  int32_t rows = 0;
  for (int e = 0; e < E; ++e) {
    offset_h_[e] = rows;
    rows += count_h_[e];
  }
  be_.to_device(offset_, offset_h_.data(), E * sizeof(int32_t));
  st.load.assign(count_h_.begin(), count_h_.end());
  st.demand.assign(assign_h_.begin() + E, assign_h_.end());
  st.slots = static_cast<int64_t>(n) * S_;
  st.dropped = st.slots - rows;
  // The fingerprint: metrics of training steps only (0 otherwise).
  uint64_t* routing = reinterpret_cast<uint64_t*>(dev_stats + E + 1);
  if (phase == Phase::Train)
    be_.routing_hash(routing, expert_, pos_, n, S_);
  else
    be_.zero(routing, sizeof(uint64_t));
  rows_ = rows;

  be_.moe_permute(xp_, x, expert_, pos_, offset_, n, S_, d);
  if (P_ == 1) {
    std::copy(count_h_.begin(), count_h_.end(), erows_.begin());
    std::copy(offset_h_.begin(), offset_h_.end(), eoff_.begin());
    experts_fwd(experts);
  } else {
    plan_exchange();
    exchange_to_experts(xe_, xp_, 1.0f, "dispatch");
    experts_fwd(experts);
    exchange_from_experts(yp_, ye_, 1.0f, "combine");
  }
  be_.zero(y, static_cast<size_t>(n) * d * sizeof(float));
  be_.moe_unpermute(y, yp_, gate_, expert_, pos_, offset_, n, S_, d);
  round_(y, static_cast<size_t>(n) * d);
  be_.router_aux_sums(dev_stats, probs_, lse_, ra_);
  return st;
}

void MoeLayer::backward(float* dx, const float* dy, const Chunk& router,
                        const std::vector<const Chunk*>& experts, float grad_scale) {
  const int E = m_.moe.experts, d = m_.d_model, n = n_;
  check_experts(experts);
  be_.moe_unpermute_bwd(dyp_, dgate_, dy, yp_, gate_, expert_, pos_, offset_, n, S_, d);
  round_(dyp_, static_cast<size_t>(rows_) * d);  // dgate stays fp32 (router)
  if (P_ == 1) {
    experts_bwd(experts);
  } else {
    // Gradient traffic: fp16 on the wire gets the fixed gradient scale
    // (not on top of the fp16 loss scale).
    const float gs = grad_wire_scale(ex_.wire, ex_.grads);
    exchange_to_experts(dye_, dyp_, gs, "combine (backward)");
    experts_bwd(experts);
    exchange_from_experts(dxp_, dxe_, gs, "dispatch (backward)");
  }
  be_.moe_permute_bwd(dx, dxp_, expert_, pos_, offset_, n, S_, d);
  be_.router_bwd(dlogits_, dgate_, probs_, lse_, expert_, gate_, demand_,
                 static_cast<float>(m_.moe.aux_loss_coef * grad_scale),
                 static_cast<float>(m_.moe.z_loss_coef * grad_scale), ra_);
  Fp32Gemms fp32(be_);  // dlogits and the router weight are fp32
  linear_bwd(be_, dx, GradMode::Accumulate, router.grad_of("router.weight"), nullptr, dlogits_, x_,
             router.weight_of("router.weight"), n, d, E);
}

}  // namespace m6
