// What a run writes to TensorBoard (log.tensorboard: true): every scalar of a
// metrics.jsonl train or eval record under "<kind>/<field>" (train/loss,
// train/lr, train/grad_norm, train/tokens_per_s, train/mfu, train/loss_scale,
// train/dropped_frac, train/aux_loss, train/z_loss, eval/eval_loss), so each
// TensorBoard value has its twin in metrics.jsonl, and per MoE layer l the
// expert load as a histogram "expert_load/layer_<l>" (bucket e = tokens
// routed to expert e over the logging interval).
#pragma once
#include <vector>

#include "core/metrics/metrics.h"
#include "core/metrics/tb_writer.h"

namespace m6 {

// moe_layers: the logical index of each MoE layer, in the order of r.expert_load.
void tb_write_train(TensorBoardWriter& tb, const TrainRecord& r, const std::vector<int>& moe_layers);
void tb_write_eval(TensorBoardWriter& tb, const EvalRecord& r);

}  // namespace m6
