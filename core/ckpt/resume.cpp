#include "core/ckpt/resume.h"

#include <cstring>
#include <filesystem>
#include <map>

#include "core/util/error.h"
#include "core/model/sharing.h"
#include "core/util/log.h"

namespace m6 {
namespace fs = std::filesystem;

namespace {

// model.* keys that tune training rather than define the parameters or the
// routing: they may change on resume.
constexpr const char* kTunableModelKeys[] = {
    "model.moe.capacity_factor",      "model.moe.eval_capacity_factor",
    "model.moe.min_capacity",         "model.moe.aux_loss_coef",
    "model.moe.z_loss_coef",          "model.sharing.delink_at_step",
    "model.sharing.delink_optimizer",
};
constexpr const char* kFixedTrainKeys[] = {"train.seed", "train.seq_len", "train.global_batch"};

void flatten(const nlohmann::json& j, const std::string& prefix,
             std::map<std::string, std::string>& out) {
  if (j.is_object()) {
    for (const auto& [k, v] : j.items()) flatten(v, prefix.empty() ? k : prefix + "." + k, out);
  } else {
    out[prefix] = j.is_string() ? j.get<std::string>() : j.dump();
  }
}

// 0 when every rank succeeded, else 1 + the highest failing rank.
int agree_failure(Comm& comm, bool failed) {
  int32_t worst = failed ? comm.rank() + 1 : 0;
  comm.all_reduce(&worst, 1, CommDType::I32, ReduceOp::Max);
  return worst;
}

// Runs `f`; a CheckpointError becomes `why` (every other error propagates).
template <class F>
bool attempt(F&& f, std::string& why) {
  try {
    f();
    return true;
  } catch (const CheckpointError& e) {
    why = e.what();
    return false;
  }
}

void set_aside(const std::string& dir, const char* suffix, const std::string& reason) {
  const std::string to = dir + suffix;
  std::error_code ec;
  fs::remove_all(to, ec);
  fs::rename(dir, to, ec);
  if (ec)
    log_warn(fmt("resume: cannot rename ", dir, " to ", to, ": ", ec.message()));
  else
    log_warn(fmt("resume: ", reason, "; renamed it ", to));
}

bool is_uncommitted_name(const std::string& path) {
  const std::string name = fs::path(path).lexically_normal().filename().string();
  for (const char* s : {".tmp", ".old"})
    if (name.size() > std::strlen(s) && name.ends_with(s)) return true;
  return false;
}

}  // namespace

ResumeRequest parse_resume_flag(const std::string& flag) {
  if (flag.empty()) return {ResumeMode::None, ""};
  if (flag == "auto") return {ResumeMode::Auto, ""};
  return {ResumeMode::Path, flag};
}

bool resume_key_is_fixed(const std::string& key) {
  for (const char* k : kFixedTrainKeys)
    if (key == k) return true;
  if (!key.starts_with("model.")) return false;
  for (const char* k : kTunableModelKeys)
    if (key == k) return false;
  return true;
}

void check_resume_config(const nlohmann::json& man, const std::string& dir, const Config& cfg) {
  std::map<std::string, std::string> was, now;
  // Through config_from_json so keys added after the checkpoint was written
  // compare as their defaults.
  flatten(config_to_json(config_from_json(man.at("config"))), "", was);
  flatten(config_to_json(cfg), "", now);
  std::string fixed, changed;
  for (const auto& [key, value] : now) {
    const auto it = was.find(key);
    const std::string old = it == was.end() ? "(absent)" : it->second;
    if (old == value) continue;
    std::string& list = resume_key_is_fixed(key) ? fixed : changed;
    list += fmt(list.empty() ? "" : ", ", key, " ", old, " -> ", value);
  }
  if (!fixed.empty())
    throw CheckpointError(fmt(dir,
                              "/manifest.json: the config differs from the checkpoint's in keys "
                              "that cannot change on resume: ",
                              fixed,
                              ". Use the checkpoint's values (they are in its manifest) or start "
                              "a new run directory"));
  if (!changed.empty()) log_info(fmt("resume: config changed since the checkpoint: ", changed));
}

ResumeResult resume_training(const std::string& run_dir, const ResumeRequest& req,
                             const Config& cfg, Backend& be, std::vector<Chunk>& chunks,
                             Comm& comm) {
  const CommLabel label(comm.activity(), "checkpoint load");
  const auto committed = list_checkpoints(run_dir);
  std::vector<std::string> candidates;
  switch (req.mode) {
    case ResumeMode::None:
      if (!committed.empty())
        throw ConfigError(fmt("run directory ", run_dir,
                              " already holds checkpoints (newest: ", committed.back().dir,
                              "); pass --resume auto to continue it, "
                              "--resume PATH to start from a given checkpoint, or another "
                              "--run-dir for a new run"));
      return {};
    case ResumeMode::Auto:
      if (committed.empty()) {
        log_info(
            fmt("resume: no committed checkpoint in ", run_dir, "/checkpoints; starting fresh"));
        return {};
      }
      for (auto it = committed.rbegin(); it != committed.rend(); ++it)
        candidates.push_back(it->dir);
      break;
    case ResumeMode::Path:
      if (is_uncommitted_name(req.path))
        throw CheckpointError(fmt(req.path,
                                  ": an uncommitted checkpoint (its save did not finish); "
                                  "resume from a committed step_N directory"));
      candidates.push_back(req.path);
      break;
  }

  std::vector<std::string> failures;
  for (const std::string& dir : candidates) {
    std::string why;
    nlohmann::json man;
    TrainState st;
    bool ok = attempt([&] { man = read_manifest(dir, Verify::Sizes); }, why);
    int failed = agree_failure(comm, !ok);
    if (!failed) {
      check_resume_config(man, dir, cfg);  // a config conflict is no reason to fall back
      ok = attempt([&] { st = load_checkpoint(dir, be, chunks, LoadParts::WeightsAndOptimizer); },
                   why);
      failed = agree_failure(comm, !ok);
    }
    if (!failed) {
      if (comm.rank() == 0)
        for (const auto& c : list_checkpoints(run_dir))
          if (c.step > st.step)
            set_aside(c.dir, req.mode == ResumeMode::Auto ? ".corrupt" : ".abandoned",
                      fmt(c.dir, " is newer than the checkpoint resumed from"));
      log_info(fmt("resume: step ", st.step, " from ", dir, " (", st.tokens_seen, " tokens seen)"));
      return {true, dir, st};
    }
    if (why.empty()) why = fmt(dir, ": rank ", failed - 1, " could not load it (see its message)");
    if (!ok && comm.size() > 1) log_warn(why);
    failures.push_back(why);
    if (req.mode == ResumeMode::Path) throw CheckpointError(why);
    log_warn(fmt("resume: ", dir, " is unusable, trying the previous checkpoint: ", why));
  }
  std::string all;
  for (const auto& f : failures) all += "\n  " + f;
  throw CheckpointError(fmt("resume auto: no committed checkpoint of ", run_dir,
                            " loads; start a new run directory or repair one of them:", all));
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
