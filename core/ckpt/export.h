// The export (DESIGN.md section 6): one .safetensors with every logical
// layer's tensors under the names of section 3 (shared parameter sets are
// written once per logical layer that uses them) and the resolved config as
// JSON in __metadata__["config"].
#pragma once
#include <string>
#include <vector>

#include "core/ckpt/safetensors.h"
#include "core/config/config.h"
#include "core/model/model.h"

namespace m6 {

// Views of named fp32 tensors for write_safetensors.
std::vector<StTensorView> views_of(const std::vector<Model::NamedTensor>& tensors);

void write_export(const std::string& path, const Config& cfg,
                  const std::vector<Model::NamedTensor>& tensors);

}  // namespace m6
