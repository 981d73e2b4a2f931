#include "core/infer/kv_model.h"

#include <cmath>

#include "core/model/linear.h"
#include "core/util/error.h"

namespace m6 {

KvModel::KvModel(const ModelConfig& m, Backend& be, const std::vector<Chunk>& chunks)
    : m_(m), be_(be), chunks_(chunks), arena_(be) {
  m_.moe.eval_capacity_factor = 0;  // dropless
  const int L = m_.n_layers, d = m_.d_model, F = m_.d_ff, V = m_.vocab_size, H = m_.n_heads;
  cap_ = m_.max_seq_len;
  const size_t T = static_cast<size_t>(cap_);
  tokens_ = arena_.ints(T);
  no_targets_ = arena_.ints(static_cast<size_t>(H));
  const std::vector<int32_t> minus_one(H, -1);
  be_.to_device(no_targets_, minus_one.data(), minus_one.size() * sizeof(int32_t));
  x_ = arena_.floats(T * d);
  ln_ = arena_.floats(T * d);
  mean_ = arena_.floats(T);
  rstd_ = arena_.floats(T);
  qkv_ = arena_.floats(T * 3 * d);
  // what attention_fwd keeps, for the longest prompt (the prompt's n <= T
  // tokens fit the layout for T)
  att_ = arena_.floats(be_.attention_buffers(1, cap_, H).saved);
  atty_ = arena_.floats(T * d);
  tmp_ = arena_.floats(T * d);
  ff_pre_ = arena_.floats(T * F);
  ff_act_ = arena_.floats(T * F);
  logits_ = arena_.floats(T * V);
  scores_ = arena_.floats(static_cast<size_t>(H) * T);
  sm_loss_ = arena_.floats(static_cast<size_t>(H));

  for (const Chunk& c : chunks_) {
    if (c.kind == ChunkKind::Embedding) emb_ = &c;
    if (c.kind == ChunkKind::Head) head_ = &c;
  }
  M6_CHECK(emb_ && head_, "KvModel: the chunks lack the embedding or the final LayerNorm");
  for (int l = 0; l < L; ++l) {
    const int s = layer_set(m_, l);
    const Chunk* lc = nullptr;
    std::vector<const Chunk*> ex;
    for (const Chunk& c : chunks_) {
      if (c.kind == ChunkKind::Layer && c.layer == s) lc = &c;
      if (c.kind == ChunkKind::Expert && c.layer == s) ex.push_back(&c);
    }
    M6_CHECK(lc, "KvModel: no chunk for layer ", l, " (set ", s, ")");
    layer_chunk_.push_back(lc);
    if (m_.is_moe_layer(l)) {
      M6_CHECK(static_cast<int>(ex.size()) == m_.moe.experts, "KvModel: layer ", l, " has ",
               ex.size(), " expert chunks, the model ", m_.moe.experts);
      moe_.push_back(std::make_unique<MoeLayer>(be_, m_, cap_, l));
    } else {
      moe_.push_back(nullptr);
    }
    expert_chunks_.push_back(std::move(ex));
    k_cache_.push_back(arena_.floats(T * d));
    v_cache_.push_back(arena_.floats(T * d));
  }
}

KvModel::~KvModel() = default;

// x_[0..n) = x + attn(ln1(x)), then x + ffn(ln2(x)), for the n positions
// len_..len_+n-1. n > 1 only from an empty cache (prefill).
void KvModel::layer(int l, int n) {
  const int d = m_.d_model, F = m_.d_ff, H = m_.n_heads;
  const Chunk& c = *layer_chunk_[l];
  const size_t nd = static_cast<size_t>(n) * d;
  be_.layernorm_fwd(ln_, mean_, rstd_, x_, c.param_of("ln1.weight"), c.param_of("ln1.bias"), n, d);
  linear_fwd(be_, qkv_, ln_, c.param_of("qkv.weight"), c.param_of("qkv.bias"), n, d, 3 * d);
  for (int t = 0; t < n; ++t) {
    const float* row = qkv_ + static_cast<size_t>(t) * 3 * d;
    const size_t at = static_cast<size_t>(len_ + t) * d;
    be_.copy(k_cache_[l] + at, row + d, d * sizeof(float));
    be_.copy(v_cache_[l] + at, row + 2 * d, d * sizeof(float));
  }
  if (len_ == 0) {
    be_.attention_fwd(atty_, att_, qkv_, 1, n, H, d);
  } else {
    M6_CHECK(n == 1, "KvModel: ", n, " tokens appended to a non-empty cache");
    attend_cached(l, len_ + 1);
  }
  linear_fwd(be_, tmp_, atty_, c.param_of("proj.weight"), c.param_of("proj.bias"), n, d, d);
  be_.add(x_, x_, tmp_, nd);
  be_.layernorm_fwd(ln_, mean_, rstd_, x_, c.param_of("ln2.weight"), c.param_of("ln2.bias"), n, d);
  if (moe_[l]) {
    moe_[l]->forward(tmp_, ln_, n, c, expert_chunks_[l], Phase::Eval);
  } else {
    linear_fwd(be_, ff_pre_, ln_, c.param_of("fc1.weight"), c.param_of("fc1.bias"), n, d, F);
    be_.gelu_fwd(ff_act_, ff_pre_, static_cast<size_t>(n) * F);
    linear_fwd(be_, tmp_, ff_act_, c.param_of("fc2.weight"), c.param_of("fc2.bias"), n, F, d);
  }
  be_.add(x_, x_, tmp_, nd);
}

// atty_[0, :] from the query in qkv_ row 0 and the cached rows 0..n_keys-1 of
// layer l. Head h: scores[h, 0..n_keys) = q_h K_h^T / sqrt(dh) (K_h: the
// columns h*dh.. of the cache, row stride d), softmax, then p V_h.
void KvModel::attend_cached(int l, int n_keys) {
  const int d = m_.d_model, H = m_.n_heads, dh = d / H;
  GemmArgs s;
  s.trans_b = Trans::Yes;
  s.m = 1, s.n = n_keys, s.k = dh;
  s.alpha = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dh)));
  s.a = qkv_, s.lda = dh, s.stride_a = dh;
  s.b = k_cache_[l], s.ldb = d, s.stride_b = dh;
  s.c = scores_, s.ldc = n_keys, s.stride_c = n_keys;
  s.batch = H;
  be_.gemm(s);
  // Row softmax: the cross-entropy op's probabilities, with no target (-1).
  be_.crossentropy_fwd(sm_loss_, scores_, scores_, no_targets_, H, n_keys);
  GemmArgs o;
  o.m = 1, o.n = dh, o.k = n_keys;
  o.a = scores_, o.lda = n_keys, o.stride_a = n_keys;
  o.b = v_cache_[l], o.ldb = d, o.stride_b = dh;
  o.c = atty_, o.ldc = d, o.stride_c = dh;
  o.batch = H;
  be_.gemm(o);
}

std::vector<float> KvModel::logits(int n) {
  const int d = m_.d_model, V = m_.vocab_size;
  be_.layernorm_fwd(ln_, mean_, rstd_, x_, head_->param_of("ln_f.weight"),
                    head_->param_of("ln_f.bias"), n, d);
  linear_fwd(be_, logits_, ln_, emb_->param_of("tok_emb.weight"), nullptr, n, d, V);
  std::vector<float> out(static_cast<size_t>(n) * V);
  be_.to_host(out.data(), logits_, out.size() * sizeof(float));
  return out;
}

std::vector<float> KvModel::prefill(const std::vector<int32_t>& tokens) {
  const int n = static_cast<int>(tokens.size());
  if (n < 1 || n > cap_)
    throw Error(fmt("prefill: ", n, " tokens; the context holds 1..", cap_, " (model.max_seq_len)"));
  for (int32_t t : tokens)
    if (t < 0 || t >= m_.vocab_size)
      throw Error(fmt("prefill: token ", t, " is outside the vocabulary [0, ", m_.vocab_size, ")"));
  len_ = 0;
  be_.to_device(tokens_, tokens.data(), tokens.size() * sizeof(int32_t));
  be_.embedding_fwd(x_, tokens_, emb_->param_of("tok_emb.weight"), emb_->param_of("pos_emb.weight"),
                    1, n, m_.d_model);
  for (int l = 0; l < m_.n_layers; ++l) layer(l, n);
  len_ = n;
  return logits(n);
}

std::vector<float> KvModel::decode(int32_t token) {
  if (len_ == 0) return prefill({token});
  if (len_ >= cap_)
    throw Error(fmt("decode: the cache is full (", cap_, " positions, model.max_seq_len)"));
  if (token < 0 || token >= m_.vocab_size)
    throw Error(fmt("decode: token ", token, " is outside the vocabulary [0, ", m_.vocab_size, ")"));
  const int d = m_.d_model;
  be_.to_device(tokens_, &token, sizeof token);
  // Position len_: the row len_ of the position table.
  be_.embedding_fwd(x_, tokens_, emb_->param_of("tok_emb.weight"),
                    emb_->param_of("pos_emb.weight") + static_cast<size_t>(len_) * d, 1, 1, d);
  for (int l = 0; l < m_.n_layers; ++l) layer(l, 1);
  ++len_;
  return logits(1);
}

}  // namespace m6
