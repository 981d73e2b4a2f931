#include "core/train/checkpoint.h"

#include <cstdio>
#include <filesystem>
#include <cstring>
#include <map>

#include "core/ckpt/safetensors.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/sha256.h"

namespace m6 {
namespace fs = std::filesystem;

namespace {

const char* const kFiles[3] = {"weights.safetensors", "adam_m.safetensors", "adam_v.safetensors"};

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

// Host copies of one buffer kind (0 weights, 1 m, 2 v) of every chunk, keyed by tensor name.
void write_kind(const std::string& path, int kind, Backend& be, const std::vector<Chunk>& chunks) {
  std::vector<std::vector<float>> hosts;
  std::vector<StTensorView> views;
  hosts.reserve(chunks.size());
  for (const auto& c : chunks) {
    const float* src = kind == 0 ? c.param : kind == 1 ? c.adam_m : c.adam_v;
    hosts.emplace_back(c.numel);
    be.to_host(hosts.back().data(), src, c.numel * sizeof(float));
    for (const auto& t : c.tensors)
      views.push_back({t.name, StDType::F32, t.shape, hosts.back().data() + t.offset});
  }
  write_safetensors(path, views, {});
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, const Config& cfg, const TrainState& st,
                            Backend& be, const std::vector<Chunk>& chunks) {
  const std::string root = run_dir + "/checkpoints";
  const std::string name = step_dir_name(st.step);
  const std::string final_dir = root + "/" + name;
  const std::string tmp_dir = final_dir + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp_dir, ec);
  make_dirs(tmp_dir);

  nlohmann::json files = nlohmann::json::object();
  for (int k = 0; k < 3; ++k) {
    const std::string path = tmp_dir + "/" + kFiles[k];
    write_kind(path, k, be, chunks);
    files[kFiles[k]] = {{"size", fs::file_size(path)}, {"sha256", sha256_file(path)}};
  }
  nlohmann::json man = {
      {"format", "m6train-checkpoint"},
      {"format_version", kCheckpointFormatVersion},
      {"step", st.step},
      {"tokens_seen", st.tokens_seen},
      {"adam_t", st.adam_t},
      {"skipped_steps", st.skipped_steps},
      {"layout", {{"world", 1}, {"ep", 1}}},
      {"config", config_to_json(cfg)},
      {"files", files},
  };
  atomic_write_file(tmp_dir + "/manifest.json", man.dump(2) + "\n");
  fsync_dir(tmp_dir);

  fs::remove_all(final_dir, ec);
  fs::rename(tmp_dir, final_dir, ec);
  if (ec) throw CheckpointError(fmt("cannot rename ", tmp_dir, " to ", final_dir, ": ", ec.message()));
  fsync_dir(root);
  atomic_write_file(root + "/latest", name + "\n");
  return final_dir;
}

std::string latest_checkpoint(const std::string& run_dir) {
  const std::string root = run_dir + "/checkpoints";
  const std::string latest = root + "/latest";
  if (!fs::exists(latest))
    throw CheckpointError(fmt(latest, ": no checkpoint in run directory ", run_dir,
                              " (train it first, or pass the right --run-dir)"));
  std::string name = read_file(latest);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  if (name.empty() || name.find('/') != std::string::npos)
    throw CheckpointError(fmt(latest, ": does not name a checkpoint directory (got '", name, "')"));
  return root + "/" + name;
}

nlohmann::json read_manifest(const std::string& dir) {
  const std::string path = dir + "/manifest.json";
  if (!fs::exists(path)) throw CheckpointError(fmt(path, ": missing (not a checkpoint directory?)"));
  nlohmann::json man;
  try {
    man = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(fmt(path, ": not valid JSON: ", e.what()));
  }
  if (!man.is_object() || man.value("format", "") != "m6train-checkpoint")
    throw CheckpointError(fmt(path, ": not an m6train checkpoint manifest"));
  const int version = man.value("format_version", -1);
  if (version != kCheckpointFormatVersion)
    throw CheckpointError(fmt(path, ": format_version ", version, " is not supported (this m6train reads ",
                              kCheckpointFormatVersion, ")"));
  if (!man.contains("files") || !man["files"].is_object())
    throw CheckpointError(fmt(path, ": has no file list"));
  for (const auto& [file, info] : man["files"].items()) {
    const std::string fp = dir + "/" + file;
    if (!fs::exists(fp)) throw CheckpointError(fmt(fp, ": listed in the manifest but missing"));
    const auto size = fs::file_size(fp);
    if (size != info.value("size", uint64_t{0}))
      throw CheckpointError(fmt(fp, ": size ", size, " bytes, manifest says ", info.value("size", 0)));
    if (sha256_file(fp) != info.value("sha256", ""))
      throw CheckpointError(fmt(fp, ": sha256 does not match the manifest (corrupt file)"));
  }
  return man;
}

TrainState load_checkpoint(const std::string& dir, Backend& be, std::vector<Chunk>& chunks,
                           bool with_optimizer) {
  const nlohmann::json man = read_manifest(dir);
  for (int k = 0; k < (with_optimizer ? 3 : 1); ++k) {
    const SafetensorsFile f(dir + "/" + kFiles[k]);
    for (auto& c : chunks) {
      std::vector<float> host(c.numel, 0.0f);
      for (const auto& t : c.tensors) {
        const StTensorView& v = f.get(t.name);
        if (v.dtype != StDType::F32 || v.shape != t.shape)
          throw CheckpointError(fmt(f.path(), ": tensor ", t.name, " has another dtype or shape than the config's"));
        std::memcpy(host.data() + t.offset, v.data, t.numel * sizeof(float));
      }
      float* dst = k == 0 ? c.param : k == 1 ? c.adam_m : c.adam_v;
      be.to_device(dst, host.data(), c.numel * sizeof(float));
    }
  }
  TrainState st;
  st.step = man.value("step", int64_t{0});
  st.tokens_seen = man.value("tokens_seen", int64_t{0});
  st.adam_t = man.value("adam_t", int64_t{0});
  st.skipped_steps = man.value("skipped_steps", int64_t{0});
  return st;
}

}  // namespace m6
