// Validation of a whole Config for a job of `world` ranks: ranges of single
// keys, then the combinations that must agree (MoE, sharing, batch layout,
// expert parallelism, device and precision). It runs before any allocation or
// collective and depends only on (config, world), so every rank reaches the
// same verdict. The first problem found is thrown as a ConfigError of the form
// `WHERE: KEY: problem (got VALUE); allowed: ...`.
#include <functional>
#include <string>
#include <vector>

#include "core/config/config.h"
#include "core/util/bytes.h"
#include "core/util/error.h"

namespace m6 {

namespace config_detail {
// WHERE maps a dotted key to "FILE:LINE" or "--set k=v", or "" when the key
// kept its default. Declared again in config_load.cpp.
void validate_config_at(const Config& c, int world,
                        const std::function<std::string(const std::string&)>& where);
}  // namespace config_detail

namespace {

using WhereFn = std::function<std::string(const std::string&)>;

const char* router_name(RouterKind r) { return r == RouterKind::TopK ? "topk" : "prototypes"; }

class Checker {
 public:
  Checker(const Config& c, const WhereFn& where) : c_(c), where_(where) {}

  // Throws "WHERE: KEY: MSG". WHERE is the location of KEY, or failing that of
  // the first of OTHERS that has one, or else the file (the key kept its default).
  [[noreturn]] void fail(const std::string& key, const std::string& msg,
                         std::initializer_list<const char*> others = {}) const {
    std::string at = where_ ? where_(key) : "";
    for (const char* o : others)
      if (at.empty() && where_) at = where_(o);
    if (at.empty()) at = c_.source.empty() ? "config" : c_.source;
    throw ConfigError(fmt(at, ": ", key, ": ", msg));
  }

  template <class T>
  void at_least(const std::string& key, T v, T lo, const std::string& note = "") const {
    if (v < lo) fail(key, fmt("out of range (got ", v, "); allowed: >= ", lo, note));
  }
  template <class T>
  void above(const std::string& key, T v, T lo, const std::string& note = "") const {
    if (!(v > lo)) fail(key, fmt("out of range (got ", v, "); allowed: > ", lo, note));
  }
  template <class T>
  void within(const std::string& key, T v, T lo, T hi, const std::string& note = "") const {
    if (!(v >= lo && v <= hi))  // NaN is out of every range
      fail(key, fmt("out of range (got ", v, "); allowed: ", lo, "..", hi, note));
  }

 private:
  const Config& c_;
  const WhereFn& where_;
};

void check_model(const Checker& k, const ModelConfig& m) {
  k.within("model.vocab_size", m.vocab_size, 2, 65536, " (tokens are stored as uint16)");
  k.at_least("model.max_seq_len", m.max_seq_len, 1);
  k.at_least("model.d_model", m.d_model, 1);
  k.at_least("model.n_heads", m.n_heads, 1);
  k.at_least("model.n_layers", m.n_layers, 1);
  k.at_least("model.d_ff", m.d_ff, 1);
  if (m.d_model % m.n_heads != 0)
    k.fail("model.n_heads",
           fmt("model.d_model (", m.d_model, ") must be divisible by n_heads (", m.n_heads,
               "); allowed: a divisor of ", m.d_model),
           {"model.d_model"});
}

void check_moe(const Checker& k, const ModelConfig& m) {
  const MoeConfig& e = m.moe;
  k.within("model.moe.every", e.every, 0, m.n_layers,
           fmt(" (model.n_layers is ", m.n_layers, "; 0 = no MoE layers)"));
  // These never depend on whether MoE is on; a negative factor is always a typo.
  k.at_least("model.moe.capacity_factor", e.capacity_factor, 0.0, " (0 = dropless)");
  k.at_least("model.moe.eval_capacity_factor", e.eval_capacity_factor, 0.0, " (0 = dropless)");
  k.at_least("model.moe.min_capacity", e.min_capacity, 0);
  k.at_least("model.moe.aux_loss_coef", e.aux_loss_coef, 0.0);
  k.at_least("model.moe.z_loss_coef", e.z_loss_coef, 0.0);
  if (e.every == 0) {
    if (e.experts != 0)
      k.fail("model.moe.experts",
             fmt("experts (", e.experts,
                 ") is set but MoE is off (model.moe.every = 0); allowed: 0, "
                 "or turn MoE on with model.moe.every > 0"),
             {"model.moe.every"});
    return;
  }
  k.at_least("model.moe.experts", e.experts, 1,
             fmt(" when MoE is on (model.moe.every = ", e.every, ")"));
  if (e.router == RouterKind::TopK) {
    if (e.top_k < 1 || e.top_k > e.experts)
      k.fail(
          "model.moe.top_k",
          fmt("out of range (got ", e.top_k, "); allowed: 1..", e.experts, " (model.moe.experts)"),
          {"model.moe.experts"});
    if (e.prototypes != 0)
      k.fail("model.moe.prototypes",
             fmt("prototypes (", e.prototypes, ") needs model.moe.router: prototypes (got router: ",
                 router_name(e.router), "); allowed with router topk: 0"),
             {"model.moe.router"});
  } else {
    if (e.prototypes < 1)
      k.fail("model.moe.prototypes",
             fmt("out of range (got ", e.prototypes,
                 "); allowed: >= 1 with model.moe.router: prototypes"),
             {"model.moe.router"});
    if (e.experts % e.prototypes != 0)
      k.fail("model.moe.prototypes",
             fmt("model.moe.experts (", e.experts, ") must be divisible by prototypes (",
                 e.prototypes, "); allowed: a divisor of ", e.experts),
             {"model.moe.experts"});
    if (e.top_k != 1)
      k.fail("model.moe.top_k",
             fmt("top_k (", e.top_k,
                 ") is for router topk; router prototypes picks one expert per "
                 "group (model.moe.prototypes = ",
                 e.prototypes, "); allowed: 1"),
             {"model.moe.router"});
    // M6-T's gate is the chosen expert's probability within its group; the k
    // group gates are not renormalised against each other.
    if (e.normalize_gates == GateNorm::On)
      k.fail("model.moe.normalize_gates",
             "true is for router topk; with router prototypes each gate is its group's "
             "probability; allowed: auto or false",
             {"model.moe.router"});
  }
}

void check_sharing(const Checker& k, const Config& c) {
  const ModelConfig& m = c.model;
  const SharingConfig& s = m.sharing;
  k.within("model.sharing.groups", s.groups, 0, m.n_layers,
           fmt(" (model.n_layers is ", m.n_layers, "; 0 = no sharing)"));
  // With MoE every k >= 2 layers, groups share blocks of k consecutive layers
  // (k-1 dense, then one MoE: core/model/params.h), so each parameter set
  // holds layers of one kind; groups = n_layers shares nothing.
  const int every = m.moe.every;
  if (s.groups > 0 && s.groups < m.n_layers && every >= 2) {
    if (m.n_layers % every != 0)
      k.fail("model.sharing.groups",
             fmt("groups (", s.groups, ") below model.n_layers (", m.n_layers,
                 ") shares blocks of model.moe.every (", every, ") layers (", every - 1,
                 " dense + 1 MoE), so n_layers must be a multiple of every; allowed: groups = ",
                 m.n_layers, " (no sharing), or n_layers a multiple of ", every),
             {"model.n_layers", "model.moe.every"});
    else if (s.groups > m.n_layers / every)
      k.fail("model.sharing.groups",
             fmt("groups (", s.groups, ") must be at most the ", m.n_layers / every,
                 " blocks of model.moe.every (", every, ") layers in model.n_layers (", m.n_layers,
                 "): a group shares whole blocks (", every - 1, " dense + 1 MoE); allowed: 1..",
                 m.n_layers / every, " or ", m.n_layers, " (no sharing)"),
             {"model.n_layers", "model.moe.every"});
  }
  k.at_least<int64_t>("model.sharing.delink_at_step", s.delink_at_step, 0, " (0 = never)");
  if (s.delink_at_step > 0 && s.groups == 0)
    k.fail(
        "model.sharing.delink_at_step",
        fmt("delink_at_step (", s.delink_at_step,
            ") needs layer sharing, but model.sharing.groups is 0; allowed: 0, or set groups > 0"),
        {"model.sharing.groups"});
  if (s.delink_at_step > 0 && s.delink_at_step >= c.train.steps)
    k.fail("model.sharing.delink_at_step",
           fmt("delink_at_step (", s.delink_at_step, ") must be below train.steps (", c.train.steps,
               "); allowed: 0..", c.train.steps - 1),
           {"train.steps"});
}

void check_train(const Checker& k, const Config& c, int world) {
  const TrainConfig& t = c.train;
  k.at_least<int64_t>("train.steps", t.steps, 1);
  if (t.seq_len < 1 || t.seq_len > c.model.max_seq_len)
    k.fail("train.seq_len",
           t.seq_len < 1
               ? fmt("out of range (got ", t.seq_len, "); allowed: 1..", c.model.max_seq_len)
               : fmt("seq_len (", t.seq_len, ") is above the position table model.max_seq_len (",
                     c.model.max_seq_len, "); allowed: 1..", c.model.max_seq_len),
           {"model.max_seq_len"});
  k.at_least("train.micro_batch", t.micro_batch, 1);
  k.at_least("train.global_batch", t.global_batch, 1);
  const int64_t unit = int64_t(t.micro_batch) * world;
  if (t.global_batch % unit != 0)
    k.fail("train.global_batch",
           fmt("global_batch (", t.global_batch, ") must be a multiple of train.micro_batch (",
               t.micro_batch, ") x world size (", world, ") = ", unit, "; allowed: ", unit, ", ",
               2 * unit, ", ", 3 * unit, ", ..."),
           {"train.micro_batch"});
  k.at_least("train.threads", t.threads, 0, " (0 = all cores)");
  if (t.graphs == GraphMode::On) {
    const std::string why = graphs_blocker(c);
    if (!why.empty())
      k.fail("train.graphs",
             fmt("on, but a micro-batch of this config cannot be replayed from a graph: ", why,
                 "; allowed here: auto or off"),
             {"model.moe.every", "offload.params"});
  }
  k.at_least<int64_t>("train.max_skipped_steps", t.max_skipped_steps, 1);
  if (t.spike_guard.window < 0 || t.spike_guard.window == 1)
    k.fail("train.spike_guard.window",
           fmt("out of range (got ", t.spike_guard.window, "); allowed: 0 (off) or >= 2"));
  k.above("train.spike_guard.z_threshold", t.spike_guard.z_threshold, 0.0);
  for (auto [key, v] : {std::pair{"train.device_memory", &t.device_memory},
                        std::pair{"train.host_memory", &t.host_memory}})
    if (!v->empty() && !parse_bytes(*v))
      k.fail(key, fmt("not a size (got \"", *v,
                      "\"); allowed: \"\" (what the machine has) or a size such as 80GiB, 512GB, 1e9"));
  k.at_least("train.peak_tflops", t.peak_tflops, 0.0, " (0 = measure at start-up)");
}

void check_offload(const Checker& k, const OffloadConfig& o) {
  k.within("offload.optimizer", o.optimizer, 0.0, 1.0, " (share of the parameters)");
  k.within("offload.params", o.params, 0.0, 1.0, " (share of the parameters)");
  k.above("offload.chunk_mb", o.chunk_mb, 0.0, " (MiB per transfer)");
  if (o.params > o.optimizer)
    k.fail("offload.params",
           fmt("params (", o.params, ") is above offload.optimizer (", o.optimizer,
               "): host-resident master weights need their Adam moments on the host too; "
               "allowed: 0..", o.optimizer, ", or raise offload.optimizer"),
           {"offload.optimizer"});
}

void check_optim(const Checker& k, const OptimConfig& o) {
  k.above("optim.lr", o.lr, 0.0);
  k.at_least("optim.min_lr", o.min_lr, 0.0);
  if (o.min_lr > o.lr)
    k.fail("optim.min_lr",
           fmt("min_lr (", o.min_lr, ") is above optim.lr (", o.lr, "); allowed: 0..", o.lr),
           {"optim.lr"});
  k.at_least<int64_t>("optim.warmup_steps", o.warmup_steps, 0);
  k.at_least<int64_t>("optim.decay_steps", o.decay_steps, 0, " (0 = train.steps)");
  k.at_least("optim.weight_decay", o.weight_decay, 0.0);
  for (auto [key, v] : {std::pair{"optim.beta1", o.beta1}, std::pair{"optim.beta2", o.beta2}})
    if (v < 0.0 || v >= 1.0) k.fail(key, fmt("out of range (got ", v, "); allowed: [0, 1)"));
  k.above("optim.eps", o.eps, 0.0);
  k.at_least("optim.grad_clip", o.grad_clip, 0.0, " (0 = off)");
}

void check_parallel(const Checker& k, const Config& c, int world) {
  const int ep = c.parallel.ep;
  k.at_least("parallel.ep", ep, 1);
  // Experts before world: at world 1 the expert split is still worth reporting.
  if (c.model.moe.every > 0 && c.model.moe.experts % ep != 0)
    k.fail("parallel.ep",
           fmt("model.moe.experts (", c.model.moe.experts, ") must be divisible by ep (", ep,
               "); allowed: a divisor of both the expert count and the world size (", world, ")"),
           {"model.moe.experts"});
  if (world % ep != 0)
    k.fail("parallel.ep", fmt("ep (", ep, ") must divide the world size (", world,
                              "); allowed: a divisor of ", world));
  k.above("parallel.timeout_s", c.parallel.timeout_s, 0.0);
}

// Checked whatever precision.compute says: a typo is a typo (the scaler only
// runs with fp16).
void check_loss_scale(const Checker& k, const LossScaleConfig& s) {
  const double kHuge = 1e38;  // below FLT_MAX: the scale multiplies fp32 values
  k.within("precision.loss_scale.min", s.min, 0x1.0p-24, kHuge, " (a finite positive scale)");
  k.within("precision.loss_scale.max", s.max, s.min, kHuge,
           " (from precision.loss_scale.min up; finite)");
  k.within("precision.loss_scale.init", s.init, s.min, s.max,
           " (precision.loss_scale.min..max)");
  k.at_least<int64_t>("precision.loss_scale.growth_interval", s.growth_interval, 1,
                      " (clean steps before the scale grows)");
  if (!(s.growth_factor > 1.0 && s.growth_factor <= 1e6))
    k.fail("precision.loss_scale.growth_factor",
           fmt("out of range (got ", s.growth_factor, "); allowed: > 1 (e.g. 2)"));
  if (!(s.backoff_factor > 0.0 && s.backoff_factor < 1.0))
    k.fail("precision.loss_scale.backoff_factor",
           fmt("out of range (got ", s.backoff_factor, "); allowed: strictly between 0 and 1 "
               "(e.g. 0.5)"));
  k.at_least("precision.loss_scale.hysteresis", s.hysteresis, 1,
             " (overflows in a row before the scale backs off)");
}

void check_rest(const Checker& k, const Config& c) {
  k.at_least<int64_t>("eval.every", c.eval.every, 0, " (0 = only at the end)");
  k.at_least("eval.batches", c.eval.batches, 1);
  k.at_least<int64_t>("log.every", c.log.every, 1);
  k.at_least<int64_t>("checkpoint.every", c.checkpoint.every, 0, " (0 = only at the end)");
  k.at_least("checkpoint.keep", c.checkpoint.keep, 1);
  check_loss_scale(k, c.precision.loss_scale);
  if (c.data.train.empty())
    k.fail("data.train",
           "empty (got \"\"); allowed: a glob of train token shards, e.g. data/x/train_*.bin");
  if (c.data.val.empty())
    k.fail("data.val",
           "empty (got \"\"); allowed: a glob of val token shards, e.g. data/x/val_*.bin");
}

}  // namespace

namespace config_detail {

void validate_config_at(const Config& c, int world, const WhereFn& where) {
  if (world < 1) throw ConfigError(fmt("world size (", world, ") must be >= 1"));
  Checker k(c, where);
  check_model(k, c.model);
  check_moe(k, c.model);
  check_sharing(k, c);
  check_train(k, c, world);
  check_optim(k, c.optim);
  check_parallel(k, c, world);
  check_offload(k, c.offload);
  check_rest(k, c);
}

}  // namespace config_detail

std::string graphs_blocker(const Config& c) {
  if (c.model.moe.every > 0)
    return fmt("model.moe.every is ", c.model.moe.every,
               " (MoE layers read their expert loads to the host in every micro-batch: the "
               "capacity logic)");
  if (c.offload.params > 0)
    return fmt("offload.params is ", c.offload.params,
               " (streamed weights are copied between the host and the device in the step)");
  return "";
}

void validate_config(const Config& c, int world) {
  config_detail::validate_config_at(c, world, nullptr);
}

}  // namespace m6
