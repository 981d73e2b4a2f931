#include "core/train/delink.h"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>

#include "core/model/sharing.h"
#include "core/util/error.h"
#include "core/util/log.h"

namespace m6 {

namespace {

std::string hex_double(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a", x);
  return buf;
}

}  // namespace

nlohmann::json delink_in_run(Model& model, Config& run_cfg, int64_t step,
                             const std::function<double()>& eval) {
  const ParamCounts before = count_params(model.mcfg());
  const int groups = model.mcfg().sharing.groups;
  const DelinkOptimizer opt = model.mcfg().sharing.delink_optimizer;
  const double loss_before = eval();
  const auto t0 = std::chrono::steady_clock::now();
  model.delink(opt);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  run_cfg.model.sharing = model.mcfg().sharing;
  const double loss_after = eval();
  const ParamCounts after = count_params(model.mcfg());
  const bool identical = std::memcmp(&loss_before, &loss_after, sizeof(double)) == 0;
  const std::string hex_before = hex_double(loss_before), hex_after = hex_double(loss_after);
  log_info(fmt("delink: step ", step, ": ", model.mcfg().n_layers, " layers sharing ", groups,
               " set(s) -> the real model, ", before.unique, " -> ", after.unique,
               " parameters, Adam moments ", delink_optimizer_name(opt), "; eval loss ", hex_before,
               " before, ", hex_after, " after", identical ? " (identical)" : ""));
  if (!identical)
    log_warn(fmt("delink: the eval loss changed across the delink (", loss_before, " -> ",
                 loss_after, "); the delinked model should compute the same function"));
  return {{"step", step},
          {"loss_before", loss_before},
          {"loss_after", loss_after},
          {"loss_before_hex", hex_before},
          {"loss_after_hex", hex_after},
          {"identical", identical},
          {"optimizer", delink_optimizer_name(opt)},
          {"groups", groups},
          {"params_before", before.unique},
          {"params_after", after.unique},
          {"seconds", seconds}};
}

}  // namespace m6
