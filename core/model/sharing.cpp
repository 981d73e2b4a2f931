#include "core/model/sharing.h"

#include <map>
#include <tuple>

#include "core/model/offload.h"
#include "core/util/error.h"

namespace m6 {

ModelConfig delinked_model(const ModelConfig& pseudo) {
  ModelConfig real = pseudo;
  real.sharing.groups = 0;
  real.sharing.delink_at_step = 0;
  return real;
}

Config delinked_config(const Config& pseudo) {
  Config real = pseudo;
  real.model = delinked_model(pseudo.model);
  return real;
}

Config config_at_step(const Config& cfg, int64_t step) {
  const SharingConfig& s = cfg.model.sharing;
  if (s.groups > 0 && s.delink_at_step > 0 && step >= s.delink_at_step) return delinked_config(cfg);
  return cfg;
}

const char* delink_optimizer_name(DelinkOptimizer o) {
  return o == DelinkOptimizer::Copy ? "copy" : "reset";
}

namespace {

// The pseudo chunks by (kind, set, expert): a real chunk takes its values from
// the chunk of the same kind and expert in the set of its logical layer. An
// index, not a scan per chunk: the real model of M6-10T's shape has 61,440
// expert chunks per rank on 8 ranks.
class SourceIndex {
 public:
  explicit SourceIndex(const std::vector<Chunk>& from) {
    for (const auto& f : from) index_.emplace(Key{static_cast<int>(f.kind), f.layer, f.expert}, &f);
  }
  const Chunk& source_of(const ModelConfig& pseudo, const Chunk& c) const {
    const int set = c.layer >= 0 ? layer_set(pseudo, c.layer) : -1;
    auto it = index_.find(Key{static_cast<int>(c.kind), set, c.expert});
    if (it == index_.end())
      throw Error(fmt("delink: the pseudo model has no chunk for ", c.name, " (set ", set,
                      ", expert ", c.expert, "); were both layouts planned for the same experts?"));
    return *it->second;
  }

 private:
  using Key = std::tuple<int, int, int>;
  std::map<Key, const Chunk*> index_;
};

// Both chunks must hold the same tensors in the same places; names differ only
// in the layer index ("layers.0.ln1.weight" -> "layers.5.ln1.weight").
void check_same_layout(const Chunk& from, const Chunk& to) {
  bool same = from.numel == to.numel && from.tensors.size() == to.tensors.size();
  for (size_t i = 0; same && i < from.tensors.size(); ++i) {
    const ParamTensor &a = from.tensors[i], &b = to.tensors[i];
    same = a.shape == b.shape && a.offset == b.offset && a.numel == b.numel &&
           a.name.substr(from.name.size()) == b.name.substr(to.name.size());
  }
  if (!same)
    throw Error(fmt("delink: chunk ", from.name, " (", from.numel, " floats) and ", to.name, " (",
                    to.numel, " floats) do not have the same tensors"));
}

}  // namespace

void delink_chunks(Backend& be, const ModelConfig& pseudo, const std::vector<Chunk>& from,
                   std::vector<Chunk>& to, DelinkOptimizer opt) {
  M6_CHECK(pseudo.sharing.groups > 0, "delink needs a model with shared layers (groups ",
           pseudo.sharing.groups, ")");
  const SourceIndex sources(from);
  for (auto& c : to) {
    const Chunk& f = sources.source_of(pseudo, c);
    check_same_layout(f, c);
    const size_t bytes = c.numel * sizeof(float);
    be.copy(c.param, f.param, bytes);
    be.zero(c.grad, bytes);
    const bool layer = c.kind == ChunkKind::Layer || c.kind == ChunkKind::Expert;
    if (layer && opt == DelinkOptimizer::Reset) {
      be.zero(c.adam_m, bytes);
      be.zero(c.adam_v, bytes);
    } else {
      be.copy(c.adam_m, f.adam_m, bytes);
      be.copy(c.adam_v, f.adam_v, bytes);
    }
  }
}

ChunkStorage::ChunkStorage(Backend& be, std::vector<Chunk>& chunks, const OffloadConfig& offload)
    : arena_(be), host_(be, MemorySpace::Host) {
  const std::vector<OffloadPlacement> place = place_offload(chunks, offload);
  for (size_t i = 0; i < chunks.size(); ++i) {
    Chunk& c = chunks[i];
    c.master_on_host = place[i].master_on_host;
    c.adam_on_host = place[i].adam_on_host;
    c.streamed = c.compute = nullptr;
    c.param = (c.master_on_host ? host_ : arena_).floats(c.numel);
    c.grad = arena_.floats(c.numel);
    c.adam_m = (c.adam_on_host ? host_ : arena_).floats(c.numel);
    c.adam_v = (c.adam_on_host ? host_ : arena_).floats(c.numel);
  }
}

}  // namespace m6
