#include "core/train/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/data/dataset.h"
#include "core/metrics/metrics.h"
#include "core/model/model.h"
#include "core/train/checkpoint.h"
#include "core/train/optimizer.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/log.h"

namespace m6 {

std::unique_ptr<Backend> make_backend(const Config& cfg) {
  if (cfg.train.device == DeviceKind::Cuda)
    throw ConfigError(fmt(cfg.source, ": train.device: cuda was asked for, but this m6train has no "
                          "CUDA backend built in; use train.device: cpu or auto"));
  return make_cpu_backend(cfg.train.threads);
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

double evaluate(Model& model, const TokenDataset& val, const Config& cfg) {
  double ce = 0;
  int64_t n = 0;
  Batch b;
  for (int i = 0; i < cfg.eval.batches; ++i) {
    sample_eval_batch(val, i, cfg.eval.batches, cfg.train.micro_batch, cfg.train.seq_len, b);
    const MicroStats st = model.forward(b, Phase::Eval);
    ce += st.ce_sum;
    n += st.n_valid;
  }
  return n ? ce / static_cast<double>(n) : 0.0;
}

// Sums of one logging interval.
struct Interval {
  double loss = 0, aux = 0, z = 0, grad_norm = 0;
  int64_t micro = 0, steps = 0, slots = 0, dropped = 0, tokens = 0;
  double seconds = 0;
  std::vector<std::vector<int64_t>> load;

  void add_micro(const MicroStats& st) {
    loss += st.ce();
    aux += st.aux_sum();
    z += st.z_sum();
    ++micro;
    if (load.size() < st.moe.size()) load.resize(st.moe.size());
    for (size_t i = 0; i < st.moe.size(); ++i) {
      const auto& m = st.moe[i];
      if (load[i].size() < m.load.size()) load[i].resize(m.load.size(), 0);
      for (size_t e = 0; e < m.load.size(); ++e) load[i][e] += m.load[e];
      slots += m.slots;
      dropped += m.dropped;
    }
  }
};

}  // namespace

TrainSummary train(const Config& cfg, const RunOptions& opt) {
  const int world = 1, rank = 0;
  const ModelConfig& m = cfg.model;
  const int B = cfg.train.micro_batch, T = cfg.train.seq_len;
  const int accum = cfg.accum_steps(world);
  const int micro_per_step = accum * world;

  TokenDataset train_ds = TokenDataset::open(cfg.data.train, m.vocab_size, T);
  TokenDataset val_ds = TokenDataset::open(cfg.data.val, m.vocab_size, T);

  make_dirs(opt.run_dir);
  atomic_write_file(opt.run_dir + "/config.json", config_to_json(cfg).dump(2) + "\n");

  auto be = make_backend(cfg);
  const int E = m.moe.every > 0 ? m.moe.experts : 0;
  Model model(cfg, *be, ExpertRange{0, E});
  model.init_params(cfg.train.seed);

  const ParamCounts pc = count_params(m);
  int moe_layers = 0;
  for (int l = 0; l < m.n_layers; ++l) moe_layers += m.is_moe_layer(l);
  log_info(fmt("m6train: run directory ", opt.run_dir));
  log_info(fmt("model: ", m.n_layers, " layers (", moe_layers, " MoE, ", E, " experts, ",
               m.moe.router == RouterKind::Prototypes ? "prototypes" : "top-k", "), d_model ",
               m.d_model, ", ", pc.unique, " parameters (", pc.logical, " logical, ",
               pc.active_per_token, " active per token)"));
  log_info(fmt("data: ", train_ds.size(), " train tokens in ", train_ds.files().size(),
               " shard(s), ", val_ds.size(), " val tokens; batch ", cfg.train.global_batch, " x ",
               T, " = ", static_cast<int64_t>(cfg.train.global_batch) * T,
               " tokens/step (micro-batch ", B, ", accumulation ", accum, "); backend ", be->name()));

  MetricsWriter metrics(opt.run_dir, rank == 0);
  TrainSummary sum;
  sum.run_dir = opt.run_dir;
  TrainState state;
  const auto t_start = Clock::now();
  double train_seconds = 0;

  auto run_eval = [&](int64_t step) {
    const double loss = evaluate(model, val_ds, cfg);
    EvalRecord r;
    r.step = step;
    r.eval_loss = loss;
    r.elapsed_s = seconds_since(t_start);
    log_info(format_eval_line(r));
    metrics.write_eval(r);
    return loss;
  };

  sum.first_eval_loss = sum.final_eval_loss = run_eval(0);
  const int64_t end = opt.max_steps >= 0 ? std::min(cfg.train.steps, state.step + opt.max_steps)
                                         : cfg.train.steps;
  int64_t consecutive_skips = 0;
  Interval iv;
  Batch batch;
  const float grad_scale = 1.0f / static_cast<float>(micro_per_step);
  bool evaluated_last = false;
  for (int64_t step = state.step; step < end; ++step) {
    const auto t0 = Clock::now();
    model.zero_grads();
    for (int a = 0; a < accum; ++a) {
      sample_train_batch(train_ds, cfg.train.seed, step, a * world + rank, micro_per_step, B, T,
                         batch);
      const MicroStats st = model.forward(batch, Phase::Train);
      model.backward(grad_scale);
      iv.add_micro(st);
    }
    const double norm = std::sqrt(grad_sum_squares(*be, model.chunks()));
    if (!std::isfinite(norm)) {
      ++state.skipped_steps;
      if (++consecutive_skips >= cfg.train.max_skipped_steps)
        throw Error(fmt("step ", step, ": ", consecutive_skips,
                        " consecutive steps had a non-finite gradient (train.max_skipped_steps = ",
                        cfg.train.max_skipped_steps, "); lower optim.lr or check the data"));
      log_warn(fmt("step ", step, ": non-finite gradient norm, update skipped"));
    } else {
      consecutive_skips = 0;
      const double lr = lr_at(cfg.optim, cfg.train.steps, step);
      adamw_step(*be, model.chunks(), cfg.optim, lr, clip_factor(cfg.optim, norm), ++state.adam_t);
      iv.grad_norm += norm;
    }
    be->sync();
    state.step = step + 1;
    state.tokens_seen += static_cast<int64_t>(cfg.train.global_batch) * T;
    const double dt = seconds_since(t0);
    train_seconds += dt;
    iv.seconds += dt;
    iv.steps += 1;
    iv.tokens += static_cast<int64_t>(cfg.train.global_batch) * T;

    const bool last = state.step == end;
    if (state.step % cfg.log.every == 0 || last) {
      TrainRecord r;
      r.step = state.step;
      r.steps_total = cfg.train.steps;
      r.loss = iv.loss / static_cast<double>(iv.micro);
      r.aux_loss = iv.aux / static_cast<double>(iv.micro);
      r.z_loss = iv.z / static_cast<double>(iv.micro);
      r.lr = lr_at(cfg.optim, cfg.train.steps, step);
      r.grad_norm = iv.grad_norm / static_cast<double>(iv.steps);
      r.tokens_per_s = static_cast<double>(iv.tokens) / iv.seconds;
      r.elapsed_s = seconds_since(t_start);
      r.eta_s = train_seconds / static_cast<double>(state.step) *
                static_cast<double>(cfg.train.steps - state.step);
      r.dropped_frac = iv.slots ? static_cast<double>(iv.dropped) / static_cast<double>(iv.slots) : 0.0;
      r.skipped_steps = state.skipped_steps;
      r.expert_load = iv.load;
      log_info(format_train_line(r));
      metrics.write_train(r);
      iv = Interval{};
    }
    evaluated_last = false;
    if ((cfg.eval.every > 0 && state.step % cfg.eval.every == 0) || last) {
      sum.final_eval_loss = run_eval(state.step);
      evaluated_last = true;
    }
  }
  if (!evaluated_last && end > 0 && state.step == 0) sum.final_eval_loss = sum.first_eval_loss;
  sum.steps = state.step;
  sum.checkpoint = save_checkpoint(opt.run_dir, cfg, state, *be, model.chunks());
  log_info(fmt("checkpoint: ", sum.checkpoint));
  return sum;
}

}  // namespace m6
