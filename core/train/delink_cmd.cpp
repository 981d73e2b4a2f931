#include "core/train/delink_cmd.h"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "core/model/sharing.h"
#include "core/train/checkpoint.h"
#include "core/util/error.h"
#include "core/util/log.h"

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

std::string hex_double(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a", x);
  return buf;
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

nlohmann::json delink_in_run(Model& model, Config& run_cfg, int64_t step,
                             const std::function<double()>& eval) {
  const ParamCounts before = count_params(model.mcfg());
  const int groups = model.mcfg().sharing.groups;
  const DelinkOptimizer opt = model.mcfg().sharing.delink_optimizer;
  const double loss_before = eval();
  const auto t0 = std::chrono::steady_clock::now();
  model.delink(opt);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  run_cfg.model.sharing = model.mcfg().sharing;
  const double loss_after = eval();
  const ParamCounts after = count_params(model.mcfg());
  const bool identical = std::memcmp(&loss_before, &loss_after, sizeof(double)) == 0;
  const std::string hex_before = hex_double(loss_before), hex_after = hex_double(loss_after);
  log_info(fmt("delink: step ", step, ": ", model.mcfg().n_layers, " layers sharing ", groups,
               " set(s) -> the real model, ", before.unique, " -> ", after.unique,
               " parameters, Adam moments ", delink_optimizer_name(opt), "; eval loss ", hex_before,
               " before, ", hex_after, " after", identical ? " (identical)" : ""));
  if (!identical)
    log_warn(fmt("delink: the eval loss changed across the delink (", loss_before, " -> ",
                 loss_after, "); the delinked model should compute the same function"));
  return {{"step", step},
          {"loss_before", loss_before},
          {"loss_after", loss_after},
          {"loss_before_hex", hex_before},
          {"loss_after_hex", hex_after},
          {"identical", identical},
          {"optimizer", delink_optimizer_name(opt)},
          {"groups", groups},
          {"params_before", before.unique},
          {"params_after", after.unique},
          {"seconds", seconds}};
}

Config resume_layout(const Config& cfg, const std::string& run_dir, const ResumeRequest& req) {
  if (cfg.model.sharing.groups == 0 || req.mode == ResumeMode::None) return cfg;
  std::string dir = req.path;
  if (req.mode == ResumeMode::Auto) {
    const auto committed = list_checkpoints(run_dir);
    if (committed.empty()) return cfg;
    dir = committed.back().dir;
  }
  try {
    const nlohmann::json man = read_manifest(dir, Verify::Sizes);
    if (config_from_json(man.at("config")).model.sharing.groups == 0) {
      log_info(
          fmt("resume: ", dir, " holds the delinked (real) model; continuing without sharing"));
      return delinked_config(cfg);
    }
  } catch (const Error&) {
    // resume_training reports an unreadable checkpoint (and falls back).
  }
  return cfg;
}

}  // namespace m6
