// The mixture-of-experts ops and a whole tiny-model step of the CUDA backend
// against the CPU reference (see test_cuda_ops.cpp for the conventions). In
// half mode the router's tensors (logits, probabilities, gates, their
// gradients) stay fp32 and the expert rows are half values, as in MoeLayer.
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "core/model/model.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/cuda/tiny_model.h"

using namespace m6;
using namespace m6::cuda_test;

namespace {

struct RouteCase {
  int n, e, groups, top_k;
  bool normalize;
  bool ties;  // logits on a coarse grid, so equal probabilities are common
};

std::string describe(const RouteCase& r) {
  return " N" + std::to_string(r.n) + " E" + std::to_string(r.e) + " G" +
         std::to_string(r.groups) + " k" + std::to_string(r.top_k) +
         (r.normalize ? " norm" : "") + (r.ties ? " ties" : "");
}

void test_route(Backend& c, Backend& g, const RouteCase& rc) {
  Twin t{c, g};
  const std::string s = describe(rc);
  const RouterArgs a{rc.n, rc.e, rc.groups, rc.top_k, rc.normalize};
  const int N = rc.n, E = rc.e, G = rc.groups, S = G * rc.top_k;
  std::vector<float> lg = randn(static_cast<size_t>(N) * E, 2.0f);
  if (rc.ties)
    for (float& x : lg) x = std::round(x);
  auto logits = t.f32(lg), probs = t.zeros_f(static_cast<size_t>(N) * E);
  auto lse = t.zeros_f(static_cast<size_t>(N) * G), gate = t.zeros_f(static_cast<size_t>(N) * S);
  auto expert = t.i(std::vector<int32_t>(static_cast<size_t>(N) * S, 0));
  c.router_fwd(probs.fc(), lse.fc(), expert.ic(), gate.fc(), logits.fc(), a);
  g.router_fwd(probs.fg(), lse.fg(), expert.ig(), gate.fg(), logits.fg(), a);
  t.check_f32("router_fwd probs" + s, probs, kReduce);
  t.check_f32("router_fwd lse" + s, lse, kReduce);
  t.check_i("router_fwd expert" + s, expert);
  t.check_f32("router_fwd gate" + s, gate, kReduce);

  // From here on both sides use the CPU's routing, so that a tie broken
  // differently (reported above) does not cascade into every later check.
  std::vector<int32_t> ex(static_cast<size_t>(N) * S);
  c.to_host(ex.data(), expert.c, ex.size() * 4);
  // The last expert gets no token: its slots move to expert 0.
  for (auto& x : ex)
    if (x == E - 1 && E > 1 && G == 1 && rc.top_k < E) x = 0;
  // (a token may now name expert 0 twice; the ops below do not care)
  Twin u{c, g};
  auto ex2 = u.i(ex);
  for (int capacity : {0, 3}) {
    const std::string sc = s + " cap" + std::to_string(capacity);
    auto pos = u.i(std::vector<int32_t>(ex.size(), 7)), count = u.i(std::vector<int32_t>(E, 7));
    auto demand = u.i(std::vector<int32_t>(E, 7));
    c.moe_assign(pos.ic(), count.ic(), demand.ic(), ex2.ic(), N, S, E, capacity);
    g.moe_assign(pos.ig(), count.ig(), demand.ig(), ex2.ig(), N, S, E, capacity);
    u.check_i("moe_assign pos" + sc, pos);
    u.check_i("moe_assign count" + sc, count);
    u.check_i("moe_assign demand" + sc, demand);

    std::vector<int32_t> cnt(E), off(E);
    c.to_host(cnt.data(), count.c, E * 4);
    int rows = 0;
    for (int e = 0; e < E; ++e) off[e] = rows, rows += cnt[e];
    const int d = 259;
    auto offset = u.i(off);
    auto x = u.f(randn(static_cast<size_t>(N) * d)), xp = u.f(randn(static_cast<size_t>(rows) * d + 1));
    c.moe_permute(xp.fc(), x.fc(), ex2.ic(), pos.ic(), offset.ic(), N, S, d);
    g.moe_permute(xp.fg(), x.fg(), ex2.ig(), pos.ig(), offset.ig(), N, S, d);
    u.check_f32("moe_permute" + sc, xp, kExact);  // moves (rounded) rows: not rounded again
    c.moe_permute_bwd(x.fc(), xp.fc(), ex2.ic(), pos.ic(), offset.ic(), N, S, d);
    g.moe_permute_bwd(x.fg(), xp.fg(), ex2.ig(), pos.ig(), offset.ig(), N, S, d);
    u.check_f("moe_permute_bwd" + sc, x, kElem);
    auto gt = u.f32(randn(ex.size())), y = u.f(randn(static_cast<size_t>(N) * d));
    c.moe_unpermute(y.fc(), xp.fc(), gt.fc(), ex2.ic(), pos.ic(), offset.ic(), N, S, d);
    g.moe_unpermute(y.fg(), xp.fg(), gt.fg(), ex2.ig(), pos.ig(), offset.ig(), N, S, d);
    u.check_f("moe_unpermute" + sc, y, kElem);
    auto dyp = u.f(randn(static_cast<size_t>(rows) * d + 1)), dgate = u.f32(randn(ex.size()));
    c.moe_unpermute_bwd(dyp.fc(), dgate.fc(), y.fc(), xp.fc(), gt.fc(), ex2.ic(), pos.ic(),
                        offset.ic(), N, S, d);
    g.moe_unpermute_bwd(dyp.fg(), dgate.fg(), y.fg(), xp.fg(), gt.fg(), ex2.ig(), pos.ig(),
                        offset.ig(), N, S, d);
    u.check_f("moe_unpermute_bwd dyp" + sc, dyp, kElem);
    u.check_f32("moe_unpermute_bwd dgate" + sc, dgate, kReduce);

    // aux / z losses and the router backward, on the original routing
    const Backend::AuxLosses lc = c.router_aux_fwd(probs.fc(), lse.fc(), demand.ic(), a);
    const Backend::AuxLosses lg2 = g.router_aux_fwd(probs.fg(), lse.fg(), demand.ig(), a);
    expect_close("router_aux_fwd aux,z" + sc, {static_cast<float>(lg2.aux), static_cast<float>(lg2.z)},
                 {static_cast<float>(lc.aux), static_cast<float>(lc.z)}, kReduce);
    auto dg = u.f32(randn(ex.size())), dlogits = u.f32(randn(static_cast<size_t>(N) * E));
    for (bool with_dgate : {true, false}) {
      const std::string sd = sc + (with_dgate ? "" : " no dgate");
      c.router_bwd(dlogits.fc(), with_dgate ? dg.fc() : nullptr, probs.fc(), lse.fc(),
                   expert.ic(), gate.fc(), demand.ic(), 0.3f, 0.1f, a);
      g.router_bwd(dlogits.fg(), with_dgate ? dg.fg() : nullptr, probs.fg(), lse.fg(),
                   expert.ig(), gate.fg(), demand.ig(), 0.3f, 0.1f, a);
      u.check_f32("router_bwd" + sd, dlogits, kReduce);
    }
  }
}

}  // namespace

void test_moe(Backend& c, Backend& g) {
  const RouteCase cases[] = {
      {1, 8, 1, 2, true, false},     // one token
      {257, 4, 1, 4, true, false},   // top_k = E
      {257, 8, 1, 1, false, true},   // top-1, ties
      {33, 6, 2, 1, false, false},   // prototypes: 2 groups of 3
      {259, 8, 1, 2, true, true},    // top-2, ties
  };
  for (const RouteCase& rc : cases) test_route(c, g, rc);
  {  // an expert id outside [0, E) throws, as on the CPU (CUDA: deferred to check_errors)
    Twin t{c, g};
    auto ex = t.i({0, 9}), pos = t.i({0, 0}), cnt = t.i({0, 0}), dem = t.i({0, 0});
    bool threw = false;
    try {
      g.moe_assign(pos.ig(), cnt.ig(), dem.ig(), ex.ig(), 2, 1, 2, 0);
      g.check_errors();
    } catch (const Error&) {
      threw = true;
    }
    expect_true("moe_assign throws on an expert outside [0, E)", threw);
  }
}

// Tiny MoE model, same init on both backends: loss and every gradient. Half
// mode: precision.compute on both models, and whole-tensor tolerances: the
// rounding is the same but an fp32 difference that moves one value across a
// rounding boundary (one ulp, see half_limit) propagates through about 20
// rounded ops of forward and backward, so each gradient may differ by a few
// units of u relative to its tensor's largest value: 16u (bf16 0.0625, fp16
// 0.0078, in line with scripts/gpu-check.sh's whole-model bf16 tolerance of
// 5e-2), and the loss (an fp32 mean of fp32 cross-entropies of rounded
// logits) by 4u relative.
void test_model_step(Backend& c, Backend& g) {
  Config cfg = tiny_moe_config(2, 1, 7);
  cfg.model.moe.aux_loss_coef = 0.3;
  cfg.model.moe.z_loss_coef = 0.1;
  Batch b = test::random_batch(cfg, 5);
  b.targets[3] = -1;
  const int E = cfg.model.moe.experts;
  Model mc(cfg, c, ExpertRange{0, E}), mg(cfg, g, ExpertRange{0, E});
  mc.init_params(cfg.train.seed);
  mg.init_params(cfg.train.seed);
  const MicroStats sc = mc.forward(b, Phase::Train), sg = mg.forward(b, Phase::Train);
  mc.backward(1.0f);
  mg.backward(1.0f);
  const float lg = static_cast<float>(sg.loss(cfg.model.moe)),
              lc = static_cast<float>(sc.loss(cfg.model.moe));
  const auto gc = mc.logical_tensors(true), gg = mg.logical_tensors(true);
  expect_true("model: same tensor list", gc.size() == gg.size());
  if (!g_half) {
    expect_close("model loss", {lg}, {lc}, kModel);
    for (size_t i = 0; i < gc.size() && i < gg.size(); ++i)
      expect_close("model grad " + gc[i].name, gg[i].values, gc[i].values, kModel);
    return;
  }
  const double u = half_unit_roundoff(*g_half);
  const std::string h = std::string(" ") + half_name(*g_half);
  expect_close_norm("model loss" + h, {lg}, {lc}, 4 * u);
  for (size_t i = 0; i < gc.size() && i < gg.size(); ++i)
    expect_close_norm("model grad " + gc[i].name + h, gg[i].values, gc[i].values, 16 * u);
}
