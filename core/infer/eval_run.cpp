#include "core/infer/eval_run.h"

#include <cmath>
#include <numbers>

#include "core/data/dataset.h"
#include "core/model/model.h"
#include "core/ckpt/checkpoint.h"
#include "core/train/trainer.h"
#include "core/util/error.h"

namespace m6 {

EvalRunResult eval_checkpoint(const Config& cfg, const std::string& ckpt_dir,
                              const std::string& data_glob, int batches) {
  const ModelConfig& m = cfg.model;
  const int B = cfg.train.micro_batch, T = cfg.train.seq_len;
  // The data first: a missing shard fails before the model is built.
  const TokenDataset ds = TokenDataset::open(data_glob, m.vocab_size, T);
  auto be = make_backend(cfg);
  Model model(cfg, *be, ExpertRange{0, m.moe.every > 0 ? m.moe.experts : 0});
  load_checkpoint(ckpt_dir, *be, model.chunks(), LoadParts::Weights);

  EvalRunResult r;
  r.shard_tokens = ds.size();
  r.shards = static_cast<int>(ds.files().size());
  double ce_sum = 0;
  Batch b;
  if (batches > 0) {
    for (int i = 0; i < batches; ++i) {
      sample_eval_batch(ds, i, batches, B, T, b);
      const MicroStats st = model.forward(b, Phase::Eval);
      ce_sum += st.ce_sum;
      r.tokens += st.n_valid;
      r.windows += b.B;
    }
  } else {
    const int64_t total = (ds.size() - 1) / T;  // windows of T inputs + 1 target
    std::vector<int32_t> buf(static_cast<size_t>(T) + 1);
    for (int64_t w0 = 0; w0 < total; w0 += B) {
      const int nb = static_cast<int>(std::min<int64_t>(B, total - w0));
      b.B = nb;
      b.T = T;
      b.inputs.resize(static_cast<size_t>(nb) * T);
      b.targets.resize(b.inputs.size());
      for (int i = 0; i < nb; ++i) {
        ds.read((w0 + i) * T, T + 1, buf.data());
        std::copy(buf.begin(), buf.end() - 1, b.inputs.begin() + static_cast<ptrdiff_t>(i) * T);
        std::copy(buf.begin() + 1, buf.end(), b.targets.begin() + static_cast<ptrdiff_t>(i) * T);
      }
      const MicroStats st = model.forward(b, Phase::Eval);
      ce_sum += st.ce_sum;
      r.tokens += st.n_valid;
    }
    r.windows = total;
  }
  r.loss = r.tokens > 0 ? ce_sum / static_cast<double>(r.tokens) : std::nan("");
  r.bits_per_byte = m.vocab_size == 256 ? r.loss / std::numbers::ln2 : std::nan("");
  return r;
}

}  // namespace m6
