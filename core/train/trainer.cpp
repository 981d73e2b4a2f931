#include "core/train/trainer.h"

#include <chrono>
#include <cmath>
#include <csignal>
#include <ctime>
#include <filesystem>
#include <limits>

#include <nlohmann/json.hpp>

#include "core/ckpt/checkpoint.h"
#include "core/ckpt/resume.h"
#include "core/data/dataset.h"
#include "core/metrics/metrics.h"
#include "core/metrics/tb_metrics.h"
#include "core/model/model.h"
#include "core/parallel/comm.h"
#include "core/parallel/grid.h"
#include "core/train/data_parallel.h"
#include "core/train/delink.h"
#include "core/train/device_plan.h"
#include "core/train/loss_scaler.h"
#include "core/train/memory_check.h"
#include "core/train/mfu.h"
#include "core/train/optimizer.h"
#include "core/train/preempt.h"
#include "core/train/spike_guard.h"
#include "core/train/step_profile.h"
#include "core/util/error.h"
#include "core/util/failpoint.h"
#include "core/util/fs.h"
#include "core/util/log.h"
#include "core/util/splitmix.h"
#ifdef M6_HAVE_CUDA
#include "core/backend/cuda_factory.h"  // plain C++: no CUDA header reaches core/
#endif
#ifdef M6_HAVE_NCCL
#include "core/parallel/comm_nccl.h"  // plain C++ as well
#endif

namespace m6 {

std::unique_ptr<Backend> make_backend(const Config& cfg) {
#ifdef M6_HAVE_CUDA
  // auto: the CUDA backend on device 0 when a device is visible, else the CPU.
  const int devices = cuda_device_count();
  if (cfg.train.device == DeviceKind::Cuda && devices == 0)
    throw ConfigError(fmt(cfg.source, ": train.device: cuda was asked for, but no CUDA device is "
                          "visible (cuda_device_count() = 0); use train.device: cpu or auto"));
  if (cfg.train.device != DeviceKind::Cpu && devices > 0)
    return make_cuda_backend(0, {cfg.precision.compute == Precision::Bf16});
#else
  if (cfg.train.device == DeviceKind::Cuda)
    throw ConfigError(fmt(cfg.source, ": train.device: cuda was asked for, but this m6train has no "
                          "CUDA backend built in; use train.device: cpu or auto"));
#endif
  return make_cpu_backend(cfg.train.threads);
}

DevicePlan plan_run_devices(const Config& cfg, Comm& world) {
#ifdef M6_HAVE_CUDA
  const bool cuda_built = true;
  const int gpus = cfg.train.device == DeviceKind::Cpu ? 0 : cuda_device_count();
  const DeviceUuidFn uuid_of = [](int d) { return cuda_device_uuid(d); };
#else
  const bool cuda_built = false;
  const int gpus = 0;
  const DeviceUuidFn uuid_of;
#endif
#ifdef M6_HAVE_NCCL
  const bool nccl_built = true;
#else
  const bool nccl_built = false;
#endif
  return agree_devices(world, cfg.train.device, cfg.source, gpus, uuid_of, cuda_built, nccl_built);
}

namespace {
std::unique_ptr<Backend> make_plain_backend(const Config& cfg, const DevicePlan& plan) {
#ifdef M6_HAVE_CUDA
  // precision.compute bf16: GEMMs on the tensor cores (operands rounded to
  // bf16, fp32 accumulation).
  if (plan.cuda)
    return make_cuda_backend(plan.device, {cfg.precision.compute == Precision::Bf16});
#endif
  M6_CHECK(!plan.cuda, "a CUDA device was planned in a build without CUDA");
  // train.graphs: on with the CPU: the recording twin of CUDA graphs (the
  // same model code path, replayed from closures).
  if (cfg.train.graphs == GraphMode::On)
    return make_recording_backend(make_cpu_backend(cfg.train.threads));
  return make_cpu_backend(cfg.train.threads);
}
}  // namespace

std::unique_ptr<Backend> make_planned_backend(const Config& cfg, const DevicePlan& plan) {
  auto be = make_plain_backend(cfg, plan);
  // log.profile: every op timed (graphs off: a replay is one launch).
  return cfg.log.profile ? make_op_profiler(std::move(be)) : std::move(be);
}

std::unique_ptr<Comm> make_device_world(Comm& world, Backend& be, const DevicePlan& plan) {
  if (!plan.cuda || world.size() == 1) return nullptr;
#ifdef M6_HAVE_NCCL
  auto c = make_nccl_comm(world, be);
  log_info(fmt("communication: NCCL ", nccl_runtime_version(), " between ", world.size(),
               " GPUs (one per rank); this rank uses ", be.name()));
  return c;
#else
  (void)be;
  M6_CHECK(false, "CUDA on several ranks was planned in a build without NCCL");
  return nullptr;
#endif
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Evaluation batch i goes to rank i % W; the losses are summed over the world.
// With ep > 1 a rank past the last batch still runs a forward (counted
// nowhere) so that its EP group's exchanges match.
double evaluate(Model& model, const TokenDataset& val, const Config& cfg, ProcessGrid& grid) {
  const int W = grid.layout().world, rank = grid.layout().rank, n_batches = cfg.eval.batches;
  double acc[2] = {0, 0};  // sum of CE, valid positions
  Batch b;
  for (int round = 0; round < (n_batches + W - 1) / W; ++round) {
    const int i = round * W + rank;
    if (i >= n_batches && grid.layout().ep == 1) break;
    sample_eval_batch(val, i % n_batches, n_batches, cfg.train.micro_batch, cfg.train.seq_len, b);
    const MicroStats st = model.forward(b, Phase::Eval);
    if (i >= n_batches) continue;
    acc[0] += st.ce_sum;
    acc[1] += static_cast<double>(st.n_valid);
  }
  CommLabel label(grid.activity(), "eval loss");
  grid.world().all_reduce(acc, 2, CommDType::F64, ReduceOp::Sum);
  return acc[1] > 0 ? acc[0] / acc[1] : 0.0;
}

// Sums of one logging interval.
struct Interval {
  double loss = 0, aux = 0, z = 0, grad_norm = 0;
  int64_t micro = 0, steps = 0, skipped = 0, slots = 0, dropped = 0, tokens = 0;
  double seconds = 0;
  std::vector<std::vector<int64_t>> load;
  // Per MoE layer: a sum over micro-batches of 20 bits of a hash of (micro-
  // batch key, its routing fingerprint). Sums of integers below 2^53 in
  // doubles are exact in any order, so the all-reduce gives the same value
  // for any layout that routed every micro-batch the same way.
  std::vector<double> routing;

  // key: names the micro-batch independently of the layout (step and global
  // micro-batch index).
  void add_micro(const MicroStats& st, uint64_t key) {
    loss += st.ce();
    aux += st.aux_sum();
    z += st.z_sum();
    ++micro;
    if (load.size() < st.moe.size()) load.resize(st.moe.size());
    if (routing.size() < st.moe.size()) routing.resize(st.moe.size(), 0.0);
    for (size_t i = 0; i < st.moe.size(); ++i) {
      const auto& m = st.moe[i];
      routing[i] += static_cast<double>(splitmix64(m.routing ^ splitmix64(key)) >> 44);
      if (load[i].size() < m.load.size()) load[i].resize(m.load.size(), 0);
      for (size_t e = 0; e < m.load.size(); ++e) load[i][e] += m.load[e];
      slots += m.slots;
      dropped += m.dropped;
    }
  }

  // Sums the counts of every rank into this rank's (collective over world):
  // loss sums and micro-batch counts, drops, and the expert load.
  void sum_over(Comm& world) {
    if (world.size() == 1) return;
    std::vector<double> v = {loss, aux, z, static_cast<double>(micro), static_cast<double>(slots),
                             static_cast<double>(dropped)};
    for (const auto& l : load)
      for (int64_t x : l) v.push_back(static_cast<double>(x));
    v.insert(v.end(), routing.begin(), routing.end());
    CommLabel label(world.activity(), "metrics");
    world.all_reduce(v.data(), v.size(), CommDType::F64, ReduceOp::Sum);
    loss = v[0], aux = v[1], z = v[2];
    micro = static_cast<int64_t>(v[3]), slots = static_cast<int64_t>(v[4]);
    dropped = static_cast<int64_t>(v[5]);
    size_t k = 6;
    for (auto& l : load)
      for (int64_t& x : l) x = static_cast<int64_t>(v[k++]);
    for (double& x : routing) x = v[k++];
  }
};

}  // namespace

TrainSummary train(const Config& cfg, const RunOptions& opt) {
  const StopSignals stop_signals;  // first: a SIGTERM during start-up stops at step 0
  // The process grid (DESIGN.md section 4): world from the launcher (app/
  // passes the MPI world communicator), EP and expert-DP groups split off it.
  std::unique_ptr<Comm> self_comm = opt.comm ? nullptr : make_self_comm();
  Comm& comm = opt.comm ? *opt.comm : *self_comm;
  const int world = comm.size(), rank = comm.rank();
  validate_config(cfg, world);  // again, in case the caller validated for another world size
  comm.activity().timeout_s = cfg.parallel.timeout_s;
  // The device of every rank, agreed over the world before anything is
  // allocated (core/train/device_plan.h): a bad layout is a config error on
  // every rank.
  const DevicePlan dplan = plan_run_devices(cfg, comm);
  const CommDType wire = comm_wire(cfg.precision.comm);
  const ModelConfig& m = cfg.model;
  const int B = cfg.train.micro_batch, T = cfg.train.seq_len;
  const int accum = cfg.accum_steps(world);
  const int micro_per_step = accum * world;

  TokenDataset train_ds = TokenDataset::open(cfg.data.train, m.vocab_size, T);
  TokenDataset val_ds = TokenDataset::open(cfg.data.val, m.vocab_size, T);

  make_dirs(opt.run_dir);
  if (rank == 0) atomic_write_file(opt.run_dir + "/config.json", config_to_json(cfg).dump(2) + "\n");

  auto be = make_planned_backend(cfg, dplan);
  // The GEMM peak for MFU (unless train.peak_tflops gives it): measured first,
  // its buffers released before the model is allocated and left out of the
  // memory high-water mark, which is the model's (the planner's) alone.
  const PeakFlops peak = peak_flops(cfg, *be);
  be->reset_memory_peaks();
  // With CUDA on several ranks the process grid runs on NCCL (device
  // buffers); `comm` (MPI) keeps the host-side agreements of the trainer and
  // the checkpoints. Both share one CommActivity (timeout, counters).
  std::unique_ptr<Comm> device_world = make_device_world(comm, *be, dplan);
  ProcessGrid grid(device_world ? *device_world : comm, cfg.parallel.ep);
  if (!dplan.note.empty()) log_info(dplan.note);
  const int E = m.moe.every > 0 ? m.moe.experts : 0;
  // Pseudo-to-Real: the layout of the model trained now -- shared layers
  // until model.sharing.delink_at_step, the real model after (also when
  // resuming a checkpoint written after the delink). Checkpoints record it.
  Config run_cfg = resume_layout(cfg, opt.run_dir, parse_resume_flag(opt.resume));
  const MemoryPlan mem_plan = check_run_memory(run_cfg, world, *be);  // before any allocation
  const GradWire grad_wire =
      cfg.precision.compute == Precision::Fp16 ? GradWire::LossScaled : GradWire::Unscaled;
  Model model(run_cfg, *be, grid_experts(grid.layout(), E),
              MoeExchange{grid.layout().ep > 1 ? &grid.ep() : nullptr, wire, grad_wire});
  model.init_params(cfg.train.seed);
  model.reserve_stats(accum);
  // Host pieces of the offloaded optimizer step; re-sized after a delink.
  auto staging = std::make_unique<HostStaging>(*be, model.chunks(), run_cfg.offload);
  GradSync grad_sync(grid, *be, wire);
  grad_sync.set_grad_wire(grad_wire);
  CommMeter comm_meter(grid.activity());
  TrainState state;
  // Wall and CPU seconds of this rank (the CPU time tells an oversubscribed
  // or shared machine's waiting apart from the work).
  auto cpu_seconds = [] { return static_cast<double>(std::clock()) / CLOCKS_PER_SEC; };
  const auto t_load = Clock::now();
  const double cpu_load = cpu_seconds();
  const ResumeResult resumed =
      resume_training(opt.run_dir, parse_resume_flag(opt.resume), run_cfg, *be, model.chunks(), comm);
  const double load_seconds = seconds_since(t_load), load_cpu = cpu_seconds() - cpu_load;
  if (resumed.resumed) state = resumed.state;
  SpikeGuard spike_guard(cfg.train.spike_guard.window, cfg.train.spike_guard.z_threshold);
  spike_guard.restore(state.spike_window);
  LossScaler scaler(cfg.precision.loss_scale, cfg.precision.compute == Precision::Fp16
                                                  ? LossScaler::Active::Yes
                                                  : LossScaler::Active::No);
  if (resumed.resumed) scaler.restore(state.loss_scaler);

  const ParamCounts pc = count_params(run_cfg.model);
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
  log_info(model.graphs_on()
               ? std::string("graphs: on (each training micro-batch replayed from a graph)")
               : fmt("graphs: off (", model.graphs_off_reason(), ")"));
  if (world > 1)
    log_info(fmt("parallel: ", describe_grid(grid.layout(), E), "; communication ", comm.name(),
                 " in ", comm_dtype_name(wire), ", timeout ", cfg.parallel.timeout_s, " s"));

  // MFU: model FLOPs per token against the devices' peak (measured on every
  // rank at once unless train.peak_tflops gives it; the job's peak is the sum).
  const ModelFlops flops = model_flops(run_cfg.model, T);
  double peak_per_rank = peak.flops;
  if (world > 1) {
    CommLabel label(comm.activity(), "peak flops");
    peak_per_rank = comm.all_reduce_scalar(peak.flops, ReduceOp::Sum) / world;
  }
  log_info("mfu: " + describe_flops(flops, peak_per_rank, peak.source));

  MetricsWriter metrics(opt.run_dir, rank == 0);
  metrics.write_event("model_flops", {{"flops_per_token", flops.per_token},
                                      {"active_params", flops.active_params},
                                      {"peak_flops_per_rank", peak_per_rank},
                                      {"world", world},
                                      {"peak_source", peak.source}});
  TensorBoardWriter tb(opt.run_dir + "/tb", rank == 0 && cfg.log.tensorboard);
  std::vector<int> moe_layer_ids;
  for (int l = 0; l < m.n_layers; ++l)
    if (m.is_moe_layer(l)) moe_layer_ids.push_back(l);
  TrainSummary sum;
  sum.run_dir = opt.run_dir;
  const auto t_start = Clock::now();
  double train_seconds = 0;

  auto run_eval = [&](int64_t step) {
    const double loss = evaluate(model, val_ds, cfg, grid);
    EvalRecord r;
    r.step = step;
    r.eval_loss = loss;
    r.elapsed_s = seconds_since(t_start);
    log_info(format_eval_line(r));
    metrics.write_eval(r);
    tb_write_eval(tb, r);
    return loss;
  };

  const double kNaN = std::numeric_limits<double>::quiet_NaN();
  sum.first_eval_loss = sum.final_eval_loss = kNaN;
  if (resumed.resumed) {
    sum.resumed_from = state.step;
    sum.checkpoint = resumed.dir;
    log_info(fmt("resume: checkpoint loaded in ", std::round(load_seconds * 100) / 100, " s"));
    metrics.write_event("resume", {{"step", state.step},
                                   {"checkpoint", resumed.dir},
                                   {"seconds", load_seconds},
                                   {"cpu_seconds", load_cpu}});
  } else {
    sum.first_eval_loss = sum.final_eval_loss = run_eval(0);
  }
  const int64_t start_step = state.step;
  const int64_t end = opt.max_steps >= 0 ? std::min(cfg.train.steps, state.step + opt.max_steps)
                                         : cfg.train.steps;
  // The step of the newest checkpoint this run has (so none is written twice).
  int64_t saved_step = resumed.resumed ? state.step : -1;
  auto save = [&] {
    state.spike_window = spike_guard.history();
    state.loss_scaler = scaler.state();
    const auto t_save = Clock::now();
    const double cpu_save = cpu_seconds();
    sum.checkpoint = save_checkpoint(opt.run_dir, run_cfg, state, *be, model.chunks(), comm);
    const double save_seconds = seconds_since(t_save), save_cpu = cpu_seconds() - cpu_save;
    saved_step = state.step;
    log_info(fmt("checkpoint: ", sum.checkpoint, " (saved in ",
                 std::round(save_seconds * 100) / 100, " s)"));
    metrics.write_event("checkpoint", {{"step", state.step},
                                       {"checkpoint", sum.checkpoint},
                                       {"seconds", save_seconds},
                                       {"cpu_seconds", save_cpu}});
  };
  Interval iv;
  StepProfile profile;  // log.profile
  Batch batch;
  std::vector<MicroStats> micro(static_cast<size_t>(accum));
  const float grad_scale = 1.0f / static_cast<float>(micro_per_step);
  bool evaluated_last = false;
  for (int64_t step = state.step; step < end; ++step) {
    // Step boundary: a stop signal on any rank stops every rank here.
    if (failpoint_hit(Failpoint::Signal, step, rank)) std::raise(SIGTERM);
    failpoint_kill(Failpoint::KillStep, step, rank);
    {
      CommLabel label(comm.activity(), "stop signal");
      sum.stop_signal = static_cast<int>(
          comm.all_reduce_scalar(static_cast<int64_t>(stop_signals.pending()), ReduceOp::Max));
    }
    if (sum.stop_signal) break;
    const SharingConfig& sharing = run_cfg.model.sharing;
    if (sharing.groups > 0 && sharing.delink_at_step > 0 && step >= sharing.delink_at_step) {
      metrics.write_event("delink", delink_in_run(model, run_cfg, step, [&] {
                            return evaluate(model, val_ds, cfg, grid);
                          }));
      staging.reset();
      staging = std::make_unique<HostStaging>(*be, model.chunks(), run_cfg.offload);
    }

    grid.activity().step = step + 1;  // named in timeout messages
    if (cfg.log.profile) profile.begin_step(*be);
    const auto t0 = Clock::now();
    model.zero_grads();
    double step_loss = 0;  // sum over this rank's micro-batches of the mean CE
    // fp16: gradients carry the loss scale (a power of two: exact) until the optimizer.
    const double loss_scale = scaler.scale();
    // The micro-batches read nothing back but the MoE loads; their losses
    // and router statistics are read together after the last one.
    for (int a = 0; a < accum; ++a) {
      sample_train_batch(train_ds, cfg.train.seed, step, a * world + rank, micro_per_step, B, T,
                         batch);
      micro[a] = model.train_micro(batch, static_cast<float>(grad_scale * loss_scale), a);
    }
    model.collect_stats(micro.data(), accum);
    for (int a = 0; a < accum; ++a) {
      iv.add_micro(micro[a], static_cast<uint64_t>(step * micro_per_step + a * world + rank));
      step_loss += micro[a].ce();
    }
    if (failpoint_hit(Failpoint::NanGrad, step, rank)) {
      const float nan = std::numeric_limits<float>::quiet_NaN();
      be->to_device(model.chunks().front().grad, &nan, sizeof nan);
    }
    if (failpoint_hit(Failpoint::Overflow, step, rank)) {
      const float inf = std::numeric_limits<float>::infinity();
      be->to_device(model.chunks().back().grad, &inf, sizeof inf);
    }
    if (failpoint_hit(Failpoint::NanLoss, step, rank)) step_loss = kNaN;
    if (failpoint_hit(Failpoint::SpikeLoss, step, rank)) step_loss *= 100.0;
    // Dense gradients summed over the world, experts over their expert-DP
    // group; the norm counts every tensor once.
    grad_sync.all_reduce(model.chunks());
    double loss = 0;
    {
      CommLabel label(comm.activity(), "step loss");
      loss = comm.all_reduce_scalar(step_loss, ReduceOp::Sum) / micro_per_step;
    }
    const double norm = grad_sync.global_norm(model.chunks()) / loss_scale;
    // Skip decisions are agreed (max over ranks): a fault on one rank skips
    // the step everywhere, so weights and moments stay identical.
    int32_t skip[2] = {!std::isfinite(norm) || !std::isfinite(loss),
                       std::isfinite(loss) && spike_guard.is_spike(loss)};
    {
      CommLabel label(comm.activity(), "skip decision");
      comm.all_reduce(skip, 2, CommDType::I32, ReduceOp::Max);
    }
    // fp16: non-finite gradients under a finite loss are an overflow of the
    // scaled gradients. The norm and the loss are world sums, so every rank
    // takes this branch together: the step is skipped everywhere and the
    // scale backs off (until it reaches precision.loss_scale.min, after
    // which an overflow counts as any non-finite step).
    const bool overflow = scaler.active() && skip[0] && std::isfinite(loss);
    if (overflow && scaler.can_back_off()) {
      ++state.skipped_steps;
      ++iv.skipped;
      scaler.update(true);
      log_warn(fmt("step ", step + 1, ": fp16 gradient overflow (inf/NaN in the scaled gradients "
                   "of some rank); update skipped on every rank, loss scale ", loss_scale, " -> ",
                   scaler.scale()));
      metrics.write_event("skip", {{"step", step + 1}, {"reason", "overflow"}, {"loss", loss},
                                   {"loss_scale", scaler.scale()}});
    } else if (skip[0] || skip[1]) {
      if (overflow) scaler.update(true);
      ++state.skipped_steps;
      ++iv.skipped;
      const char* why = skip[0] ? "non-finite loss or gradient" : "loss spike";
      if (++state.consecutive_skips >= cfg.train.max_skipped_steps)
        throw Error(fmt("step ", step + 1, ": ", state.consecutive_skips,
                        " consecutive steps skipped (the last for a ", why,
                        "; train.max_skipped_steps = ", cfg.train.max_skipped_steps,
                        "); lower optim.lr, check the data, or raise train.spike_guard.z_threshold"));
      if (rank == 0)
        log_warn(fmt("step ", step + 1, ": ", why, " (loss ", loss, ", grad norm ", norm,
                     skip[1] ? fmt(", z ", spike_guard.z_score(loss)) : std::string(),
                     "), update skipped"));
      metrics.write_event("skip", {{"step", step + 1}, {"reason", skip[0] ? "nonfinite" : "spike"},
                                   {"loss", loss}});
    } else {
      state.consecutive_skips = 0;
      const double lr = lr_at(cfg.optim, cfg.train.steps, step);
      adamw_step(*be, model.chunks(), cfg.optim, lr,
                 static_cast<float>(clip_factor(cfg.optim, norm) / loss_scale), ++state.adam_t,
                 staging.get());
      spike_guard.accept(loss);
      if (scaler.update(false))
        metrics.write_event("loss_scale", {{"step", step + 1}, {"loss_scale", scaler.scale()}});
      iv.grad_norm += norm;
    }
    be->sync();
    state.step = step + 1;
    state.tokens_seen += static_cast<int64_t>(cfg.train.global_batch) * T;
    const double dt = seconds_since(t0);
    if (cfg.log.profile) profile.end_step(*be, dt, step == start_step);
    train_seconds += dt;
    iv.seconds += dt;
    iv.steps += 1;
    iv.tokens += static_cast<int64_t>(cfg.train.global_batch) * T;

    const bool last = state.step == end;
    if (state.step % cfg.log.every == 0 || last) {
      iv.sum_over(comm);
      const CommMeter::Report cr = comm_meter.report(comm, iv.steps);
      TrainRecord r;
      r.step = state.step;
      r.steps_total = cfg.train.steps;
      r.loss = iv.loss / static_cast<double>(iv.micro);
      r.aux_loss = iv.aux / static_cast<double>(iv.micro);
      r.z_loss = iv.z / static_cast<double>(iv.micro);
      r.lr = lr_at(cfg.optim, cfg.train.steps, step);
      r.grad_norm = iv.grad_norm / static_cast<double>(std::max<int64_t>(1, iv.steps - iv.skipped));
      r.tokens_per_s = static_cast<double>(iv.tokens) / iv.seconds;
      r.elapsed_s = seconds_since(t_start);
      r.eta_s = train_seconds / static_cast<double>(state.step - start_step) *
                static_cast<double>(cfg.train.steps - state.step);
      r.dropped_frac = iv.slots ? static_cast<double>(iv.dropped) / static_cast<double>(iv.slots) : 0.0;
      r.skipped_steps = state.skipped_steps;
      r.expert_load = iv.load;
      for (double x : iv.routing) r.routing.push_back(static_cast<int64_t>(x));
      {
        const MemoryPeaks mp = memory_peaks(*be);
        int64_t peaks[3] = {mp.device, mp.host, mp.rss};
        CommLabel label(comm.activity(), "memory peaks");
        comm.all_reduce(peaks, 3, CommDType::I64, ReduceOp::Max);
        r.mem_peak_bytes = peaks[0], r.mem_host_peak_bytes = peaks[1], r.rss_peak_bytes = peaks[2];
        r.mem_plan_bytes = mem_plan.device_total;
        r.mem_plan_host_bytes = mem_plan.host_total;
      }
      r.mfu = m6::mfu(r.tokens_per_s, flops.per_token, peak_per_rank, world);
      r.loss_scale = scaler.scale();
      log_info(world == 1 ? format_train_line(r)
                          : fmt(format_train_line(r), " | comm ",
                                static_cast<int>(std::lround(100.0 * cr.seconds_mean / cr.wall_s)),
                                "%"));
      metrics.write_train(r);
      tb_write_train(tb, r, moe_layer_ids);
      if (world > 1) metrics.write_event("comm", CommMeter::to_json(cr, r.step));
      iv = Interval{};
    }
    evaluated_last = false;
    if ((cfg.eval.every > 0 && state.step % cfg.eval.every == 0) || last) {
      sum.final_eval_loss = run_eval(state.step);
      evaluated_last = true;
    }
    if (cfg.checkpoint.every > 0 && state.step % cfg.checkpoint.every == 0 && !last) save();
  }
  if (!evaluated_last && end > 0 && state.step == 0) sum.final_eval_loss = sum.first_eval_loss;
  sum.steps = state.step;
  if (sum.stop_signal && saved_step != state.step) {
    // Every rank confirms it is here before a file is written. A rank whose
    // stop agreement timed out is aborting (its watchdog parks it even if the
    // late peer then completed the collective), so a rank that was stopped
    // and continued with a stop request pending times out here instead of
    // beginning a checkpoint that waits on ranks that are gone.
    CommLabel label(comm.activity(), "stop: save begins");
    comm.barrier();
  }
  if (saved_step != state.step) save();
  if (cfg.log.profile) profile.report(opt.run_dir, rank == 0);
  if (model.graphs_on())
    log_info(fmt("graphs: ", model.graph_replays(), " micro-batches replayed from a graph"));
  if (sum.stop_signal) {
    log_info(fmt("stopped by ", stop_signal_name(sum.stop_signal), " at step ", state.step,
                 " after saving ", sum.checkpoint, "; resume with --resume auto"));
    metrics.write_event("preempted", {{"step", state.step}, {"signal", sum.stop_signal}});
  }
  return sum;
}

}  // namespace m6
