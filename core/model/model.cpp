#include "core/model/model.h"

#include <cmath>
#include <map>

#include "core/model/linear.h"
#include "core/util/error.h"

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
  float* att;                            // [B,H,T,T] softmax probabilities
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
  chunk_store_ = std::make_unique<ChunkStorage>(be_, chunks_);
  index_chunks();

  tokens_ = arena_.ints(N);
  targets_ = arena_.ints(N);
  for (int l = 0; l <= L; ++l) residual_.push_back(arena_.floats(N * d));
  for (int l = 0; l < L; ++l) {
    auto a = std::make_unique<LayerActs>();
    a->ln1_out = arena_.floats(N * d);
    a->ln1_mean = arena_.floats(N);
    a->ln1_rstd = arena_.floats(N);
    a->qkv = arena_.floats(N * 3 * d);
    a->att = arena_.floats(static_cast<size_t>(B_) * H * T_ * T_);
    a->atty = arena_.floats(N * d);
    a->res1 = arena_.floats(N * d);
    a->ln2_out = arena_.floats(N * d);
    a->ln2_mean = arena_.floats(N);
    a->ln2_rstd = arena_.floats(N);
    if (m.is_moe_layer(l)) {
      a->fc1_pre = a->fc1_act = nullptr;
      moe_.push_back(std::make_unique<MoeLayer>(be_, m, max_tokens_, l, ex));
    } else {
      a->fc1_pre = arena_.floats(N * F);
      a->fc1_act = arena_.floats(N * F);
      moe_.push_back(nullptr);
    }
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
  datt_ = arena_.floats(static_cast<size_t>(B_) * H * T_ * T_);
}

Model::~Model() = default;

// Per-set lookups for forward and backward, built once per layout (a scan of
// all chunks per layer and step is quadratic in the layer count for the real
// model of M6-10T's shape: 48 layers x 61,440 expert chunks per rank on 8 ranks).
void Model::index_chunks() {
  const int sets = num_layer_sets(cfg_.model);
  set_layer_.assign(sets, nullptr);
  set_experts_.assign(sets, {});
  for (const auto& c : chunks_) {
    if (c.layer < 0 || c.layer >= sets) continue;
    if (c.kind == ChunkKind::Layer) set_layer_[c.layer] = &c;
    if (c.kind == ChunkKind::Expert) set_experts_[c.layer].push_back(&c);
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
  auto store = std::make_unique<ChunkStorage>(be_, chunks);
  delink_chunks(be_, cfg_.model, chunks_, chunks, opt);
  chunks_ = std::move(chunks);
  chunk_store_ = std::move(store);  // releases the pseudo model's buffers
  cfg_.model.sharing = real.sharing;
  index_chunks();
}

MicroStats Model::forward(const Batch& batch, Phase phase) {
  const ModelConfig& m = cfg_.model;
  const int B = batch.B, T = batch.T, N = B * T;
  const int d = m.d_model, F = m.d_ff, V = m.vocab_size, H = m.n_heads, L = m.n_layers;
  M6_CHECK(N <= max_tokens_ && T <= cfg_.train.seq_len, "batch ", B, "x", T, " exceeds the ",
           max_tokens_, " tokens and seq_len ", cfg_.train.seq_len, " the model was sized for");
  B_ = B;
  T_ = T;
  be_.to_device(tokens_, batch.inputs.data(), N * sizeof(int32_t));
  be_.to_device(targets_, batch.targets.data(), N * sizeof(int32_t));

  const Chunk& emb = chunks_.front();
  const Chunk& head = chunks_.back();
  be_.embedding_fwd(residual_[0], tokens_, emb.param_of("tok_emb.weight"),
                    emb.param_of("pos_emb.weight"), B, T, d);
  MicroStats st;
  for (int l = 0; l < L; ++l) {
    const Chunk& c = layer_chunk(l);
    LayerActs& a = *acts_[l];
    const float* x = residual_[l];
    be_.layernorm_fwd(a.ln1_out, a.ln1_mean, a.ln1_rstd, x, c.param_of("ln1.weight"),
                      c.param_of("ln1.bias"), N, d);
    linear_fwd(be_, a.qkv, a.ln1_out, c.param_of("qkv.weight"), c.param_of("qkv.bias"), N, d, 3 * d);
    be_.attention_fwd(a.atty, a.att, a.qkv, B, T, H, d);
    linear_fwd(be_, dtmp_, a.atty, c.param_of("proj.weight"), c.param_of("proj.bias"), N, d, d);
    be_.add(a.res1, x, dtmp_, static_cast<size_t>(N) * d);
    be_.layernorm_fwd(a.ln2_out, a.ln2_mean, a.ln2_rstd, a.res1, c.param_of("ln2.weight"),
                      c.param_of("ln2.bias"), N, d);
    if (moe_[l]) {
      st.moe.push_back(moe_[l]->forward(dtmp_, a.ln2_out, N, c, expert_chunks(l), phase));
    } else {
      linear_fwd(be_, a.fc1_pre, a.ln2_out, c.param_of("fc1.weight"), c.param_of("fc1.bias"), N, d, F);
      be_.gelu_fwd(a.fc1_act, a.fc1_pre, static_cast<size_t>(N) * F);
      linear_fwd(be_, dtmp_, a.fc1_act, c.param_of("fc2.weight"), c.param_of("fc2.bias"), N, F, d);
    }
    be_.add(residual_[l + 1], a.res1, dtmp_, static_cast<size_t>(N) * d);
  }
  be_.layernorm_fwd(lnf_out_, lnf_mean_, lnf_rstd_, residual_[L], head.param_of("ln_f.weight"),
                    head.param_of("ln_f.bias"), N, d);
  // Tied LM head: logits[N,V] = lnf_out[N,d] tok_emb[V,d]^T
  linear_fwd(be_, logits_, lnf_out_, emb.param_of("tok_emb.weight"), nullptr, N, d, V);
  be_.crossentropy_fwd(losses_, logits_, logits_, targets_, N, V);  // logits_ now holds probs
  st.ce_sum = be_.sum(losses_, N);
  for (int i = 0; i < N; ++i) st.n_valid += batch.targets[i] >= 0;
  n_valid_last_ = st.n_valid;
  return st;
}

void Model::backward(float grad_scale) {
  const ModelConfig& m = cfg_.model;
  const int B = B_, T = T_, N = B * T;
  const int d = m.d_model, F = m.d_ff, V = m.vocab_size, H = m.n_heads, L = m.n_layers;
  Chunk& emb = chunks_.front();
  Chunk& head = chunks_.back();
  const float dscale = n_valid_last_ ? grad_scale / static_cast<float>(n_valid_last_) : 0.0f;

  be_.crossentropy_bwd(logits_, logits_, targets_, dscale, N, V);  // logits_ now dlogits
  // lnf_out -> logits through the tied embedding: dlnf = dlogits wte; dwte += dlogits^T lnf_out
  linear_bwd(be_, dtmp_, GradMode::Overwrite, emb.grad_of("tok_emb.weight"), nullptr, logits_,
             lnf_out_, emb.param_of("tok_emb.weight"), N, d, V);
  be_.zero(dres_, static_cast<size_t>(N) * d * sizeof(float));
  be_.layernorm_bwd(dres_, head.grad_of("ln_f.weight"), head.grad_of("ln_f.bias"), dtmp_,
                    residual_[L], lnf_mean_, lnf_rstd_, head.param_of("ln_f.weight"), N, d);

  for (int l = L - 1; l >= 0; --l) {
    const Chunk& c = layer_chunk(l);
    LayerActs& a = *acts_[l];
    // dres_ is d loss / d residual[l+1] = res1 + ffn(ln2(res1)).
    if (moe_[l]) {
      be_.zero(dtmp_, static_cast<size_t>(N) * d * sizeof(float));
      moe_[l]->backward(dtmp_, dres_, c, expert_chunks(l), grad_scale);
    } else {
      linear_bwd(be_, dff_, GradMode::Overwrite, c.grad_of("fc2.weight"), c.grad_of("fc2.bias"),
                 dres_, a.fc1_act, c.param_of("fc2.weight"), N, F, d);
      be_.gelu_bwd(dff_, a.fc1_pre, dff_, static_cast<size_t>(N) * F);
      linear_bwd(be_, dtmp_, GradMode::Overwrite, c.grad_of("fc1.weight"), c.grad_of("fc1.bias"),
                 dff_, a.ln2_out, c.param_of("fc1.weight"), N, d, F);
    }
    be_.layernorm_bwd(dres_, c.grad_of("ln2.weight"), c.grad_of("ln2.bias"), dtmp_, a.res1,
                      a.ln2_mean, a.ln2_rstd, c.param_of("ln2.weight"), N, d);
    // dres_ is now d loss / d res1 = x + proj(attn(ln1(x))).
    linear_bwd(be_, dtmp_, GradMode::Overwrite, c.grad_of("proj.weight"), c.grad_of("proj.bias"),
               dres_, a.atty, c.param_of("proj.weight"), N, d, d);
    be_.attention_bwd(dqkv_, datt_, dtmp_, a.qkv, a.att, B, T, H, d);
    linear_bwd(be_, dtmp_, GradMode::Overwrite, c.grad_of("qkv.weight"), c.grad_of("qkv.bias"),
               dqkv_, a.ln1_out, c.param_of("qkv.weight"), N, d, 3 * d);
    be_.layernorm_bwd(dres_, c.grad_of("ln1.weight"), c.grad_of("ln1.bias"), dtmp_, residual_[l],
                      a.ln1_mean, a.ln1_rstd, c.param_of("ln1.weight"), N, d);
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
