// Pseudo-to-Real (M6-10T, DESIGN.md section 5): a "pseudo" model whose L
// logical layers share G parameter sets (model.sharing.groups) is delinked
// into the "real" model, in which every logical layer owns a copy of its
// set's weights. The real model computes exactly the same function (same
// values, same ops, same order), so the loss on a fixed batch is bit-identical
// just before and just after delinking.
//
// Used by Model::delink (in-run, at model.sharing.delink_at_step) and by
// `m6train delink` (offline, checkpoint to checkpoint).
#pragma once
#include <memory>
#include <vector>

#include "core/backend/backend.h"
#include "core/config/config.h"
#include "core/model/device_arena.h"
#include "core/model/params.h"

namespace m6 {

// The real model's config: the same model with sharing off (groups 0,
// delink_at_step 0); delink_optimizer is kept.
ModelConfig delinked_model(const ModelConfig& pseudo);
Config delinked_config(const Config& pseudo);

// The layout a run of CFG trains at STEP (0-based, the next step to run): the
// pseudo layout before model.sharing.delink_at_step, the real one from it on.
// A resume at or after the delink step builds the real model.
Config config_at_step(const Config& cfg, int64_t step);

// Copies the pseudo chunks FROM (planned by plan_chunks(pseudo, r)) into the
// real chunks TO (planned by plan_chunks(delinked_model(pseudo), r) for the
// same expert range r, device buffers allocated). Every logical layer's dense
// chunk and expert chunks receive their set's weights; the embedding and head
// chunks are copied as they are. Adam moments: the embedding and head keep
// theirs; the layers' are copied from their set (Copy) or zeroed (Reset).
// Gradients of TO are zeroed. Throws Error when the two plans do not match.
void delink_chunks(Backend& be, const ModelConfig& pseudo, const std::vector<Chunk>& from,
                   std::vector<Chunk>& to, DelinkOptimizer opt);

// Buffers (param, grad, Adam m and v) for a list of planned chunks, released
// together. The parameter memory of a Model, and the scratch of the offline
// delink. With offload (core/model/offload.h) the master weights and Adam
// moments of the chosen chunks go to the backend's host arena.
class ChunkStorage {
 public:
  // Allocates, zero-filled.
  ChunkStorage(Backend& be, std::vector<Chunk>& chunks, const OffloadConfig& offload = {});
 private:
  DeviceArena arena_, host_;
};

const char* delink_optimizer_name(DelinkOptimizer o);

}  // namespace m6
