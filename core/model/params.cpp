#include "core/model/params.h"

#include <cmath>

#include "core/util/error.h"
#include "core/util/splitmix.h"

namespace m6 {

const ParamTensor& Chunk::tensor(const std::string& suffix) const {
  for (const auto& t : tensors) {
    if (t.name.size() >= suffix.size() &&
        t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) == 0 &&
        (t.name.size() == suffix.size() || t.name[t.name.size() - suffix.size() - 1] == '.'))
      return t;
  }
  throw Error(fmt("chunk ", name, " has no tensor ", suffix));
}

float* Chunk::resident_streamed() const {
  M6_CHECK(streamed != nullptr, "chunk ", name,
           " keeps its master weights on the host and was used before being streamed in");
  return streamed;
}

int sharing_block(const ModelConfig& m) {
  const int g = m.sharing.groups;
  return g > 0 && g < m.n_layers && m.moe.every >= 2 ? m.moe.every : 1;
}

int layer_group(const ModelConfig& m, int layer) {
  const int g = m.sharing.groups;
  if (g <= 0) return layer;
  const int u = sharing_block(m);
  return static_cast<int>(static_cast<int64_t>(layer / u) * g / (m.n_layers / u));
}

int layer_set(const ModelConfig& m, int layer) {
  if (m.sharing.groups <= 0) return layer;
  const int u = sharing_block(m);
  return layer_group(m, layer) * u + layer % u;
}

int num_layer_sets(const ModelConfig& m) {
  return m.sharing.groups > 0 ? m.sharing.groups * sharing_block(m) : m.n_layers;
}

int first_layer_of_set(const ModelConfig& m, int set) {
  for (int l = 0; l < m.n_layers; ++l)
    if (layer_set(m, l) == set) return l;
  throw Error(fmt("layer set ", set, " has no layer"));
}

namespace {

// Appends a tensor to a chunk, keeping offsets 16-float aligned so that every
// tensor starts on a 64-byte boundary.
void add(Chunk& c, const std::string& name, std::vector<int64_t> shape, InitKind init,
         float std_dev, bool decay) {
  ParamTensor t;
  t.name = name;
  t.shape = std::move(shape);
  t.numel = 1;
  for (auto s : t.shape) t.numel *= static_cast<size_t>(s);
  t.offset = (c.numel + 15) / 16 * 16;
  t.init = init;
  t.init_std = std_dev;
  t.decay = decay;
  c.numel = t.offset + t.numel;
  c.tensors.push_back(std::move(t));
}

void add_linear(Chunk& c, const std::string& prefix, int64_t out, int64_t in, float std_dev) {
  add(c, prefix + ".weight", {out, in}, InitKind::Normal, std_dev, true);
  add(c, prefix + ".bias", {out}, InitKind::Zeros, 0.0f, false);
}

void add_layernorm(Chunk& c, const std::string& prefix, int64_t d) {
  add(c, prefix + ".weight", {d}, InitKind::Ones, 0.0f, false);
  add(c, prefix + ".bias", {d}, InitKind::Zeros, 0.0f, false);
}

}  // namespace

std::vector<Chunk> plan_chunks(const ModelConfig& m, ExpertRange experts) {
  const int64_t d = m.d_model, F = m.d_ff;
  const float std_w = 0.02f;
  const float std_out = 0.02f / std::sqrt(2.0f * static_cast<float>(m.n_layers));
  std::vector<Chunk> chunks;

  Chunk emb;
  emb.name = "embed";
  emb.kind = ChunkKind::Embedding;
  add(emb, "tok_emb.weight", {m.vocab_size, d}, InitKind::Normal, std_w, true);
  add(emb, "pos_emb.weight", {m.max_seq_len, d}, InitKind::Normal, std_w, true);
  chunks.push_back(std::move(emb));

  for (int s = 0; s < num_layer_sets(m); ++s) {
    const int l = first_layer_of_set(m, s);
    const std::string p = "layers." + std::to_string(l);
    Chunk c;
    c.name = p;
    c.kind = ChunkKind::Layer;
    c.layer = s;
    add_layernorm(c, p + ".ln1", d);
    add_linear(c, p + ".attn.qkv", 3 * d, d, std_w);
    add_linear(c, p + ".attn.proj", d, d, std_out);
    add_layernorm(c, p + ".ln2", d);
    if (m.is_moe_layer(l)) {
      add(c, p + ".moe.router.weight", {m.moe.experts, d}, InitKind::Normal, std_w, true);
    } else {
      add_linear(c, p + ".mlp.fc1", F, d, std_w);
      add_linear(c, p + ".mlp.fc2", d, F, std_out);
    }
    chunks.push_back(std::move(c));
    if (m.is_moe_layer(l)) {
      for (int e = experts.first; e < experts.first + experts.count; ++e) {
        const std::string q = p + ".moe.experts." + std::to_string(e);
        Chunk x;
        x.name = q;
        x.kind = ChunkKind::Expert;
        x.layer = s;
        x.expert = e;
        add_linear(x, q + ".fc1", F, d, std_w);
        add_linear(x, q + ".fc2", d, F, std_out);
        chunks.push_back(std::move(x));
      }
    }
  }

  Chunk head;
  head.name = "ln_f";
  head.kind = ChunkKind::Head;
  add_layernorm(head, "ln_f", d);
  chunks.push_back(std::move(head));
  return chunks;
}

void for_each_logical_tensor(
    const ModelConfig& m, const std::vector<Chunk>& chunks,
    const std::function<void(const Chunk&, const ParamTensor&, const std::string&)>& visit) {
  auto emit = [&](const Chunk& c, const std::string& from, const std::string& to) {
    for (const auto& t : c.tensors) visit(c, t, from.empty() ? t.name : to + t.name.substr(from.size()));
  };
  for (const auto& c : chunks)
    if (c.kind == ChunkKind::Embedding) emit(c, "", "");
  for (int l = 0; l < m.n_layers; ++l) {
    const int s = layer_set(m, l);
    const std::string from = "layers." + std::to_string(first_layer_of_set(m, s));
    const std::string to = "layers." + std::to_string(l);
    for (const auto& c : chunks)
      if ((c.kind == ChunkKind::Layer || c.kind == ChunkKind::Expert) && c.layer == s)
        emit(c, from, to);
  }
  for (const auto& c : chunks)
    if (c.kind == ChunkKind::Head) emit(c, "", "");
}

ParamCounts count_params(const ModelConfig& m) {
  const int64_t d = m.d_model, F = m.d_ff, E = m.moe.experts;
  const int64_t attn = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d;
  const int64_t ffn = (F * d + F) + (d * F + d);
  ParamCounts pc;
  const int64_t base = static_cast<int64_t>(m.vocab_size) * d + static_cast<int64_t>(m.max_seq_len) * d + 2 * d;
  pc.unique = pc.logical = pc.active_per_token = base;
  auto layer_params = [&](int l, bool active) {
    if (!m.is_moe_layer(l)) return attn + ffn;
    return attn + E * d + (active ? m.moe.slots() : E) * ffn;
  };
  for (int l = 0; l < m.n_layers; ++l) {
    pc.logical += layer_params(l, false);
    pc.active_per_token += layer_params(l, true);
  }
  for (int s = 0; s < num_layer_sets(m); ++s) pc.unique += layer_params(first_layer_of_set(m, s), false);
  return pc;
}

namespace {

uint64_t hash_name(const std::string& s) {  // FNV-1a, then mixed
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ULL;
  return splitmix64(h);
}

// Uniform in (0, 1], from 53 random bits.
double to_unit(uint64_t x) { return (static_cast<double>(x >> 11) + 1.0) * 0x1.0p-53; }

}  // namespace

void init_chunk_host(const Chunk& c, uint64_t seed, float* host) {
  for (size_t i = 0; i < c.numel; ++i) host[i] = 0.0f;
  for (const auto& t : c.tensors) {
    float* p = host + t.offset;
    switch (t.init) {
      case InitKind::Zeros:
        break;
      case InitKind::Ones:
        for (size_t i = 0; i < t.numel; ++i) p[i] = 1.0f;
        break;
      case InitKind::Normal: {
        const uint64_t key = splitmix64(seed ^ hash_name(t.name));
        // Box-Muller on the counter pair (2j, 2j+1): element 2j gets the cosine,
        // 2j+1 the sine, so each element depends only on (seed, name, index).
        for (size_t j = 0; 2 * j < t.numel; ++j) {
          const double u1 = to_unit(splitmix64(key + 2 * j));
          const double u2 = to_unit(splitmix64(key + 2 * j + 1));
          const double r = std::sqrt(-2.0 * std::log(u1));
          const double a = 2.0 * M_PI * u2;
          p[2 * j] = static_cast<float>(t.init_std * r * std::cos(a));
          if (2 * j + 1 < t.numel) p[2 * j + 1] = static_cast<float>(t.init_std * r * std::sin(a));
        }
        break;
      }
    }
  }
}

}  // namespace m6
