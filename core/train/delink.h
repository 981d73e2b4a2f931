// The in-run half of Pseudo-to-Real (model.sharing.delink_at_step, M6-10T):
// the training loop delinks the shared model into the real one between two
// steps, on every rank for its own experts, with no communication.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>

#include "core/config/config.h"
#include "core/model/model.h"

namespace m6 {

// The in-run delink (model.sharing.delink_at_step): EVAL() (the run's
// evaluation, a collective) before, MODEL.delink with the config's
// delink_optimizer, EVAL() after; RUN_CFG's sharing becomes the model's
// (off), so later checkpoints record the real layout. Returns the fields of
// the metrics event "delink": step, loss_before, loss_after (and both as
// C99 hex floats, "%a", so a reader can compare the bits), identical,
// optimizer, unique parameters before and after. A difference in the losses
// is logged as a warning (a GPU reduction may be non-deterministic); the CPU
// backend gives identical losses.
nlohmann::json delink_in_run(Model& model, Config& run_cfg, int64_t step,
                             const std::function<double()>& eval);

}  // namespace m6
