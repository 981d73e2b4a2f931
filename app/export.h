// The export (DESIGN.md section 6): one .safetensors with every logical
// layer's tensors under the names of section 3 (shared parameter sets are
// written once per logical layer that uses them) and the resolved config as
// JSON in __metadata__["config"].
#pragma once
#include <string>
#include <vector>

#include "core/config/config.h"
#include "core/model/model.h"

namespace m6 {

void write_export(const std::string& path, const Config& cfg,
                  const std::vector<Model::NamedTensor>& tensors);

// `m6train export --run-dir DIR --out FILE`: the latest checkpoint of DIR.
// Returns the checkpoint exported.
std::string export_run(const std::string& run_dir, const std::string& out_path);

// `m6train debug-step`: initialise the model, run forward and backward on the
// micro-batch 0 of step 0, and write model.safetensors (the export),
// batch.safetensors (inputs, targets), grads.safetensors and result.json to
// out_dir. The PyTorch reference test reads these.
void debug_step(const Config& cfg, const std::string& out_dir);

}  // namespace m6
