#include "tests/fuzz/fuzz_targets.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <vector>

#include "core/ckpt/safetensors.h"
#include "core/config/config.h"
#include "core/data/dataset.h"
#include "core/ckpt/checkpoint.h"

namespace m6::fuzz {
namespace fs = std::filesystem;
namespace {

// This process's scratch directory (removed at exit): the readers take paths.
class Scratch {
 public:
  Scratch() {
    const char* t = std::getenv("TMPDIR");
    std::string tmpl = std::string(t && *t ? t : "/tmp") + "/m6fuzz.XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!::mkdtemp(buf.data())) throw std::runtime_error("fuzz: mkdtemp failed for " + tmpl);
    dir_ = buf.data();
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  // Writes `data` to dir/rel (creating dir's subfolders) and returns the path.
  std::string put(const std::string& rel, const uint8_t* data, size_t size) {
    const std::string p = dir_ + "/" + rel;
    fs::create_directories(fs::path(p).parent_path());
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!f) throw std::runtime_error("fuzz: cannot write " + p);
    return p;
  }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
};

Scratch& scratch() {
  static Scratch s;
  return s;
}

// The strict YAML loader, then the JSON round trip every accepted config takes
// (config.json of a run, a checkpoint's manifest).
void run_config(const uint8_t* data, size_t size) {
  const std::string p = scratch().put("config.yaml", data, size);
  const Config c = load_config(p, {}, 1);
  const Config back = config_from_json(config_to_json(c));
  if (config_to_json(back) != config_to_json(c))
    throw std::logic_error("config JSON round trip changed the config");
}

// One token shard: header, size and token checks at open, then a read.
void run_shard(const uint8_t* data, size_t size) {
  const std::string p = scratch().put("shard/train_000000.bin", data, size);
  const TokenDataset ds = TokenDataset::open(p, 256, 1);
  std::vector<int32_t> out(static_cast<size_t>(std::min<int64_t>(ds.size(), 64)));
  ds.read(0, static_cast<int64_t>(out.size()), out.data());
  for (int32_t t : out)
    if (t < 0 || t >= 256) throw std::logic_error("shard: accepted a token out of range");
}

// A checkpoint directory: the fuzzed manifest.json and, so that the checks
// after the structural ones are reached too, a zero-filled file of the listed
// size for each plainly named file entry (sizes up to 64 KiB). Sizes are
// verified, digests not. Then the training state.
void run_manifest(const uint8_t* data, size_t size) {
  const std::string dir = scratch().dir() + "/ckpt";
  fs::remove_all(dir);
  scratch().put("ckpt/manifest.json", data, size);
  const auto j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_object() && j.contains("files") && j["files"].is_object()) {
    for (const auto& item : j["files"].items()) {
      const std::string& name = item.key();
      const auto& info = item.value();
      const bool plain = !name.empty() && name.size() < 100 && name != "manifest.json" &&
                         name[0] != '.' &&
                         std::all_of(name.begin(), name.end(), [](char c) {
                           return std::isalnum(static_cast<unsigned char>(c)) || c == '.' ||
                                  c == '_' || c == '-';
                         });
      if (!plain || !info.is_object() || !info.contains("size") ||
          !info["size"].is_number_unsigned() || info["size"].get<uint64_t>() > 65536)
        continue;
      const std::vector<uint8_t> zeros(info["size"].get<size_t>());
      scratch().put("ckpt/" + name, zeros.data(), zeros.size());
    }
  }
  const nlohmann::json man = read_manifest(dir, Verify::Sizes);
  (void)train_state_of(man, dir);
}

// A safetensors file: the header checks at open, then every tensor's bytes
// touched (a view out of bounds is then an AddressSanitizer report).
void run_safetensors(const uint8_t* data, size_t size) {
  const std::string p = scratch().put("t.safetensors", data, size);
  const SafetensorsFile f(p);
  uint64_t sum = 0;
  for (const std::string& name : f.names()) {
    const StTensorView& v = f.get(name);
    // The reader checked shape x dtype against the data size; a zero
    // dimension makes any others irrelevant (and their product may overflow).
    uint64_t n = 1;
    for (int64_t d : v.shape) n = d == 0 || n == 0 ? 0 : n * static_cast<uint64_t>(d);
    const auto* b = static_cast<const uint8_t*>(v.data);
    const size_t bytes = static_cast<size_t>(n) * st_dtype_size(v.dtype);
    if (bytes > 0) sum += b[0] + b[bytes - 1];
  }
  for (const auto& [k, v] : f.metadata()) sum += k.size() + v.size();
  if (sum == 1) std::abort();  // keeps the reads from being optimised away
}

const Target kTargets[] = {
    {"config", ExitCode::Usage, run_config},
    {"shard", ExitCode::Data, run_shard},
    {"manifest", ExitCode::Checkpoint, run_manifest},
    {"safetensors", ExitCode::Checkpoint, run_safetensors},
};

}  // namespace

const Target* find_target(const std::string& name) {
  for (const Target& t : kTargets)
    if (name == t.name) return &t;
  return nullptr;
}

std::string target_names() {
  std::string s;
  for (const Target& t : kTargets) s += (s.empty() ? "" : ", ") + std::string(t.name);
  return s;
}

Outcome run_one(const Target& t, const uint8_t* data, size_t size, std::string* message) {
  try {
    t.run(data, size);
    return Outcome::Accepted;
  } catch (const Error& e) {
    const std::string m = e.what();
    if (e.code() != t.code)
      throw std::logic_error(fmt(t.name, ": rejected with exit code ", static_cast<int>(e.code()),
                                 ", expected ", static_cast<int>(t.code), ": ", m));
    if (m.empty()) throw std::logic_error(fmt(t.name, ": rejected with an empty message"));
    if (message) *message = m;
    return Outcome::Rejected;
  }
}

}  // namespace m6::fuzz
