// `m6train delink`: the offline half of Pseudo-to-Real (see app/commands.h).
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "app/commands.h"
#include "core/ckpt/checkpoint.h"
#include "core/model/sharing.h"
#include "core/util/error.h"

namespace m6 {
namespace fs = std::filesystem;

namespace {

void flatten(const nlohmann::json& j, const std::string& prefix,
             std::map<std::string, std::string>& out) {
  if (j.is_object()) {
    for (const auto& [k, v] : j.items()) flatten(v, prefix.empty() ? k : prefix + "." + k, out);
  } else {
    out[prefix] = j.dump();
  }
}

// The keys the real config must share with the pseudo one: the model except
// its sharing section, and what decides the data order (the real run
// continues the pseudo run's data position, DESIGN.md principle 4).
bool must_match(const std::string& key) {
  if (key.starts_with("model.sharing.")) return false;
  return key.starts_with("model.") || key == "train.seed" || key == "train.seq_len" ||
         key == "train.global_batch";
}

void check_real_matches(const Config& pseudo, const Config& real, const std::string& manifest) {
  if (real.model.sharing.groups != 0)
    throw ConfigError(fmt(real.source,
                          ": model.sharing.groups: the real model shares no layers; "
                          "allowed: 0 (got ",
                          real.model.sharing.groups, ")"));
  std::map<std::string, std::string> a, b;
  flatten(config_to_json(pseudo), "", a);
  flatten(config_to_json(real), "", b);
  std::string diff;
  for (const auto& [key, value] : b) {
    if (!must_match(key)) continue;
    const auto it = a.find(key);
    const std::string was = it == a.end() ? "(absent)" : it->second;
    if (was != value) diff += fmt(diff.empty() ? "" : ", ", key, " ", was, " (pseudo) vs ", value);
  }
  if (!diff.empty())
    throw ConfigError(fmt(real.source, ": the real config must describe the pseudo model of ",
                          manifest, " except for model.sharing, but differs in: ", diff));
}

std::string checkpoint_dir_of(const std::string& from) {
  if (fs::exists(from + "/manifest.json")) return from;
  if (fs::exists(from + "/checkpoints/latest")) return latest_checkpoint(from);
  throw CheckpointError(fmt(from,
                            ": neither a checkpoint directory (no manifest.json) nor a run "
                            "directory with checkpoints/latest"));
}

}  // namespace

DelinkReport delink_checkpoint(const std::string& from, const Config& real,
                               const std::string& out_run_dir) {
  DelinkReport rep;
  rep.from_dir = checkpoint_dir_of(from);
  const std::string manifest_path = rep.from_dir + "/manifest.json";
  const nlohmann::json man = read_manifest(rep.from_dir, Verify::Full);
  const Config pseudo = config_from_json(man.at("config"));
  if (pseudo.model.sharing.groups == 0)
    throw CheckpointError(fmt(manifest_path,
                              ": not a pseudo model (model.sharing.groups is 0): "
                              "there is nothing to delink"));
  check_real_matches(pseudo, real, manifest_path);
  if (!list_checkpoints(out_run_dir).empty())
    throw ConfigError(
        fmt("--out ", out_run_dir, " already holds checkpoints; pass a new run directory"));

  // Both layouts in memory at once, every expert on this one process: the
  // offline delink is for models whose checkpoint fits in host memory twice.
  auto be = make_cpu_backend(real.train.threads);
  const int E = pseudo.model.moe.every > 0 ? pseudo.model.moe.experts : 0;
  std::vector<Chunk> pseudo_chunks = plan_chunks(pseudo.model, ExpertRange{0, E});
  ChunkStorage pseudo_store(*be, pseudo_chunks);
  const TrainState st =
      load_checkpoint(rep.from_dir, *be, pseudo_chunks, LoadParts::WeightsAndOptimizer);

  std::vector<Chunk> real_chunks = plan_chunks(real.model, ExpertRange{0, E});
  ChunkStorage real_store(*be, real_chunks);
  delink_chunks(*be, pseudo.model, pseudo_chunks, real_chunks, real.model.sharing.delink_optimizer);

  // This process holds every expert: record the layout it wrote (ep 1); a
  // resume on any layout reads tensors by name.
  Config saved = real;
  saved.parallel.ep = 1;
  rep.out_dir = save_checkpoint(out_run_dir, saved, st, *be, real_chunks);
  rep.step = st.step;
  rep.pseudo_groups = pseudo.model.sharing.groups;
  rep.pseudo = count_params(pseudo.model);
  rep.real = count_params(real.model);
  rep.optimizer = real.model.sharing.delink_optimizer;
  return rep;
}

}  // namespace m6
