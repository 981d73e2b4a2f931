// Internals of core/train/checkpoint*.cpp: which files a checkpoint has, who
// writes them, and the housekeeping of a run's checkpoints/ directory.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/ckpt/checkpoint.h"
#include "core/config/config.h"
#include "core/model/params.h"

namespace m6 {

// The experts a rank holds, as a block of the EP split (DESIGN.md section 4):
// block j = experts [j*E/ep, (j+1)*E/ep). index -1: no experts (dense model).
struct ExpertBlock {
  int index = -1;
  int first = 0, count = 0;
};
// From the Expert chunks (checked against cfg: E/ep consecutive experts).
ExpertBlock expert_block_of(const Config& cfg, const std::vector<Chunk>& chunks);

enum class ChunkSet { Dense, Experts };
std::vector<const Chunk*> chunks_of_kind(const std::vector<Chunk>& chunks, ChunkSet set);

std::string dense_file_name(CkptPart p);              // dense.weights.safetensors
std::string expert_file_name(int block, CkptPart p);  // experts-ep3.adam_m.safetensors

// After a commit of `step` in checkpoints root `root`: removes committed
// checkpoints older than the newest `keep` at or below `step` (each renamed
// to step_N.old first, so a half-removed one never looks committed) and the
// leftovers of crashed saves and removals (step_N.tmp, step_N.old).
void prune_checkpoints(const std::string& root, int64_t step, int keep);

}  // namespace m6
