// `m6train export --run-dir DIR --out FILE [--step N]`: a checkpoint of a run
// (the latest, or step N's) as one .safetensors (core/ckpt/export.h).
#include <nlohmann/json.hpp>

#include "app/commands.h"
#include "core/ckpt/checkpoint.h"
#include "core/ckpt/export.h"
#include "core/model/params.h"
#include "core/util/error.h"

namespace m6 {

namespace {

std::string checkpoint_of_step(const std::string& run_dir, int64_t step) {
  const std::vector<CommittedCheckpoint> all = list_checkpoints(run_dir);
  std::string have;
  for (const CommittedCheckpoint& c : all) {
    if (c.step == step) return c.dir;
    have += (have.empty() ? "" : " ") + std::to_string(c.step);
  }
  throw CheckpointError(fmt("export: ", run_dir, " has no committed checkpoint of step ", step,
                            have.empty() ? std::string("; it has none")
                                         : "; it has steps " + have,
                            " (checkpoint.keep limits how many are kept)"));
}

}  // namespace

std::string export_run(const std::string& run_dir, const std::string& out_path, int64_t step) {
  const std::string dir = step < 0 ? latest_checkpoint(run_dir) : checkpoint_of_step(run_dir, step);
  const nlohmann::json man = read_manifest(dir);
  Config cfg = config_from_json(man.at("config"));
  const ModelConfig& m = cfg.model;

  const int E = m.moe.every > 0 ? m.moe.experts : 0;
  const std::vector<Chunk> chunks = plan_chunks(m, ExpertRange{0, E});
  // By global name from whichever file holds each tensor (checks dtype and shape).
  const CheckpointTensors weights(dir, man, CkptPart::Weights, chunks);
  std::vector<Model::NamedTensor> out;
  for_each_logical_tensor(m, chunks, [&](const Chunk&, const ParamTensor& t, const std::string& name) {
    const float* p = weights.get(t);
    out.push_back({name, t.shape, std::vector<float>(p, p + t.numel)});
  });
  write_export(out_path, cfg, out);
  return dir;
}

}  // namespace m6
