// Checkpoints (DESIGN.md section 6). One directory per step,
// <run>/checkpoints/step_XXXXXXXX/, holding
//   manifest.json                       format version, resolved config, step,
//                                       tokens seen, data position, RNG and
//                                       loss-scaler state, spike-guard window,
//                                       the layout that wrote it, and for every
//                                       file its size, sha256 and content
//   dense.{weights,adam_m,adam_v}.safetensors
//                                       replicated tensors (embeddings, attention,
//                                       LayerNorms, routers, dense FFNs), by rank 0
//   experts-ep{j}.{weights,adam_m,adam_v}.safetensors
//                                       experts [j*E/ep, (j+1)*E/ep), by the lowest
//                                       rank that holds them
// Tensors are keyed by global names (layers.3.moe.experts.17.fc1.weight), so
// a checkpoint does not depend on which rank wrote what: any layout loads
// any checkpoint by reading each tensor from whichever file holds it.
//
// Commit protocol: every rank writes its files (each fsynced and renamed
// into place) into step_X.tmp/; an all-gather tells rank 0 that all files are
// complete and gives their sizes and digests; rank 0 writes the manifest,
// fsyncs, renames step_X.tmp -> step_X (the commit point), replaces `latest`
// by write-temp-and-rename and only then removes checkpoints beyond
// checkpoint.keep. A crash at any moment leaves the previous committed
// checkpoint intact; an uncommitted step_X.tmp is never read.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "core/ckpt/safetensors.h"
#include "core/config/config.h"
#include "core/model/params.h"
#include "core/parallel/comm.h"

namespace m6 {

// 2: files split by owner (dense / experts-ep{j}); 1 (never released) had one
// file per part.
constexpr int kCheckpointFormatVersion = 2;

// fp16 dynamic loss scaling (core/train/loss_scaler.h): the scaler's whole
// state, so that a resumed run scales, skips and grows exactly as the
// uninterrupted one. active is false for fp32/bf16 runs (scale 1).
struct LossScalerState {
  bool active = false;
  double scale = 1.0;
  int64_t good_steps = 0;       // clean steps since the last overflow or growth
  int64_t hysteresis_left = 0;  // overflows still tolerated before the next backoff
};

struct TrainState {
  int64_t step = 0;  // completed optimizer steps (the next step to run)
  int64_t tokens_seen = 0;
  int64_t adam_t = 0;  // updates applied (skipped steps excluded)
  int64_t skipped_steps = 0;
  int64_t consecutive_skips = 0;  // so a resumed run aborts where the original would
  LossScalerState loss_scaler;
  std::vector<double> spike_window;  // the spike guard's recent losses, oldest first
};

enum class CkptPart { Weights, AdamM, AdamV };
const char* ckpt_part_name(CkptPart p);  // "weights", "adam_m", "adam_v"

enum class LoadParts { Weights, WeightsAndOptimizer };
enum class Verify { Sizes, Full };  // Full also checks every file's sha256

// "step_00000042"
std::string checkpoint_dir_name(int64_t step);

// Saves this rank's part of the checkpoint of st.step with the protocol
// above; a collective over `comm` (every rank calls it). Prunes to
// cfg.checkpoint.keep committed checkpoints. Returns the committed directory.
// Throws CheckpointError on every rank when any rank fails to write.
std::string save_checkpoint(const std::string& run_dir, const Config& cfg, const TrainState& st,
                            Backend& be, const std::vector<Chunk>& chunks, Comm& comm);
// Single-process form.
std::string save_checkpoint(const std::string& run_dir, const Config& cfg, const TrainState& st,
                            Backend& be, const std::vector<Chunk>& chunks);

// The committed checkpoints of a run (directories step_N; never step_N.tmp
// or anything else), by ascending step.
struct CommittedCheckpoint {
  int64_t step = 0;
  std::string dir;
};
std::vector<CommittedCheckpoint> list_checkpoints(const std::string& run_dir);

// The directory <run>/checkpoints/latest points to; throws CheckpointError
// when there is none or it is unreadable.
std::string latest_checkpoint(const std::string& run_dir);

// Reads and checks a checkpoint's manifest: format, version, required fields,
// the file list (names, sizes, sha256 with Verify::Full, contents covering
// every expert once per part) and no file in the directory it does not list.
// Throws CheckpointError naming the file at fault.
nlohmann::json read_manifest(const std::string& ckpt_dir, Verify verify = Verify::Full);

// The training state recorded in a (checked) manifest.
TrainState train_state_of(const nlohmann::json& manifest, const std::string& ckpt_dir);

// One part (weights, Adam m or v) of a checkpoint, by global tensor name:
// opens only the files that may hold the tensors of `wanted` (the dense file
// and the expert files whose range meets the experts of `wanted`), verifying
// each file's sha256 as it is opened.
class CheckpointTensors {
 public:
  CheckpointTensors(const std::string& dir, const nlohmann::json& manifest, CkptPart part,
                    const std::vector<Chunk>& wanted);
  // The tensor's F32 data; CheckpointError naming the file when it is
  // missing or its dtype or shape differs from t's.
  const float* get(const ParamTensor& t) const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;  // views point into them: never moved
};

// Loads weights (and Adam moments) into chunks by global name and returns
// the recorded state. Checks the manifest (sizes) and the sha256 of each file
// read. Throws CheckpointError naming the file at fault.
TrainState load_checkpoint(const std::string& ckpt_dir, Backend& be, std::vector<Chunk>& chunks,
                           LoadParts parts);
// Older form: with_optimizer selects WeightsAndOptimizer.
TrainState load_checkpoint(const std::string& ckpt_dir, Backend& be, std::vector<Chunk>& chunks,
                           bool with_optimizer);

}  // namespace m6
