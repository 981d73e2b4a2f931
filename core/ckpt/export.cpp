#include "core/ckpt/export.h"

#include <nlohmann/json.hpp>

namespace m6 {

std::vector<StTensorView> views_of(const std::vector<Model::NamedTensor>& tensors) {
  std::vector<StTensorView> v;
  for (const auto& t : tensors) v.push_back({t.name, StDType::F32, t.shape, t.values.data()});
  return v;
}


void write_export(const std::string& path, const Config& cfg,
                  const std::vector<Model::NamedTensor>& tensors) {
  write_safetensors(path, views_of(tensors),
                    {{"config", config_to_json(cfg).dump()}, {"format", "m6train-export-1"}});
}

}  // namespace m6
