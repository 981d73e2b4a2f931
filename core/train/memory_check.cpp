#include "core/train/memory_check.h"

#include "core/model/sharing.h"
#include "core/util/bytes.h"
#include "core/util/error.h"

namespace m6 {

namespace {

bool is_cpu(const Backend& be) { return be.name().rfind("cpu", 0) == 0; }

// The capacity KEY names, else FALLBACK.
int64_t capacity(const std::string& text, int64_t fallback) {
  if (text.empty()) return fallback;
  return parse_bytes(text).value_or(fallback);  // validate_config checked the syntax
}

}  // namespace

MemoryPlan check_run_memory(const Config& cfg, int world, const Backend& be) {
  if ((cfg.offload.optimizer > 0 || cfg.offload.params > 0) && !be.has_host_arena())
    throw ConfigError(
        fmt(cfg.source, ": offload.", cfg.offload.optimizer > 0 ? "optimizer (" : "params (",
            cfg.offload.optimizer > 0 ? cfg.offload.optimizer : cfg.offload.params, "): backend ",
            be.name(), " has no host arena to offload to; allowed with it: 0"));
  const PlanStorage storage = is_cpu(be) ? PlanStorage::Cpu : PlanStorage::Gpu;
  const MemoryPlan plan = plan_memory(cfg, world, storage);
  const int64_t ram = host_physical_memory();
  // The CPU backend's device is host memory; a GPU's size is only known when
  // train.device_memory says it.
  const int64_t device_cap = capacity(cfg.train.device_memory, is_cpu(be) ? ram : 0);
  const int64_t host_cap = capacity(cfg.train.host_memory, ram);
  auto refuse_unfit = [&](const Config& c, const char* what) {
    const FitCheck fit = check_fit(c, world, storage, device_cap, host_cap);
    if (fit.fits || cfg.train.allow_unfit) return;
    const MemoryPlan p = plan_memory(c, world, storage);
    throw ConfigError(fmt(cfg.source, ": ", what, " does not fit in memory (", world,
                          " rank(s)):\n", format_memory_plan(p), "\n", format_fit(fit, p),
                          "\nchange the settings above, or set train.allow_unfit=true to "
                          "allocate anyway"));
  };
  refuse_unfit(cfg, "the layout");
  // A run that delinks grows into the real model: it must fit too.
  if (cfg.model.sharing.groups > 0 && cfg.model.sharing.delink_at_step > 0) {
    Config real = cfg;
    real.model = delinked_model(cfg.model);
    refuse_unfit(real, "the real model after the delink (model.sharing.delink_at_step)");
  }
  return plan;
}

MemoryPeaks memory_peaks(const Backend& be) {
  const Backend::MemoryStats st = be.memory_stats();
  return {st.device_peak, st.host_peak, process_peak_rss_bytes()};
}

}  // namespace m6
