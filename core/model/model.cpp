#include "core/model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

#include "core/model/linear.h"
#include "core/util/error.h"
#include "core/util/log.h"

namespace m6 {

double MicroStats::aux_sum() const {
  double s = 0;
  for (const auto& m : moe) s += m.aux;
  return s;
}
double MicroStats::z_sum() const {
  double s = 0;
  for (const auto& m : moe) s += m.z;
  return s;
}
double MicroStats::loss(const MoeConfig& c) const {
  return ce() + c.aux_loss_coef * aux_sum() + c.z_loss_coef * z_sum();
}

// Activations one logical layer keeps for backward. N = B*T tokens.
struct Model::LayerActs {
  float *ln1_out, *ln1_mean, *ln1_rstd;  // [N,d], [N], [N]
  float* qkv;                            // [N,3d]
  float* att;                            // what attention_fwd saves (Backend::attention_buffers)
  float* atty;                           // [N,d] attention output before proj
  float* res1;                           // [N,d] residual after attention
  float *ln2_out, *ln2_mean, *ln2_rstd;  // [N,d], [N], [N]
  float *fc1_pre, *fc1_act;              // [N,F] (dense layers only)
};

Model::Model(const Config& cfg, Backend& be, ExpertRange experts, MoeExchange ex)
    : cfg_(cfg), be_(be), experts_(experts), arena_(be) {
  const ModelConfig& m = cfg_.model;
  const int L = m.n_layers, d = m.d_model, F = m.d_ff, V = m.vocab_size, H = m.n_heads;
  B_ = cfg_.train.micro_batch;
  T_ = cfg_.train.seq_len;
  max_tokens_ = B_ * T_;
  const size_t N = static_cast<size_t>(max_tokens_);

  chunks_ = plan_chunks(m, experts);
  chunk_store_ = std::make_unique<ChunkStorage>(be_, chunks_, cfg_.offload);
  size_window();
  const std::optional<HalfType> half = compute_half_type(cfg_.precision.compute);
  round_ = ActRound(be_, half);
  if (half) compute_ = std::make_unique<ComputeWeights>(be_, chunks_, *half);
  index_chunks();

  tokens_ = arena_.ints(N);
  targets_ = arena_.ints(N);
  for (int l = 0; l <= L; ++l) residual_.push_back(arena_.floats(N * d));
  // train.recompute: None keeps every layer's activations; Attention shares
  // one attention-probability buffer between layers (recomputed from qkv in
  // backward); Layer keeps only residual_[l] and shares one set of
  // activations (and one MoE layer's buffers) between all layers. What
  // attention keeps is the backend's choice: the CPU the probabilities
  // [B,H,T,T]; the CUDA backend's fused kernel a log-sum-exp [B,H,T], which
  // every layer keeps under recompute attention too (nothing to recompute).
  recompute_ = cfg_.train.recompute;
  att_bufs_ = be_.attention_buffers(B_, T_, H);
  const size_t att_n = att_bufs_.saved;
  att_recompute_ = recompute_ == Recompute::Attention && att_bufs_.probabilities;
  float* att_shared = att_recompute_ ? arena_.floats(att_n) : nullptr;
  bool any_dense = false, any_moe = false;
  for (int l = 0; l < L; ++l) (m.is_moe_layer(l) ? any_moe : any_dense) = true;
  const int sets = recompute_ == Recompute::Layer ? 1 : L;
  for (int l = 0; l < sets; ++l) {
    auto a = std::make_unique<LayerActs>();
    a->ln1_out = arena_.floats(N * d);
    a->ln1_mean = arena_.floats(N);
    a->ln1_rstd = arena_.floats(N);
    a->qkv = arena_.floats(N * 3 * d);
    a->att = att_shared ? att_shared : arena_.floats(att_n);
    a->atty = arena_.floats(N * d);
    a->res1 = arena_.floats(N * d);
    a->ln2_out = arena_.floats(N * d);
    a->ln2_mean = arena_.floats(N);
    a->ln2_rstd = arena_.floats(N);
    const bool dense = recompute_ == Recompute::Layer ? any_dense : !m.is_moe_layer(l);
    const bool moe = recompute_ == Recompute::Layer ? any_moe : m.is_moe_layer(l);
    a->fc1_pre = dense ? arena_.floats(N * F) : nullptr;
    a->fc1_act = dense ? arena_.floats(N * F) : nullptr;
    moe_.push_back(moe ? std::make_unique<MoeLayer>(be_, m, max_tokens_, l, ex) : nullptr);
    if (moe) moe_.back()->set_rounding(round_);
    acts_.push_back(std::move(a));
  }
  lnf_out_ = arena_.floats(N * d);
  lnf_mean_ = arena_.floats(N);
  lnf_rstd_ = arena_.floats(N);
  logits_ = arena_.floats(N * V);
  losses_ = arena_.floats(N);
  dres_ = arena_.floats(N * d);
  dtmp_ = arena_.floats(N * d);
  dqkv_ = arena_.floats(N * 3 * d);
  dff_ = arena_.floats(N * F);
  datt_ = arena_.floats(att_bufs_.scratch);
  for (int l = 0; l < L; ++l)
    if (m.is_moe_layer(l)) stats_per_slot_ += static_cast<size_t>(m.moe.experts) + 2;

  reserve_stats(1);  // the trainer reserves one slot per micro-batch of a step

  graphs_off_ = cfg_.train.graphs == GraphMode::Off ? "train.graphs is off" : graphs_blocker(cfg_);
  if (graphs_off_.empty() && !be_.graphs_available())
    graphs_off_ = fmt("the backend (", be_.name(), ") records no graphs");
  graphs_ = graphs_off_.empty();
}

Model::~Model() {
  if (stats_ != nullptr) be_.release(stats_);
}

void Model::reserve_stats(int slots) {
  if (slots <= stats_slots_) return;
  if (stats_ != nullptr) be_.release(stats_);  // first: the high-water mark is the new size
  // Slot -1 (the first) is the graph's: a replay writes its recorded address,
  // so a recording made before this buffer existed is made anew.
  stats_ = static_cast<double*>(be_.alloc(stats_per_slot_ * (slots + 1) * sizeof(double)));
  stats_slots_ = slots;
  graph_.reset();
}

double* Model::stats_slot(int slot) {
  M6_CHECK(slot >= 0, "stats slot ", slot, " is negative");
  if (slot >= stats_slots_) grow_stats(slot + 1);
  return stats_at(slot);
}

void Model::grow_stats(int slots) {
  // Grown in the middle of a step (no reserve_stats): the slots written so far move along.
  const size_t keep = stats_per_slot_ * (stats_slots_ + 1) * sizeof(double);
  double* old = stats_;
  stats_ = nullptr;
  stats_slots_ = 0;
  reserve_stats(slots);
  be_.copy(stats_, old, keep);
  be_.release(old);
}

// Per-set lookups for forward and backward, built once per layout (a scan of
// all chunks per layer and step is quadratic in the layer count for the real
// model of M6-10T's shape: 48 layers x 61,440 expert chunks per rank on 8 ranks).
void Model::index_chunks() {
  const int sets = num_layer_sets(cfg_.model);
  set_layer_.assign(sets, nullptr);
  set_experts_.assign(sets, {});
  set_host_.assign(sets, {});
  for (auto& c : chunks_) {
    if (c.layer < 0 || c.layer >= sets) continue;
    if (c.kind == ChunkKind::Layer) set_layer_[c.layer] = &c;
    if (c.kind == ChunkKind::Expert) set_experts_[c.layer].push_back(&c);
    if (c.master_on_host) set_host_[c.layer].push_back(&c);
  }
}

const Chunk& Model::layer_chunk(int layer) const {
  const Chunk* c = set_layer_.at(layer_set(cfg_.model, layer));
  if (c == nullptr) throw Error(fmt("no chunk for layer ", layer));
  return *c;
}

const std::vector<const Chunk*>& Model::expert_chunks(int layer) const {
  return set_experts_.at(layer_set(cfg_.model, layer));
}

void Model::init_params(uint64_t seed) {
  for (auto& c : chunks_) {
    std::vector<float> host(c.numel);
    init_chunk_host(c, seed, host.data());
    be_.to_device(c.param, host.data(), c.numel * sizeof(float));
    be_.zero(c.adam_m, c.numel * sizeof(float));
    be_.zero(c.adam_v, c.numel * sizeof(float));
  }
  zero_grads();
}

void Model::zero_grads() {
  for (auto& c : chunks_) be_.zero(c.grad, c.numel * sizeof(float));
}

void Model::delink(DelinkOptimizer opt) {
  if (cfg_.model.sharing.groups == 0)
    throw Error("delink: this model shares no layers (model.sharing.groups is 0)");
  const ModelConfig real = delinked_model(cfg_.model);
  std::vector<Chunk> chunks = plan_chunks(real, experts_);
  auto store = std::make_unique<ChunkStorage>(be_, chunks, cfg_.offload);
  delink_chunks(be_, cfg_.model, chunks_, chunks, opt);
  if (compute_) compute_ = std::make_unique<ComputeWeights>(be_, chunks, *round_.type());
  chunks_ = std::move(chunks);
  chunk_store_ = std::move(store);  // releases the pseudo model's buffers
  cfg_.model.sharing = real.sharing;
  window_reset();
  index_chunks();
  size_window();  // the real model may stream more of a layer than the pseudo one did
  graph_.reset();  // it holds the pseudo model's pointers
  warm_ = false;
}

void Model::size_window() {
  // Two slots of the largest streamed layer set (kept when large enough).
  std::vector<size_t> per_set(num_layer_sets(cfg_.model), 0);
  for (const Chunk& c : chunks_)
    if (c.master_on_host) per_set[c.layer] += c.numel;
  const size_t need = per_set.empty() ? 0 : *std::max_element(per_set.begin(), per_set.end());
  if (need <= window_floats_) return;
  window_floats_ = need;
  for (float*& w : window_) w = arena_.floats(window_floats_);
}

void Model::window_reset() {
  for (int s = 0; s < 2; ++s)
    if (window_set_[s] >= 0 && !window_ready_[s]) be_.copy_async_wait(s);  // no copy left in flight
  window_set_[0] = window_set_[1] = -1;
  window_ready_[0] = window_ready_[1] = false;
  for (Chunk& c : chunks_) c.streamed = nullptr;
}

void Model::stream_set(int set, int keep, bool use_now) {
  if (window_floats_ == 0) return;
  int slot = window_set_[0] == set ? 0 : window_set_[1] == set ? 1 : -1;
  if (slot < 0) {
    slot = window_set_[0] == -1 ? 0 : window_set_[1] == -1 ? 1 : window_set_[0] == keep;
    if (window_set_[slot] >= 0) {
      if (!window_ready_[slot]) be_.copy_async_wait(slot);
      for (Chunk* c : set_host_[window_set_[slot]]) c->streamed = nullptr;
    }
    size_t at = 0;
    for (Chunk* c : set_host_.at(set)) {
      be_.copy_async(slot, window_[slot] + at, c->param, c->numel * sizeof(float));
      c->streamed = window_[slot] + at;
      at += c->numel;
    }
    window_set_[slot] = set;
    window_ready_[slot] = false;
  }
  if (!use_now || window_ready_[slot]) return;
  be_.copy_async_wait(slot);
  // The compute copy of a host master is its streamed copy, rounded like
  // ComputeWeights rounds the resident chunks' under bf16/fp16 compute.
  if (round_.active())
    for (Chunk* c : set_host_[set])
      for (const auto& t : c->tensors)
        if (!keeps_fp32_compute_copy(t)) round_(c->streamed + t.offset, t.numel);
  window_ready_[slot] = true;
}

void Model::stream_layer(int l, int next) {
  const int set = layer_set(cfg_.model, l);
  stream_set(set, -1, true);
  // Queued now, waited for when layer `next` runs: the copy overlaps layer l.
  if (next >= 0 && next < cfg_.model.n_layers) stream_set(layer_set(cfg_.model, next), set, false);
}

MoeLayer* Model::moe_at(int layer) {
  if (!cfg_.model.is_moe_layer(layer)) return nullptr;
  MoeLayer* moe = moe_[recompute_ == Recompute::Layer ? 0 : layer].get();
  moe->set_layer(layer);
  return moe;
}

void Model::layer_forward(int l, Phase phase, MicroStats* st, double* stats) {
  const ModelConfig& m = cfg_.model;
  const int B = B_, T = T_, N = B * T;
  const int d = m.d_model, F = m.d_ff, H = m.n_heads;
  const size_t Nd = static_cast<size_t>(N) * d, NF = static_cast<size_t>(N) * F;
  const ActRound& rnd = round_;
  const Chunk& c = layer_chunk(l);
  LayerActs& a = acts(l);
  const float* x = residual_[l];
  be_.layernorm_fwd(a.ln1_out, a.ln1_mean, a.ln1_rstd, x, c.weight_of("ln1.weight"),
                    c.weight_of("ln1.bias"), N, d);
  rnd(a.ln1_out, Nd);
  linear_fwd(be_, a.qkv, a.ln1_out, c.weight_of("qkv.weight"), c.weight_of("qkv.bias"), N, d,
             3 * d);
  rnd(a.qkv, 3 * Nd);
  be_.attention_fwd(a.atty, a.att, a.qkv, B, T, H, d);
  rnd(a.atty, Nd);
  if (att_bufs_.probabilities) rnd(a.att, att_bufs_.saved);
  linear_fwd(be_, dtmp_, a.atty, c.weight_of("proj.weight"), c.weight_of("proj.bias"), N, d, d);
  rnd(dtmp_, Nd);
  // The residual add fused with the LayerNorm after it (one kernel on the
  // GPU; the CPU runs the ops one by one); bf16/fp16 round the sum in between
  // and the LayerNorm's output, in the same kernel.
  if (rnd.active()) {
    be_.add_layernorm_fwd_half(a.res1, a.ln2_out, a.ln2_mean, a.ln2_rstd, x, dtmp_,
                               c.weight_of("ln2.weight"), c.weight_of("ln2.bias"), N, d,
                               *rnd.type());
  } else {
    be_.add_layernorm_fwd(a.res1, a.ln2_out, a.ln2_mean, a.ln2_rstd, x, dtmp_,
                          c.weight_of("ln2.weight"), c.weight_of("ln2.bias"), N, d);
  }
  if (MoeLayer* moe = moe_at(l)) {
    if (st) {
      double* ds = stats + 1 + st->moe.size() * moe->stats_doubles();
      st->moe.push_back(moe->forward(dtmp_, a.ln2_out, N, c, expert_chunks(l), phase, ds));
    } else {  // recomputed in backward: the statistics are not kept
      moe->forward(dtmp_, a.ln2_out, N, c, expert_chunks(l), phase, nullptr);
    }
  } else {
    if (rnd.active()) {  // the GELU reads the rounded pre-activation
      linear_fwd(be_, a.fc1_pre, a.ln2_out, c.weight_of("fc1.weight"), c.weight_of("fc1.bias"), N,
                 d, F);
      be_.gelu_fwd_half(a.fc1_act, a.fc1_pre, NF, *rnd.type());  // rounds pre, then act
    } else {  // one GEMM with a bias+GELU epilogue on the GPU
      linear_gelu_fwd(be_, a.fc1_act, a.fc1_pre, a.ln2_out, c.weight_of("fc1.weight"),
                      c.weight_of("fc1.bias"), N, d, F);
    }
    linear_fwd(be_, dtmp_, a.fc1_act, c.weight_of("fc2.weight"), c.weight_of("fc2.bias"), N, F,
               d);
    rnd(dtmp_, Nd);
  }
  // Recomputing writes the same bits residual_[l+1] already holds: skip it.
  if (st) {
    be_.add(residual_[l + 1], a.res1, dtmp_, Nd);
    rnd(residual_[l + 1], Nd);
  }
}

MicroStats Model::prologue(const Batch& batch) {
  const ModelConfig& m = cfg_.model;
  const int B = batch.B, T = batch.T, N = B * T, V = m.vocab_size;
  M6_CHECK(N <= max_tokens_ && T <= cfg_.train.seq_len, "batch ", B, "x", T, " exceeds the ",
           max_tokens_, " tokens and seq_len ", cfg_.train.seq_len, " the model was sized for");
  B_ = B;
  T_ = T;
  // Targets are checked here, on the host, so that no kernel's check has to
  // be read back in the step (a device reports a bad index at check_errors).
  MicroStats st;
  for (int i = 0; i < N; ++i) {
    const int32_t t = batch.targets[i];
    if (t >= V) throw Error(fmt("crossentropy: target ", t, " at row ", i, " is >= vocab (", V, ")"));
    st.n_valid += t >= 0;
  }
  n_valid_last_ = st.n_valid;
  be_.to_device(tokens_, batch.inputs.data(), N * sizeof(int32_t));
  be_.to_device(targets_, batch.targets.data(), N * sizeof(int32_t));
  // The compute copy follows the master weights (changed by the optimizer,
  // a checkpoint load or a delink since the last forward).
  if (compute_) compute_->refresh(chunks_);
  window_reset();  // the optimizer (or a checkpoint load) may have changed host masters
  return st;
}

void Model::forward_body(Phase phase, MicroStats& st, double* stats) {
  const ModelConfig& m = cfg_.model;
  const int B = B_, T = T_, N = B * T;
  const int d = m.d_model, V = m.vocab_size, L = m.n_layers;
  const ActRound& rnd = round_;
  const size_t Nd = static_cast<size_t>(N) * d;

  const Chunk& emb = chunks_.front();
  const Chunk& head = chunks_.back();
  be_.embedding_fwd(residual_[0], tokens_, emb.weight_of("tok_emb.weight"),
                    emb.weight_of("pos_emb.weight"), B, T, d);
  rnd(residual_[0], Nd);
  for (int l = 0; l < L; ++l) {
    stream_layer(l, l + 1);
    layer_forward(l, phase, &st, stats);
  }
  be_.layernorm_fwd(lnf_out_, lnf_mean_, lnf_rstd_, residual_[L], head.weight_of("ln_f.weight"),
                    head.weight_of("ln_f.bias"), N, d);
  rnd(lnf_out_, Nd);
  // Tied LM head: logits[N,V] = lnf_out[N,d] tok_emb[V,d]^T
  linear_fwd(be_, logits_, lnf_out_, emb.weight_of("tok_emb.weight"), nullptr, N, d, V);
  rnd(logits_, static_cast<size_t>(N) * V);
  be_.crossentropy_fwd(losses_, logits_, logits_, targets_, N, V);  // logits_ now holds probs (fp32)
  be_.sum_to(stats, losses_, N);
}

MicroStats Model::forward_deferred(const Batch& batch, Phase phase, int slot) {
  double* stats = stats_slot(slot);
  MicroStats st = prologue(batch);
  forward_body(phase, st, stats);
  return st;
}

MicroStats Model::forward(const Batch& batch, Phase phase) {
  MicroStats st = forward_deferred(batch, phase, 0);
  collect_stats(&st, 1);
  return st;
}

MicroStats Model::train_micro(const Batch& batch, float grad_scale, int slot) {
  if (!graphs_) {
    MicroStats st = forward_deferred(batch, Phase::Train, slot);
    backward(grad_scale);
    return st;
  }
  // A graph writes slot -1 (its recorded address), copied to `slot` after.
  double* dst = stats_slot(slot);
  MicroStats st = prologue(batch);
  GraphKey key{B_, T_, st.n_valid, 0};
  std::memcpy(&key.grad_scale_bits, &grad_scale, sizeof grad_scale);
  auto eager = [&] {
    forward_body(Phase::Train, st, stats_at(-1));
    backward(grad_scale);
  };
  if (graph_ && key == graph_key_) {
    be_.graph_launch(*graph_);
    ++replays_;
  } else if (warm_ && key == warm_key_) {
    graph_.reset();
    MicroStats rec = st;
    be_.capture_begin();
    try {
      forward_body(Phase::Train, rec, stats_at(-1));
      backward(grad_scale);
    } catch (const Error& e) {
      // A forbidden op inside the capture: the step runs eagerly, and so
      // does every later one (the backend abandoned the capture).
      (void)be_.capture_end();
      graphs_ = false;
      graphs_off_ = fmt("the capture failed: ", e.what());
      log_warn(fmt("train.graphs: ", graphs_off_, "; micro-batches run without graphs"));
      graph_.reset();
    } catch (...) {
      // Anything else (out of memory, ...) propagates, but the stream must
      // not stay in capture mode: later ops would be recorded, not run.
      try {
        (void)be_.capture_end();
      } catch (...) {
      }
      throw;
    }
    if (graphs_) graph_ = be_.capture_end();
    if (!graph_) {
      if (graphs_) graphs_off_ = "the backend could not record the micro-batch";
      graphs_ = false;
      eager();
    } else {
      graph_key_ = key;
      be_.graph_launch(*graph_);
      ++replays_;
    }
  } else {
    eager();  // the first micro-batch of a key runs eagerly (warm-up)
    warm_ = true;
    warm_key_ = key;
  }
  be_.copy(dst, stats_at(-1), stats_per_slot_ * sizeof(double));
  return st;
}

void Model::collect_stats(MicroStats* st, int count) {
  be_.check_errors();
  if (count <= 0) return;
  M6_CHECK(count <= stats_slots_, "collect_stats: ", count, " slots asked, ", stats_slots_,
           " written");
  std::vector<double> h(stats_per_slot_ * count);
  be_.to_host(h.data(), stats_at(0), h.size() * sizeof(double));
  const MoeLayer* moe = nullptr;
  for (const auto& p : moe_)
    if (p) moe = p.get();
  for (int i = 0; i < count; ++i) {
    const double* at = h.data() + stats_per_slot_ * i;
    st[i].ce_sum = at[0];
    for (size_t j = 0; j < st[i].moe.size(); ++j)
      moe->finish_stats(st[i].moe[j], at + 1 + j * moe->stats_doubles());
  }
}

void Model::backward(float grad_scale) {
  const ModelConfig& m = cfg_.model;
  const int B = B_, T = T_, N = B * T;
  const int d = m.d_model, F = m.d_ff, V = m.vocab_size, H = m.n_heads, L = m.n_layers;
  Chunk& emb = chunks_.front();
  Chunk& head = chunks_.back();
  const float dscale = n_valid_last_ ? grad_scale / static_cast<float>(n_valid_last_) : 0.0f;

  const ActRound& rnd = round_;
  const size_t Nd = static_cast<size_t>(N) * d, NF = static_cast<size_t>(N) * F;

  be_.crossentropy_bwd(logits_, logits_, targets_, dscale, N, V);  // logits_ now dlogits
  rnd(logits_, static_cast<size_t>(N) * V);
  // lnf_out -> logits through the tied embedding: dlnf = dlogits wte; dwte += dlogits^T lnf_out
  linear_bwd(be_, dtmp_, GradMode::Overwrite, emb.grad_of("tok_emb.weight"), nullptr, logits_,
             lnf_out_, emb.weight_of("tok_emb.weight"), N, d, V);
  rnd(dtmp_, Nd);
  be_.zero(dres_, Nd * sizeof(float));
  be_.layernorm_bwd(dres_, head.grad_of("ln_f.weight"), head.grad_of("ln_f.bias"), dtmp_,
                    residual_[L], lnf_mean_, lnf_rstd_, head.weight_of("ln_f.weight"), N, d);
  rnd(dres_, Nd);

  for (int l = L - 1; l >= 0; --l) {
    stream_layer(l, l - 1);
    if (recompute_ == Recompute::Layer) layer_forward(l, Phase::Train, nullptr, nullptr);
    const Chunk& c = layer_chunk(l);
    LayerActs& a = acts(l);
    // dres_ is d loss / d residual[l+1] = res1 + ffn(ln2(res1)).
    if (MoeLayer* moe = moe_at(l)) {
      be_.zero(dtmp_, Nd * sizeof(float));
      moe->backward(dtmp_, dres_, c, expert_chunks(l), grad_scale);
    } else {
      linear_bwd(be_, dff_, GradMode::Overwrite, c.grad_of("fc2.weight"), c.grad_of("fc2.bias"),
                 dres_, a.fc1_act, c.weight_of("fc2.weight"), N, F, d);
      if (rnd.active())  // rounds the incoming gradient, then the GELU's
        be_.gelu_bwd_half(dff_, a.fc1_pre, dff_, NF, *rnd.type());
      else
        be_.gelu_bwd(dff_, a.fc1_pre, dff_, NF);
      linear_bwd(be_, dtmp_, GradMode::Overwrite, c.grad_of("fc1.weight"), c.grad_of("fc1.bias"),
                 dff_, a.ln2_out, c.weight_of("fc1.weight"), N, d, F);
    }
    rnd(dtmp_, Nd);
    be_.layernorm_bwd(dres_, c.grad_of("ln2.weight"), c.grad_of("ln2.bias"), dtmp_, a.res1,
                      a.ln2_mean, a.ln2_rstd, c.weight_of("ln2.weight"), N, d);
    rnd(dres_, Nd);
    // The shared probabilities hold another layer's: recompute this layer's
    // from its kept qkv (the output goes to dqkv_, free until attention_bwd),
    // rounded as the forward stored them.
    if (att_recompute_) {
      be_.attention_fwd(dqkv_, a.att, a.qkv, B, T, H, d);
      rnd(a.att, att_bufs_.saved);
    }
    // dres_ is now d loss / d res1 = x + proj(attn(ln1(x))).
    linear_bwd(be_, dtmp_, GradMode::Overwrite, c.grad_of("proj.weight"), c.grad_of("proj.bias"),
               dres_, a.atty, c.weight_of("proj.weight"), N, d, d);
    rnd(dtmp_, Nd);
    be_.attention_bwd(dqkv_, datt_, dtmp_, a.qkv, a.atty, a.att, B, T, H, d);
    rnd(dqkv_, 3 * Nd);
    linear_bwd(be_, dtmp_, GradMode::Overwrite, c.grad_of("qkv.weight"), c.grad_of("qkv.bias"),
               dqkv_, a.ln1_out, c.weight_of("qkv.weight"), N, d, 3 * d);
    rnd(dtmp_, Nd);
    be_.layernorm_bwd(dres_, c.grad_of("ln1.weight"), c.grad_of("ln1.bias"), dtmp_, residual_[l],
                      a.ln1_mean, a.ln1_rstd, c.weight_of("ln1.weight"), N, d);
    rnd(dres_, Nd);
  }
  be_.embedding_bwd(emb.grad_of("tok_emb.weight"), emb.grad_of("pos_emb.weight"), dres_, tokens_,
                    B, T, d);
}

std::vector<Model::NamedTensor> Model::logical_tensors(bool grads) const {
  // One host copy per chunk, however many logical layers share it.
  std::map<const Chunk*, std::vector<float>> host;
  for (const auto& c : chunks_) {
    auto& h = host[&c];
    h.resize(c.numel);
    be_.to_host(h.data(), grads ? c.grad : c.param, c.numel * sizeof(float));
  }
  std::vector<NamedTensor> out;
  for_each_logical_tensor(cfg_.model, chunks_,
                          [&](const Chunk& c, const ParamTensor& t, const std::string& name) {
                            const float* p = host[&c].data() + t.offset;
                            out.push_back({name, t.shape, std::vector<float>(p, p + t.numel)});
                          });
  return out;
}

}  // namespace m6
