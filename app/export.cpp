#include "app/export.h"

#include <nlohmann/json.hpp>

#include "core/ckpt/safetensors.h"
#include "core/ckpt/checkpoint.h"
#include "core/train/trainer.h"
#include "core/util/error.h"
#include "core/util/fs.h"

namespace m6 {

namespace {

std::vector<StTensorView> views_of(const std::vector<Model::NamedTensor>& tensors) {
  std::vector<StTensorView> v;
  for (const auto& t : tensors) v.push_back({t.name, StDType::F32, t.shape, t.values.data()});
  return v;
}

}  // namespace

void write_export(const std::string& path, const Config& cfg,
                  const std::vector<Model::NamedTensor>& tensors) {
  write_safetensors(path, views_of(tensors),
                    {{"config", config_to_json(cfg).dump()}, {"format", "m6train-export-1"}});
}

std::string export_run(const std::string& run_dir, const std::string& out_path) {
  const std::string dir = latest_checkpoint(run_dir);
  const nlohmann::json man = read_manifest(dir);
  Config cfg = config_from_json(man.at("config"));
  const ModelConfig& m = cfg.model;

  const int E = m.moe.every > 0 ? m.moe.experts : 0;
  const std::vector<Chunk> chunks = plan_chunks(m, ExpertRange{0, E});
  // By global name from whichever file holds each tensor (checks dtype and shape).
  const CheckpointTensors weights(dir, man, CkptPart::Weights, chunks);
  std::vector<Model::NamedTensor> out;
  for_each_logical_tensor(m, chunks, [&](const Chunk&, const ParamTensor& t, const std::string& name) {
    const float* p = weights.get(t);
    out.push_back({name, t.shape, std::vector<float>(p, p + t.numel)});
  });
  write_export(out_path, cfg, out);
  return dir;
}

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
