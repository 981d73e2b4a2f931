#include "core/metrics/tb_metrics.h"

#include <string>

#include "core/util/error.h"

namespace m6 {

void tb_write_train(TensorBoardWriter& tb, const TrainRecord& r, const std::vector<int>& moe_layers) {
  if (!tb.enabled()) return;
  const std::pair<const char*, double> scalars[] = {
      {"train/loss", r.loss},
      {"train/lr", r.lr},
      {"train/grad_norm", r.grad_norm},
      {"train/tokens_per_s", r.tokens_per_s},
      {"train/mfu", r.mfu},
      {"train/loss_scale", r.loss_scale},
      {"train/dropped_frac", r.dropped_frac},
      {"train/aux_loss", r.aux_loss},
      {"train/z_loss", r.z_loss},
  };
  for (const auto& [tag, v] : scalars) tb.add_scalar(tag, r.step, v);
  M6_CHECK(moe_layers.size() == r.expert_load.size(), moe_layers.size(), " MoE layer ids for ",
           r.expert_load.size(), " expert-load rows");
  for (size_t i = 0; i < r.expert_load.size(); ++i)
    tb.add_histogram("expert_load/layer_" + std::to_string(moe_layers[i]), r.step,
                     expert_load_histogram(r.expert_load[i]));
}

void tb_write_eval(TensorBoardWriter& tb, const EvalRecord& r) {
  tb.add_scalar("eval/eval_loss", r.step, r.eval_loss);
}

}  // namespace m6
