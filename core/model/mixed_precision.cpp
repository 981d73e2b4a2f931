#include "core/model/mixed_precision.h"

#include <string>

namespace m6 {

std::optional<HalfType> compute_half_type(Precision p) {
  switch (p) {
    case Precision::Bf16:
      return HalfType::BF16;
    case Precision::Fp16:
      return HalfType::F16;
    case Precision::Fp32:
      break;
  }
  return std::nullopt;
}

bool keeps_fp32_compute_copy(const ParamTensor& t) {
  auto ends_with = [&](const std::string& s) {
    return t.name.size() >= s.size() && t.name.compare(t.name.size() - s.size(), s.size(), s) == 0;
  };
  const auto has = [&](const char* s) { return t.name.find(s) != std::string::npos; };
  return has("ln1.") || has("ln2.") || has("ln_f.") || ends_with("router.weight");
}

ComputeWeights::ComputeWeights(Backend& be, std::vector<Chunk>& chunks, HalfType t)
    : be_(be), t_(t), arena_(be) {
  // A host master's compute copy is its streamed copy (Model::stream_set).
  for (auto& c : chunks) c.compute = c.master_on_host ? nullptr : arena_.floats(c.numel);
}

void ComputeWeights::refresh(const std::vector<Chunk>& chunks) {
  for (const auto& c : chunks) {
    if (!c.compute) continue;
    be_.copy(c.compute, c.param, c.numel * sizeof(float));
    for (const auto& t : c.tensors)
      if (!keeps_fp32_compute_copy(t)) be_.round_half(c.compute + t.offset, t.numel, t_);
  }
}

}  // namespace m6
