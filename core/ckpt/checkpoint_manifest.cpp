// Reading a checkpoint: the manifest checks (every way a checkpoint directory
// can be damaged -- truncated, bit-flipped, missing or extra file, bad
// manifest, future version -- is a CheckpointError naming the file) and the
// by-name tensor lookup that lets any layout load any checkpoint.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>

#include "core/ckpt/checkpoint.h"
#include "core/ckpt/checkpoint_files.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/sha256.h"

namespace m6 {
namespace fs = std::filesystem;

namespace {

constexpr CkptPart kParts[3] = {CkptPart::Weights, CkptPart::AdamM, CkptPart::AdamV};

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw CheckpointError(fmt(path, ": ", what));
}

int64_t get_count(const nlohmann::json& j, const char* key, const std::string& path) {
  if (!j.contains(key)) bad(path, fmt("lacks the field \"", key, "\" (bad manifest)"));
  const auto& v = j.at(key);
  if (!v.is_number_integer() || v.get<int64_t>() < 0)
    bad(path, fmt("field \"", key, "\" must be a non-negative integer (got ", v.dump(), ")"));
  return v.get<int64_t>();
}

bool is_hex64(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// The part a file entry holds, and its expert range ([first, first+count);
// count 0 for the dense file).
struct FileMeta {
  std::string name;
  CkptPart part = CkptPart::Weights;
  int64_t first = 0, count = 0;
  bool dense = true;
  uint64_t size = 0;
  std::string sha256;
};

FileMeta file_meta(const std::string& path, const std::string& name, const nlohmann::json& info) {
  const std::string where = fmt(path, ": files[\"", name, "\"]");
  if (name.empty() || name.find('/') != std::string::npos || name[0] == '.' ||
      name == "manifest.json")
    bad(path, fmt("lists the file name \"", name, "\", which cannot be a checkpoint file"));
  if (!info.is_object()) bad(where, "must be an object");
  FileMeta f;
  f.name = name;
  f.size = static_cast<uint64_t>(get_count(info, "size", where));
  if (!info.contains("sha256") || !info["sha256"].is_string() ||
      !is_hex64(info["sha256"].get<std::string>()))
    bad(where, "sha256 must be 64 lowercase hex digits");
  f.sha256 = info["sha256"].get<std::string>();
  const std::string part = info.value("part", std::string());
  bool known = false;
  for (CkptPart p : kParts)
    if (part == ckpt_part_name(p)) f.part = p, known = true;
  if (!known) bad(where, fmt("part must be weights, adam_m or adam_v (got \"", part, "\")"));
  const auto& ex = info.contains("experts") ? info["experts"] : nlohmann::json();
  if (!ex.is_null()) {
    if (!ex.is_array() || ex.size() != 2 || !ex[0].is_number_integer() ||
        !ex[1].is_number_integer() || ex[0].get<int64_t>() < 0 || ex[1].get<int64_t>() < 1)
      bad(where, fmt("experts must be null or [first, count] (got ", ex.dump(), ")"));
    f.dense = false;
    f.first = ex[0].get<int64_t>();
    f.count = ex[1].get<int64_t>();
  }
  return f;
}

std::vector<FileMeta> files_of(const nlohmann::json& man, const std::string& path) {
  std::vector<FileMeta> out;
  for (const auto& [name, info] : man.at("files").items())
    out.push_back(file_meta(path, name, info));
  return out;
}

// Each part must have one dense file and expert files tiling [0, E) exactly.
void check_coverage(const std::vector<FileMeta>& files, int64_t E, const std::string& path) {
  for (CkptPart p : kParts) {
    int dense = 0;
    std::vector<std::pair<int64_t, int64_t>> ranges;
    for (const auto& f : files) {
      if (f.part != p) continue;
      if (f.dense)
        ++dense;
      else
        ranges.push_back({f.first, f.count});
    }
    if (dense != 1)
      bad(path, fmt("lists ", dense, " dense files of part ", ckpt_part_name(p),
                    " (expected 1; incomplete or bad manifest)"));
    std::sort(ranges.begin(), ranges.end());
    int64_t next = 0;
    for (auto [first, count] : ranges) {
      if (first != next)
        bad(path, fmt("the files of part ", ckpt_part_name(p), " do not hold experts ", next, "..",
                      first - 1, " exactly once (incomplete or bad manifest)"));
      next = first + count;
    }
    if (next != E)
      bad(path, fmt("the files of part ", ckpt_part_name(p), " hold experts 0..", next - 1,
                    " but the config has ", E, " (incomplete or bad manifest)"));
  }
}

// Everything read_manifest promises, on a parsed manifest.
void check_manifest(const nlohmann::json& man, const std::string& dir, const std::string& path,
                    Verify verify) {
  std::error_code ec;
  if (!man.is_object() || !man.contains("format") || man["format"] != "m6train-checkpoint")
    bad(path, "not an m6train checkpoint manifest (\"format\" is not \"m6train-checkpoint\")");
  const auto& ver = man.contains("format_version") ? man["format_version"] : nlohmann::json();
  if (!ver.is_number_integer())
    bad(path, fmt("format_version must be an integer (got ", ver.dump(), ")"));
  if (ver.get<int64_t>() > kCheckpointFormatVersion)
    bad(path, fmt("format_version ", ver.get<int64_t>(),
                  " was written by a newer m6train; this one reads ", kCheckpointFormatVersion,
                  " (upgrade m6train to resume it)"));
  if (ver.get<int64_t>() != kCheckpointFormatVersion)
    bad(path, fmt("format_version ", ver.get<int64_t>(), " is not supported (this m6train reads ",
                  kCheckpointFormatVersion, ")"));
  for (const char* key : {"step", "tokens_seen", "adam_t", "skipped_steps"})
    get_count(man, key, path);
  for (const char* key : {"config", "files", "layout"})
    if (!man.contains(key) || !man[key].is_object())
      bad(path, fmt("lacks the object \"", key, "\" (bad manifest)"));
  Config cfg;
  try {
    cfg = config_from_json(man["config"]);
  } catch (const Error& e) {
    bad(path, fmt("its config is unreadable: ", e.what()));
  }
  const std::vector<FileMeta> files = files_of(man, path);
  check_coverage(files, cfg.model.moe.every > 0 ? cfg.model.moe.experts : 0, path);

  std::set<std::string> listed{"manifest.json"};
  for (const FileMeta& f : files) {
    listed.insert(f.name);
    const std::string fp = dir + "/" + f.name;
    if (!fs::is_regular_file(fp, ec)) bad(fp, "listed in the manifest but missing");
    const uint64_t size = fs::file_size(fp, ec);
    if (size != f.size)
      bad(fp,
          fmt("size ", size, " bytes, the manifest says ", f.size, " (truncated or overwritten)"));
    if (verify == Verify::Full && sha256_file(fp) != f.sha256)
      bad(fp, "sha256 does not match the manifest (corrupt file)");
  }
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!listed.count(name))
      bad(entry.path().string(),
          "not listed in the manifest (an extra file: a checkpoint directory "
          "holds exactly the files its manifest lists)");
  }
}

}  // namespace

nlohmann::json read_manifest(const std::string& dir, Verify verify) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw CheckpointError(fmt(dir, ": no such checkpoint directory"));
  const std::string path = dir + "/manifest.json";
  if (!fs::exists(path, ec))
    bad(path, "missing (not a checkpoint directory, or one whose save never committed)");
  nlohmann::json man;
  try {
    man = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    bad(path, fmt("not valid JSON (bad manifest): ", e.what()));
  }
  try {
    check_manifest(man, dir, path, verify);
  } catch (const nlohmann::json::exception& e) {
    // A field of the wrong JSON type somewhere the checks above did not look.
    bad(path, fmt("bad manifest: ", e.what()));
  }
  return man;
}

namespace {

TrainState train_state_fields(const nlohmann::json& man, const std::string& path) {
  TrainState st;
  st.step = get_count(man, "step", path);
  st.tokens_seen = get_count(man, "tokens_seen", path);
  st.adam_t = get_count(man, "adam_t", path);
  st.skipped_steps = get_count(man, "skipped_steps", path);
  if (man.contains("consecutive_skips"))
    st.consecutive_skips = get_count(man, "consecutive_skips", path);
  if (man.contains("loss_scaler")) {
    const auto& ls = man["loss_scaler"];
    if (!ls.is_object() || !ls.value("scale", nlohmann::json()).is_number())
      bad(path, "loss_scaler must be an object with a numeric scale");
    st.loss_scaler.scale = ls["scale"].get<double>();
    if (!(st.loss_scaler.scale > 0.0) || !std::isfinite(st.loss_scaler.scale))
      bad(path, fmt("loss_scaler.scale must be a finite positive number (got ",
                    st.loss_scaler.scale, ")"));
    st.loss_scaler.active = ls.value("active", false);
    st.loss_scaler.good_steps = get_count(ls, "good_steps", path);
    st.loss_scaler.hysteresis_left = get_count(ls, "hysteresis_left", path);
  }
  if (man.contains("spike_guard")) {
    const auto& w = man["spike_guard"].value("window", nlohmann::json::array());
    if (!w.is_array()) bad(path, "spike_guard.window must be an array of numbers");
    for (const auto& x : w) {
      if (!x.is_number()) bad(path, fmt("spike_guard.window holds ", x.dump(), ", not a number"));
      st.spike_window.push_back(x.get<double>());
    }
  }
  return st;
}

}  // namespace

TrainState train_state_of(const nlohmann::json& man, const std::string& dir) {
  const std::string path = dir + "/manifest.json";
  try {
    return train_state_fields(man, path);
  } catch (const nlohmann::json::exception& e) {
    bad(path, fmt("bad manifest: ", e.what()));
  }
}

CheckpointTensors::CheckpointTensors(const std::string& dir, const nlohmann::json& man,
                                     CkptPart part, const std::vector<Chunk>& wanted)
    : dir_(dir) {
  int64_t lo = -1, hi = -1;
  for (const Chunk& c : wanted) {
    if (c.kind != ChunkKind::Expert) continue;
    lo = lo < 0 ? c.expert : std::min<int64_t>(lo, c.expert);
    hi = std::max<int64_t>(hi, c.expert);
  }
  for (const FileMeta& f : files_of(man, dir + "/manifest.json")) {
    if (f.part != part) continue;
    if (!f.dense && (lo < 0 || f.first > hi || f.first + f.count <= lo)) continue;
    const std::string fp = dir + "/" + f.name;
    if (sha256_file(fp) != f.sha256) bad(fp, "sha256 does not match the manifest (corrupt file)");
    files_.push_back(std::make_unique<SafetensorsFile>(fp));
  }
}

const float* CheckpointTensors::get(const ParamTensor& t) const {
  for (const auto& f : files_) {
    if (!f->has(t.name)) continue;
    const StTensorView& v = f->get(t.name);
    if (v.dtype != StDType::F32 || v.shape != t.shape) {
      std::string have, want;
      for (auto d : v.shape) have += (have.empty() ? "" : ",") + std::to_string(d);
      for (auto d : t.shape) want += (want.empty() ? "" : ",") + std::to_string(d);
      bad(f->path(), fmt("tensor ", t.name, " is ", st_dtype_name(v.dtype), " [", have,
                         "], the config gives F32 [", want, "]"));
    }
    return static_cast<const float*>(v.data);
  }
  throw CheckpointError(fmt(dir_, ": tensor ", t.name, " is in none of the checkpoint's files"));
}

}  // namespace m6
