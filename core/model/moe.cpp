#include "core/model/moe.h"

#include <cmath>

#include "core/model/linear.h"
#include "core/util/error.h"

namespace m6 {

int moe_capacity(const MoeConfig& moe, int n_tokens, Phase phase) {
  const double cf = phase == Phase::Train ? moe.capacity_factor : moe.eval_capacity_factor;
  if (cf <= 0.0) return 0;
  const double want = std::ceil(cf * n_tokens * moe.slots() / moe.experts);
  return std::max(moe.min_capacity, static_cast<int>(want));
}

MoeLayer::MoeLayer(Backend& be, const ModelConfig& m, int max_tokens)
    : be_(be), m_(m), S_(m.moe.slots()), arena_(be) {
  const int E = m.moe.experts, d = m.d_model, F = m.d_ff;
  const bool protos = m.moe.router == RouterKind::Prototypes;
  ra_.e = E;
  ra_.groups = protos ? m.moe.prototypes : 1;
  ra_.top_k = protos ? 1 : m.moe.top_k;
  ra_.normalize = !protos && m.moe.normalize();
  const size_t N = static_cast<size_t>(max_tokens), NS = N * S_;
  logits_ = arena_.floats(N * E);
  probs_ = arena_.floats(N * E);
  dlogits_ = arena_.floats(N * E);
  lse_ = arena_.floats(N * ra_.groups);
  gate_ = arena_.floats(NS);
  dgate_ = arena_.floats(NS);
  expert_ = arena_.ints(NS);
  pos_ = arena_.ints(NS);
  count_ = arena_.ints(E);
  demand_ = arena_.ints(E);
  offset_ = arena_.ints(E);
  xp_ = arena_.floats(NS * d);
  yp_ = arena_.floats(NS * d);
  dxp_ = arena_.floats(NS * d);
  dyp_ = arena_.floats(NS * d);
  h_pre_ = arena_.floats(NS * F);
  h_act_ = arena_.floats(NS * F);
  dh_ = arena_.floats(NS * F);
  count_h_.assign(E, 0);
  offset_h_.assign(E, 0);
}

MoeStats MoeLayer::forward(float* y, const float* x, int n, const Chunk& router,
                           const std::vector<const Chunk*>& experts, Phase phase) {
  const int E = m_.moe.experts, d = m_.d_model, F = m_.d_ff;
  x_ = x;
  n_ = n;
  ra_.n = n;
  // Router in fp32, no bias.
  linear_fwd(be_, logits_, x, router.param_of("router.weight"), nullptr, n, d, E);
  be_.router_fwd(probs_, lse_, expert_, gate_, logits_, ra_);
  be_.moe_assign(pos_, count_, demand_, expert_, n, S_, E, moe_capacity(m_.moe, n, phase));

  MoeStats st;
  std::vector<int32_t> demand_h(E);
  be_.to_host(count_h_.data(), count_, E * sizeof(int32_t));
  be_.to_host(demand_h.data(), demand_, E * sizeof(int32_t));
  int32_t rows = 0;
  for (int e = 0; e < E; ++e) {
    offset_h_[e] = rows;
    rows += count_h_[e];
  }
  be_.to_device(offset_, offset_h_.data(), E * sizeof(int32_t));
  st.load.assign(count_h_.begin(), count_h_.end());
  st.demand.assign(demand_h.begin(), demand_h.end());
  st.slots = static_cast<int64_t>(n) * S_;
  st.dropped = st.slots - rows;

  be_.moe_permute(xp_, x, expert_, pos_, offset_, n, S_, d);
  for (const Chunk* c : experts) {
    const int e = c->expert, r = count_h_[e];
    if (r == 0) continue;
    const size_t o = offset_h_[e];
    linear_fwd(be_, h_pre_ + o * F, xp_ + o * d, c->param_of("fc1.weight"), c->param_of("fc1.bias"),
               r, d, F);
    be_.gelu_fwd(h_act_ + o * F, h_pre_ + o * F, static_cast<size_t>(r) * F);
    linear_fwd(be_, yp_ + o * d, h_act_ + o * F, c->param_of("fc2.weight"),
               c->param_of("fc2.bias"), r, F, d);
  }
  be_.zero(y, static_cast<size_t>(n) * d * sizeof(float));
  be_.moe_unpermute(y, yp_, gate_, expert_, pos_, offset_, n, S_, d);
  const auto aux = be_.router_aux_fwd(probs_, lse_, demand_, ra_);
  st.aux = aux.aux;
  st.z = aux.z;
  return st;
}

void MoeLayer::backward(float* dx, const float* dy, const Chunk& router,
                        const std::vector<const Chunk*>& experts, float grad_scale) {
  const int E = m_.moe.experts, d = m_.d_model, F = m_.d_ff, n = n_;
  be_.moe_unpermute_bwd(dyp_, dgate_, dy, yp_, gate_, expert_, pos_, offset_, n, S_, d);
  for (const Chunk* c : experts) {
    const int e = c->expert, r = count_h_[e];
    if (r == 0) continue;
    const size_t o = offset_h_[e];
    linear_bwd(be_, dh_ + o * F, GradMode::Overwrite, c->grad_of("fc2.weight"),
               c->grad_of("fc2.bias"), dyp_ + o * d, h_act_ + o * F, c->param_of("fc2.weight"), r,
               F, d);
    be_.gelu_bwd(dh_ + o * F, h_pre_ + o * F, dh_ + o * F, static_cast<size_t>(r) * F);
    linear_bwd(be_, dxp_ + o * d, GradMode::Overwrite, c->grad_of("fc1.weight"),
               c->grad_of("fc1.bias"), dh_ + o * F, xp_ + o * d, c->param_of("fc1.weight"), r, d,
               F);
  }
  be_.moe_permute_bwd(dx, dxp_, expert_, pos_, offset_, n, S_, d);
  be_.router_bwd(dlogits_, dgate_, probs_, lse_, expert_, gate_, demand_,
                 static_cast<float>(m_.moe.aux_loss_coef * grad_scale),
                 static_cast<float>(m_.moe.z_loss_coef * grad_scale), ra_);
  linear_bwd(be_, dx, GradMode::Accumulate, router.grad_of("router.weight"), nullptr, dlogits_, x_,
             router.param_of("router.weight"), n, d, E);
}

}  // namespace m6
