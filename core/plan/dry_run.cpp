#include "core/plan/dry_run.h"

#include <cstdarg>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/model/sharing.h"
#include "core/util/error.h"

namespace m6 {

namespace {

int64_t bytes_of(Precision p) { return p == Precision::Fp32 ? 4 : 2; }

const char* precision_name(Precision p) {
  return p == Precision::Fp32 ? "fp32" : p == Precision::Bf16 ? "bf16" : "fp16";
}

// What rank 0 of an EP group holds; every rank holds the same amount because
// ep divides the expert count. Counts come from the chunk plan (the same
// descriptors the model allocates from, alignment padding included), planned
// for one rank's experts only so that a 10T model plans in milliseconds.
RankFootprint footprint(const Config& cfg, const ModelConfig& m) {
  const int E = m.moe.every > 0 ? m.moe.experts : 0;
  const int local = E / cfg.parallel.ep;
  RankFootprint f;
  for (const Chunk& c : plan_chunks(m, ExpertRange{0, local})) {
    if (c.kind == ChunkKind::Expert) {
      f.expert_params += static_cast<int64_t>(c.numel);
      ++f.expert_ffns;
    } else {
      f.dense_params += static_cast<int64_t>(c.numel);
    }
  }
  const int64_t n = f.params();
  const Precision compute = cfg.precision.compute;
  f.master_bytes = 4 * n;
  f.compute_bytes = compute == Precision::Fp32 ? 0 : bytes_of(compute) * n;
  f.grad_bytes = bytes_of(compute) * n;
  f.adam_bytes = 8 * n;
  return f;
}

std::string printf_string(const char* format, ...) __attribute__((format(printf, 1, 2)));
std::string printf_string(const char* format, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, format);
  const int n = std::vsnprintf(buf, sizeof buf, format, ap);
  va_end(ap);
  return n < 0 ? std::string() : std::string(buf);
}

// 10049126400000 -> "10.05T (10049126400000)"
std::string count(int64_t n) {
  const double v = static_cast<double>(n);
  const char* unit = "";
  double s = v;
  if (v >= 1e12)
    unit = "T", s = v / 1e12;
  else if (v >= 1e9)
    unit = "B", s = v / 1e9;
  else if (v >= 1e6)
    unit = "M", s = v / 1e6;
  else if (v >= 1e3)
    unit = "k", s = v / 1e3;
  if (*unit == '\0') return std::to_string(n);
  return printf_string("%.2f%s (%lld)", s, unit, static_cast<long long>(n));
}

std::string gib(int64_t bytes) {
  return printf_string("%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
}

std::string footprint_lines(const Config& cfg, const RankFootprint& f, const std::string& indent) {
  const char* cp = precision_name(cfg.precision.compute);
  std::string s;
  s += indent + "parameters per rank: " + count(f.params()) + " = dense (replicated) " +
       count(f.dense_params) + " + experts " + count(f.expert_params) + " in " +
       std::to_string(f.expert_ffns) + " expert FFNs\n";
  s += indent + "bytes per rank: master fp32 " + gib(f.master_bytes);
  if (f.compute_bytes) s += " + compute copy " + std::string(cp) + " " + gib(f.compute_bytes);
  s += " + gradients " + std::string(cp) + " " + gib(f.grad_bytes) + " + Adam m,v fp32 " +
       gib(f.adam_bytes) + " = " + gib(f.total_bytes()) + " (before offload; activations below)";
  return s;
}

}  // namespace

DryRunReport dry_run(const Config& cfg, int world, int64_t device_capacity, int64_t host_capacity) {
  validate_config(cfg, world);
  const ModelConfig& m = cfg.model;
  DryRunReport r;
  r.world = world;
  r.ep = cfg.parallel.ep;
  for (int l = 0; l < m.n_layers; ++l) r.moe_layers += m.is_moe_layer(l);
  r.experts = m.moe.every > 0 ? m.moe.experts : 0;
  r.experts_per_rank = r.experts / r.ep;
  r.ep_groups = world / r.ep;
  r.expert_dp = r.ep_groups;
  r.accum_steps = cfg.accum_steps(world);
  r.tokens_per_step = static_cast<int64_t>(cfg.train.global_batch) * cfg.train.seq_len;
  r.counts = count_params(m);
  r.rank = footprint(cfg, m);
  r.shared = m.sharing.groups > 0;
  if (r.shared) {
    const ModelConfig real = delinked_model(m);
    r.real_counts = count_params(real);
    r.real_rank = footprint(cfg, real);
    Config real_cfg = cfg;
    real_cfg.model = real;
    r.real_memory = plan_memory(real_cfg, world, PlanStorage::Gpu);
    r.real_fit_checked = (device_capacity > 0 || host_capacity > 0) && m.sharing.delink_at_step > 0;
    if (r.real_fit_checked)
      r.real_fit = check_fit(real_cfg, world, PlanStorage::Gpu, device_capacity, host_capacity);
  }
  r.memory = plan_memory(cfg, world, PlanStorage::Gpu);
  r.fit_checked = device_capacity > 0 || host_capacity > 0;
  if (r.fit_checked) r.fit = check_fit(cfg, world, PlanStorage::Gpu, device_capacity, host_capacity);
  return r;
}

nlohmann::json dry_run_json(const Config& cfg, const DryRunReport& r) {
  auto counts = [](const ParamCounts& c) {
    return nlohmann::json{{"total", c.logical}, {"unique", c.unique}, {"active_per_token", c.active_per_token}};
  };
  nlohmann::json j;
  j["config"] = cfg.source;
  j["world"] = r.world;
  j["ep"] = r.ep;
  j["experts"] = r.experts;
  j["experts_per_rank"] = r.experts_per_rank;
  j["moe_layers"] = r.moe_layers;
  j["accum_steps"] = r.accum_steps;
  j["tokens_per_step"] = r.tokens_per_step;
  j["parameters"] = counts(r.counts);
  j["params_per_rank"] = r.rank.params();
  j["memory"] = memory_plan_json(r.memory);
  if (r.shared) {
    j["real_parameters"] = counts(r.real_counts);
    j["real_memory"] = memory_plan_json(r.real_memory);
  }
  if (r.fit_checked) j["fit"] = fit_json(r.fit);
  if (r.real_fit_checked) j["real_fit"] = fit_json(r.real_fit);
  return j;
}

std::string format_dry_run(const Config& cfg, const DryRunReport& r) {
  const ModelConfig& m = cfg.model;
  std::string s;
  s += "dry run: " + (cfg.source.empty() ? std::string("config") : cfg.source) + " is valid for " +
       std::to_string(r.world) + " rank(s); nothing allocated, no data opened\n";
  s += printf_string(
      "model: %d layers (%d MoE), d_model %d, %d heads, d_ff %d, vocab %d, seq_len %d\n",
      m.n_layers, r.moe_layers, m.d_model, m.n_heads, m.d_ff, m.vocab_size, cfg.train.seq_len);
  if (r.experts > 0) {
    const MoeConfig& e = m.moe;
    s +=
        "experts: " + std::to_string(r.experts) + " per MoE layer, router " +
        (e.router == RouterKind::Prototypes ? printf_string("prototypes (k top-1: %d groups of %d)",
                                                            e.prototypes, r.experts / e.prototypes)
                                            : printf_string("top-%d", e.top_k)) +
        printf_string(", %d expert(s) per token, capacity factor %g (eval %g)\n", e.slots(),
                      e.capacity_factor, e.eval_capacity_factor);
  }
  s += "parameters: total " + count(r.counts.logical) + ", unique (stored) " +
       count(r.counts.unique) + ", active per token " + count(r.counts.active_per_token) + "\n";
  if (r.shared)
    s += printf_string("sharing: %d logical layers share %d parameter set(s)", m.n_layers,
                       m.sharing.groups) +
         (m.sharing.delink_at_step > 0
              ? printf_string("; delinked at step %lld",
                              static_cast<long long>(m.sharing.delink_at_step))
              : std::string("; not delinked in this run (m6train delink)")) +
         ", Adam moments: " + delink_optimizer_name(m.sharing.delink_optimizer) + "\n";
  s += printf_string("layout: world %d = %d EP group(s) of ep %d; ", r.world, r.ep_groups, r.ep);
  if (r.experts > 0)
    s +=
        printf_string("each rank holds %d of %d experts per MoE layer, ", r.experts_per_rank,
                      r.experts) +
        printf_string("expert gradients all-reduced in expert-data-parallel groups of %d rank(s); ",
                      r.expert_dp);
  s += printf_string("dense gradients all-reduced over %d rank(s)\n", r.world);
  s += printf_string(
      "batch: %d sequences x %d tokens = %lld tokens/step (micro-batch %d, accumulation %d)\n",
      cfg.train.global_batch, cfg.train.seq_len, static_cast<long long>(r.tokens_per_step),
      cfg.train.micro_batch, r.accum_steps);
  s += printf_string("precision: compute %s, communication %s\n",
                     precision_name(cfg.precision.compute), precision_name(cfg.precision.comm));
  s += footprint_lines(cfg, r.rank, "");
  if (r.shared) {
    s += "\nafter delinking (the real model): parameters total " + count(r.real_counts.logical) +
         ", unique " + count(r.real_counts.unique) + "\n";
    s += footprint_lines(cfg, r.real_rank, "  ");
  }
  s += "\n" + format_memory_plan(r.memory);
  if (r.shared)
    s += "\nafter delinking: device " + gib(r.real_memory.device_total) + ", host " +
         gib(r.real_memory.host_total) + " per rank";
  if (r.fit_checked) s += "\n" + format_fit(r.fit, r.memory);
  if (r.real_fit_checked)
    s += "\nafter the delink at step " + std::to_string(m.sharing.delink_at_step) + ", " +
         format_fit(r.real_fit, r.real_memory);
  return s;
}

}  // namespace m6
