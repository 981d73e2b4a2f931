// Text and JSON forms of a memory plan and a fit check (--dry-run, the
// trainer's refusal message, --json).
#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/plan/memory_plan.h"
#include "core/util/bytes.h"

namespace m6 {

namespace {

std::string pct(double f) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", f);
  return b;
}

std::string row(const std::string& name, int64_t device, int64_t host) {
  char b[256];
  std::snprintf(b, sizeof b, "  %-34s %14s %14s", name.c_str(),
                device ? format_bytes(device).c_str() : "-",
                host ? format_bytes(host).c_str() : "-");
  return b;
}

std::string setting(Recompute r, double fo, double fp) {
  return std::string("train.recompute=") + recompute_name(r) + " offload.optimizer=" + pct(fo) +
         " offload.params=" + pct(fp);
}

}  // namespace

std::string format_memory_plan(const MemoryPlan& p) {
  std::string s =
      "memory per rank (" +
      std::string(p.storage == PlanStorage::Gpu ? "GPU layout" : "CPU backend, fp32 storage") +
      "; " + setting(p.recompute, p.offload_optimizer, p.offload_params) + "):\n";
  char b[256];
  std::snprintf(b, sizeof b, "  %-34s %14s %14s\n", "", "device", "host");
  s += b;
  for (const MemoryLine& l : p.lines) s += row(l.name, l.device, l.host) + "\n";
  s += row("total", p.device_total, p.host_total) + "\n";
  s += "activations kept per layer (recompute none / attention / layer):\n";
  if (p.dense_layers)
    s += "  dense layer (x" + std::to_string(p.dense_layers) +
         "): " + format_bytes(p.per_layer.dense[0]) + " / " + format_bytes(p.per_layer.dense[1]) +
         " / " + format_bytes(p.per_layer.dense[2]) + "\n";
  if (p.moe_layers)
    s += "  MoE layer (x" + std::to_string(p.moe_layers) +
         "): " + format_bytes(p.per_layer.moe[0]) + " / " + format_bytes(p.per_layer.moe[1]) +
         " / " + format_bytes(p.per_layer.moe[2]) +
         " (router, expert activations and packed rows)\n";
  s += "sent per rank per step: all-to-all " +
       format_bytes(static_cast<int64_t>(p.a2a_bytes_per_step)) + ", all-reduce " +
       format_bytes(static_cast<int64_t>(p.allreduce_bytes_per_step));
  return s;
}

std::string format_fit(const FitCheck& f, const MemoryPlan& asked) {
  auto cap = [](int64_t c) { return c > 0 ? format_bytes(c) : std::string("unlimited"); };
  std::string s = "fit: device " + format_bytes(asked.device_total) + " of " +
                  cap(f.device_capacity) + ", host " + format_bytes(asked.host_total) + " of " +
                  cap(f.host_capacity) + ": " + (f.fits ? "fits" : "does NOT fit");
  if (!f.found)
    return s +
           "; no recompute/offload setting fits (a smaller train.micro_batch, more host memory, "
           "more ranks or a larger ep needed)";
  s += "\nsmallest setting that fits: " +
       setting(f.recompute, f.offload_optimizer, f.offload_params) + " (device " +
       format_bytes(f.suggested.device_total) + ", host " + format_bytes(f.suggested.host_total) +
       ")";
  return s;
}

nlohmann::json memory_plan_json(const MemoryPlan& p) {
  nlohmann::json j;
  j["storage"] = p.storage == PlanStorage::Gpu ? "gpu" : "cpu";
  j["recompute"] = recompute_name(p.recompute);
  j["offload_optimizer"] = p.offload_optimizer;
  j["offload_params"] = p.offload_params;
  nlohmann::json lines = nlohmann::json::array();
  for (const MemoryLine& l : p.lines)
    lines.push_back({{"name", l.name}, {"device_bytes", l.device}, {"host_bytes", l.host}});
  j["lines"] = lines;
  j["device_bytes"] = p.device_total;
  j["host_bytes"] = p.host_total;
  const char* modes[3] = {"none", "attention", "layer"};
  for (int r = 0; r < 3; ++r) {
    j["activations_per_layer"]["dense"][modes[r]] = p.per_layer.dense[r];
    j["activations_per_layer"]["moe"][modes[r]] = p.per_layer.moe[r];
  }
  j["dense_layers"] = p.dense_layers;
  j["moe_layers"] = p.moe_layers;
  j["a2a_bytes_per_step"] = p.a2a_bytes_per_step;
  j["allreduce_bytes_per_step"] = p.allreduce_bytes_per_step;
  return j;
}

nlohmann::json fit_json(const FitCheck& f) {
  nlohmann::json j;
  j["device_capacity"] = f.device_capacity;
  j["host_capacity"] = f.host_capacity;
  j["fits"] = f.fits;
  j["found"] = f.found;
  if (f.found) {
    j["suggested"] = {{"recompute", recompute_name(f.recompute)},
                      {"offload_optimizer", f.offload_optimizer},
                      {"offload_params", f.offload_params},
                      {"device_bytes", f.suggested.device_total},
                      {"host_bytes", f.suggested.host_total}};
  }
  return j;
}

}  // namespace m6
