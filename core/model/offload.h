// Granular offload placement (DESIGN.md section 5): which chunks keep their
// Adam moments (offload.optimizer) and their fp32 master weights
// (offload.params) in the host arena. The rule depends only on the chunk plan
// and the config -- never on the rank -- and is shared by the model's storage
// and the memory planner (core/plan), so the plan describes what is allocated.
//
// Order: layer-set chunks (dense part, then its experts) in model order, then
// the embedding and the final LayerNorm. Each fraction F takes the shortest
// prefix of that order whose parameters reach F of the rank's parameters
// (a chunk is taken when at least half of it is still wanted), so
// offload.params <= offload.optimizer makes the host-master chunks a subset of
// the host-moment chunks. The embedding and head never stream (they are used
// at both ends of every step); they can only keep their moments on the host.
#pragma once
#include <cstddef>
#include <vector>

#include "core/config/config.h"
#include "core/model/params.h"

namespace m6 {

struct OffloadPlacement {
  bool adam_on_host = false;
  bool master_on_host = false;
};

// One entry per chunk of CHUNKS (same order).
std::vector<OffloadPlacement> place_offload(const std::vector<Chunk>& chunks,
                                            const OffloadConfig& o);

// Floats per streamed piece of offload.chunk_mb MiB (at least 16).
size_t offload_piece_floats(const OffloadConfig& o);

}  // namespace m6
