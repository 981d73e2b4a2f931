#include "core/infer/run_checkpoint.h"

#include "core/ckpt/checkpoint.h"
#include "core/train/trainer.h"
#include "core/util/error.h"

namespace m6 {

RunCheckpoint open_run_checkpoint(const std::string& run_dir) {
  RunCheckpoint r;
  r.dir = latest_checkpoint(run_dir);
  const nlohmann::json man = read_manifest(r.dir, Verify::Sizes);
  r.step = train_state_of(man, r.dir).step;
  r.cfg = config_from_json(man.at("config"));
  // Wherever the run trained: the GPU when this machine has one, else the CPU.
  r.cfg.train.device = DeviceKind::Auto;
  return r;
}

void override_threads(Config& cfg, int threads) {
  if (threads > 0) cfg.train.threads = threads;
}

std::unique_ptr<LoadedWeights> load_run_weights(const std::string& run_dir, int threads) {
  auto w = std::make_unique<LoadedWeights>();
  w->ckpt = open_run_checkpoint(run_dir);
  override_threads(w->ckpt.cfg, threads);
  const ModelConfig& m = w->ckpt.cfg.model;
  w->be = make_backend(w->ckpt.cfg);
  w->chunks = plan_chunks(m, ExpertRange{0, m.moe.every > 0 ? m.moe.experts : 0});
  w->storage = std::make_unique<ChunkStorage>(*w->be, w->chunks);
  load_checkpoint(w->ckpt.dir, *w->be, w->chunks, LoadParts::Weights);
  return w;
}

}  // namespace m6
