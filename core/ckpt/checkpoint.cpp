#include "core/ckpt/checkpoint.h"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <thread>

#include "core/ckpt/checkpoint_files.h"
#include "core/util/error.h"
#include "core/util/failpoint.h"
#include "core/util/fs.h"
#include "core/util/log.h"
#include "core/util/sha256.h"

namespace m6 {
namespace fs = std::filesystem;

namespace {

constexpr CkptPart kParts[3] = {CkptPart::Weights, CkptPart::AdamM, CkptPart::AdamV};

float* buffer_of(const Chunk& c, CkptPart p) {
  return p == CkptPart::Weights ? c.param : p == CkptPart::AdamM ? c.adam_m : c.adam_v;
}

// Size and digest of one written file, in a fixed-size record so that the
// all-gather of section 3 of save_checkpoint moves plain bytes.
struct FileInfo {
  int64_t size = 0;
  char sha256[64] = {};
};

// What one rank tells rank 0 after writing its files.
struct RankReport {
  int32_t ok = 0;      // 1: every file this rank had to write is complete and fsynced
  int32_t block = -1;  // the expert block whose files it wrote; -1 none
  int32_t expert_first = 0, expert_count = 0;
  FileInfo dense[3];     // rank 0 only
  FileInfo experts[3];   // when block >= 0
  char error[480] = {};  // the start of the message when ok == 0
};

// Writes one part of `chunks` to path (atomic, fsynced) and returns its size and digest.
FileInfo write_part(const std::string& path, CkptPart part, Backend& be,
                    const std::vector<const Chunk*>& chunks) {
  std::vector<std::vector<float>> hosts;
  std::vector<StTensorView> views;
  hosts.reserve(chunks.size());
  for (const Chunk* c : chunks) {
    hosts.emplace_back(c->numel);
    be.to_host(hosts.back().data(), buffer_of(*c, part), c->numel * sizeof(float));
    for (const auto& t : c->tensors)
      views.push_back({t.name, StDType::F32, t.shape, hosts.back().data() + t.offset});
  }
  write_safetensors(path, views, {});
  FileInfo fi;
  fi.size = static_cast<int64_t>(fs::file_size(path));
  const std::string sha = sha256_file(path);
  std::memcpy(fi.sha256, sha.data(), std::min(sha.size(), sizeof fi.sha256));
  return fi;
}

nlohmann::json file_entry(const FileInfo& fi, CkptPart part, const ExpertBlock* block) {
  nlohmann::json e = {{"size", fi.size},
                      {"sha256", std::string(fi.sha256, sizeof fi.sha256)},
                      {"part", ckpt_part_name(part)}};
  e["experts"] = block ? nlohmann::json::array({block->first, block->count}) : nlohmann::json();
  return e;
}

nlohmann::json manifest_of(const Config& cfg, const TrainState& st, int world,
                           const nlohmann::json& files) {
  nlohmann::json window = nlohmann::json::array();
  for (double x : st.spike_window) window.push_back(x);
  const int64_t samples = st.step * int64_t(cfg.train.global_batch);
  return {
      {"format", "m6train-checkpoint"},
      {"format_version", kCheckpointFormatVersion},
      {"step", st.step},
      {"tokens_seen", st.tokens_seen},
      {"adam_t", st.adam_t},
      {"skipped_steps", st.skipped_steps},
      {"consecutive_skips", st.consecutive_skips},
      // Sampling is a pure function of (seed, global sample index): the
      // next step is the whole data position (core/data/sampler.cpp).
      {"data", {{"next_step", st.step}, {"samples_seen", samples}, {"seed", cfg.train.seed}}},
      // No RNG carries state: initial values are keyed by (seed, tensor
      // name), data windows by (seed, sample index).
      {"rng", {{"kind", "counter-based"}, {"seed", cfg.train.seed}}},
      {"loss_scaler",
       {{"active", st.loss_scaler.active},
        {"scale", st.loss_scaler.scale},
        {"good_steps", st.loss_scaler.good_steps},
        {"hysteresis_left", st.loss_scaler.hysteresis_left}}},
      {"spike_guard", {{"window", window}}},
      {"layout", {{"world", world}, {"ep", cfg.parallel.ep}}},
      {"config", config_to_json(cfg)},
      {"files", files},
  };
}

// Rank 0, after every rank's files are complete: manifest, rename (the
// commit point), `latest`, pruning.
void commit(const std::string& root, const std::string& name, const Config& cfg,
            const TrainState& st, int world, const std::vector<RankReport>& reports) {
  const std::string final_dir = root + "/" + name, tmp_dir = final_dir + ".tmp";
  nlohmann::json files = nlohmann::json::object();
  for (int k = 0; k < 3; ++k)
    files[dense_file_name(kParts[k])] = file_entry(reports[0].dense[k], kParts[k], nullptr);
  for (const RankReport& r : reports) {
    if (r.block < 0) continue;
    const ExpertBlock b{r.block, r.expert_first, r.expert_count};
    for (int k = 0; k < 3; ++k)
      files[expert_file_name(r.block, kParts[k])] = file_entry(r.experts[k], kParts[k], &b);
  }
  atomic_write_file(tmp_dir + "/manifest.json", manifest_of(cfg, st, world, files).dump(2) + "\n");
  fsync_dir(tmp_dir);
  failpoint_kill(Failpoint::KillSaveManifest, st.step, 0);

  // A committed directory of the same step (a resumed run that replaces a
  // corrupt one) is moved aside first: rename cannot replace a non-empty one.
  std::error_code ec;
  const std::string aside = final_dir + ".old";
  if (fs::exists(final_dir)) {
    fs::remove_all(aside, ec);
    fs::rename(final_dir, aside, ec);
    if (ec) throw CheckpointError(fmt("cannot move ", final_dir, " aside: ", ec.message()));
  }
  fs::rename(tmp_dir, final_dir, ec);
  if (ec)
    throw CheckpointError(fmt("cannot rename ", tmp_dir, " to ", final_dir, ": ", ec.message()));
  fsync_dir(root);
  failpoint_kill(Failpoint::KillSaveRename, st.step, 0);
  atomic_write_file(root + "/latest", name + "\n");
  failpoint_kill(Failpoint::KillSaveLatest, st.step, 0);
  fs::remove_all(aside, ec);
  prune_checkpoints(root, st.step, cfg.checkpoint.keep);
}

}  // namespace

const char* ckpt_part_name(CkptPart p) {
  switch (p) {
    case CkptPart::Weights:
      return "weights";
    case CkptPart::AdamM:
      return "adam_m";
    case CkptPart::AdamV:
      return "adam_v";
  }
  return "?";
}

std::string checkpoint_dir_name(int64_t step) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

std::string save_checkpoint(const std::string& run_dir, const Config& cfg, const TrainState& st,
                            Backend& be, const std::vector<Chunk>& chunks, Comm& comm) {
  const int rank = comm.rank(), world = comm.size();
  const CommLabel label(comm.activity(), "checkpoint save");  // named if a peer never arrives
  const std::string root = run_dir + "/checkpoints";
  const std::string name = checkpoint_dir_name(st.step);
  const std::string tmp_dir = root + "/" + name + ".tmp";

  // 1. Rank 0 makes an empty step_X.tmp/ (a crashed save of this step may
  //    have left one); everyone learns whether that worked.
  std::string error;
  int32_t ok = 1;
  if (rank == 0) {
    try {
      std::error_code ec;
      fs::remove_all(tmp_dir, ec);
      make_dirs(tmp_dir);
    } catch (const std::exception& e) {
      ok = 0;
      error = e.what();
    }
  }
  comm.broadcast(&ok, 1, CommDType::I32, 0);
  if (!ok) throw CheckpointError(rank == 0 ? error : fmt(tmp_dir, ": rank 0 could not create it"));

  // 2. Who writes what: rank 0 the replicated tensors, the lowest rank
  //    holding each expert block that block.
  const ExpertBlock mine = expert_block_of(cfg, chunks);
  std::vector<int32_t> blocks(world);
  int32_t my_block = mine.index;
  comm.all_gather(&my_block, blocks.data(), 1, CommDType::I32);
  const bool writes_experts =
      mine.index >= 0 &&
      std::find(blocks.begin(), blocks.end(), mine.index) - blocks.begin() == rank;

  // 3. Write, then tell rank 0 (the all-gather doubles as the "all files
  //    complete" barrier).
  RankReport rep;
  if (failpoint_hit(Failpoint::SlowSave, st.step, rank))
    std::this_thread::sleep_for(std::chrono::seconds(1));
  try {
    if (rank == 0) {
      const auto dense = chunks_of_kind(chunks, ChunkSet::Dense);
      for (int k = 0; k < 3; ++k)
        rep.dense[k] = write_part(tmp_dir + "/" + dense_file_name(kParts[k]), kParts[k], be, dense);
    }
    if (writes_experts) {
      const auto experts = chunks_of_kind(chunks, ChunkSet::Experts);
      for (int k = 0; k < 3; ++k)
        rep.experts[k] = write_part(tmp_dir + "/" + expert_file_name(mine.index, kParts[k]),
                                    kParts[k], be, experts);
      rep.block = mine.index;
      rep.expert_first = mine.first;
      rep.expert_count = mine.count;
    }
    rep.ok = 1;
  } catch (const std::exception& e) {
    std::snprintf(rep.error, sizeof rep.error, "%s", e.what());
  }
  if (failpoint_hit(Failpoint::SignalSave, st.step, rank)) std::raise(SIGTERM);
  failpoint_kill(Failpoint::KillSaveFiles, st.step, rank);
  std::vector<RankReport> reports(world);
  comm.all_gather(&rep, reports.data(), sizeof(RankReport), CommDType::U8);
  for (int r = 0; r < world; ++r)
    if (!reports[r].ok)
      throw CheckpointError(fmt("checkpoint ", tmp_dir, ": rank ", r,
                                " could not write its files: ", reports[r].error));

  // 4. Rank 0 commits; everyone learns whether that worked.
  int32_t committed = 1;
  if (rank == 0) {
    try {
      commit(root, name, cfg, st, world, reports);
    } catch (const std::exception& e) {
      committed = 0;
      error = e.what();
    }
  }
  comm.broadcast(&committed, 1, CommDType::I32, 0);
  if (!committed)
    throw CheckpointError(rank == 0 ? error : fmt(root, "/", name, ": rank 0 could not commit it"));
  return root + "/" + name;
}

std::string save_checkpoint(const std::string& run_dir, const Config& cfg, const TrainState& st,
                            Backend& be, const std::vector<Chunk>& chunks) {
  auto comm = make_self_comm();
  return save_checkpoint(run_dir, cfg, st, be, chunks, *comm);
}

std::string latest_checkpoint(const std::string& run_dir) {
  const std::string root = run_dir + "/checkpoints";
  const std::string latest = root + "/latest";
  if (!fs::exists(latest))
    throw CheckpointError(fmt(latest, ": no checkpoint in run directory ", run_dir,
                              " (train it first, or pass the right --run-dir)"));
  std::string name = read_file(latest);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  if (!std::regex_match(name, std::regex("step_[0-9]+")))
    throw CheckpointError(fmt(latest, ": does not name a checkpoint directory (got '", name, "')"));
  return root + "/" + name;
}

TrainState load_checkpoint(const std::string& dir, Backend& be, std::vector<Chunk>& chunks,
                           LoadParts parts) {
  const nlohmann::json man = read_manifest(dir, Verify::Sizes);
  const int n_parts = parts == LoadParts::Weights ? 1 : 3;
  for (int k = 0; k < n_parts; ++k) {
    const CheckpointTensors tensors(dir, man, kParts[k], chunks);
    for (auto& c : chunks) {
      std::vector<float> host(c.numel, 0.0f);
      for (const auto& t : c.tensors)
        std::memcpy(host.data() + t.offset, tensors.get(t), t.numel * sizeof(float));
      be.to_device(buffer_of(c, kParts[k]), host.data(), c.numel * sizeof(float));
    }
  }
  return train_state_of(man, dir);
}

TrainState load_checkpoint(const std::string& dir, Backend& be, std::vector<Chunk>& chunks,
                           bool with_optimizer) {
  return load_checkpoint(dir, be, chunks,
                         with_optimizer ? LoadParts::WeightsAndOptimizer : LoadParts::Weights);
}

}  // namespace m6
