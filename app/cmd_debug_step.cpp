// `m6train debug-step`: loss and gradients of one micro-batch, for the
// PyTorch reference test (tests/ref).
#include <nlohmann/json.hpp>

#include "app/commands.h"
#include "core/ckpt/export.h"
#include "core/ckpt/safetensors.h"
#include "core/data/dataset.h"
#include "core/model/model.h"
#include "core/train/trainer.h"
#include "core/util/fs.h"

namespace m6 {

void debug_step(const Config& cfg, const std::string& out_dir) {
  const ModelConfig& m = cfg.model;
  const int B = cfg.train.micro_batch, T = cfg.train.seq_len;
  TokenDataset ds = TokenDataset::open(cfg.data.train, m.vocab_size, T);
  auto be = make_backend(cfg);
  const int E = m.moe.every > 0 ? m.moe.experts : 0;
  Model model(cfg, *be, ExpertRange{0, E});
  model.init_params(cfg.train.seed);
  Batch batch;
  sample_train_batch(ds, cfg.train.seed, 0, 0, 1, B, T, batch);
  const MicroStats st = model.forward(batch, Phase::Train);
  model.backward(1.0f);

  make_dirs(out_dir);
  write_export(out_dir + "/model.safetensors", cfg, model.logical_tensors(false));
  const auto grads = model.logical_tensors(true);
  write_safetensors(out_dir + "/grads.safetensors", views_of(grads), {});
  write_safetensors(out_dir + "/batch.safetensors",
                    {{"inputs", StDType::I32, {B, T}, batch.inputs.data()},
                     {"targets", StDType::I32, {B, T}, batch.targets.data()}},
                    {});
  nlohmann::json r = {{"loss", st.loss(m.moe)}, {"ce", st.ce()}};
  r["aux"] = nlohmann::json::array();
  r["z"] = nlohmann::json::array();
  r["dropped"] = nlohmann::json::array();
  for (const auto& x : st.moe) {
    r["aux"].push_back(x.aux);
    r["z"].push_back(x.z);
    r["dropped"].push_back(x.dropped);
  }
  atomic_write_file(out_dir + "/result.json", r.dump(2) + "\n");
}

}  // namespace m6
