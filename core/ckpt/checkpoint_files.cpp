#include "core/ckpt/checkpoint_files.h"

#include <algorithm>
#include <filesystem>
#include <regex>

#include "core/util/error.h"
#include "core/util/log.h"

namespace m6 {
namespace fs = std::filesystem;

ExpertBlock expert_block_of(const Config& cfg, const std::vector<Chunk>& chunks) {
  int lo = -1, hi = -1;
  for (const Chunk& c : chunks) {
    if (c.kind != ChunkKind::Expert) continue;
    lo = lo < 0 ? c.expert : std::min(lo, c.expert);
    hi = std::max(hi, c.expert);
  }
  if (lo < 0) return {};
  const int E = cfg.model.moe.experts, ep = cfg.parallel.ep;
  const int per = E / ep;
  M6_CHECK(per > 0 && lo % per == 0 && hi - lo + 1 == per, "rank holds experts ", lo, "..", hi,
           " but E ", E, " / ep ", ep, " gives blocks of ", per);
  return {lo / per, lo, per};
}

std::vector<const Chunk*> chunks_of_kind(const std::vector<Chunk>& chunks, ChunkSet set) {
  std::vector<const Chunk*> out;
  for (const Chunk& c : chunks)
    if ((c.kind == ChunkKind::Expert) == (set == ChunkSet::Experts)) out.push_back(&c);
  return out;
}

std::string dense_file_name(CkptPart p) {
  return std::string("dense.") + ckpt_part_name(p) + ".safetensors";
}

std::string expert_file_name(int block, CkptPart p) {
  return fmt("experts-ep", block, ".", ckpt_part_name(p), ".safetensors");
}

std::vector<CommittedCheckpoint> list_checkpoints(const std::string& run_dir) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  std::vector<CommittedCheckpoint> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  static const std::regex committed("step_([0-9]+)");
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    std::smatch m;
    if (!std::regex_match(name, m, committed) || !entry.is_directory(ec)) continue;
    out.push_back({std::stoll(m[1].str()), entry.path().string()});
  }
  std::sort(out.begin(), out.end(), [](const CommittedCheckpoint& a, const CommittedCheckpoint& b) {
    return a.step < b.step;
  });
  return out;
}

void prune_checkpoints(const std::string& root, int64_t step, int keep) {
  const std::string run_dir = fs::path(root).parent_path().string();
  std::vector<CommittedCheckpoint> older;
  for (const auto& c : list_checkpoints(run_dir))
    if (c.step <= step) older.push_back(c);
  std::error_code ec;
  const int n_remove = static_cast<int>(older.size()) - std::max(keep, 1);
  for (int i = 0; i < n_remove; ++i) {
    const std::string aside = older[i].dir + ".old";
    fs::remove_all(aside, ec);
    fs::rename(older[i].dir, aside, ec);
    if (ec) {
      log_warn(fmt("checkpoint.keep: cannot remove ", older[i].dir, ": ", ec.message()));
      continue;
    }
  }
  // Leftovers: step_N.old (this pruning's or a crashed one's), step_N.tmp
  // of saves that crashed and latest.tmp.PID of a crashed `latest` update
  // (none is in flight: this runs after a commit).
  static const std::regex leftover("step_[0-9]+\\.(tmp|old)|latest\\.tmp\\.[0-9]+");
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (std::regex_match(name, leftover)) fs::remove_all(entry.path(), ec);
  }
}

}  // namespace m6
