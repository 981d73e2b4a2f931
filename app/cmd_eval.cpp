// `m6train eval`: loss and bits per byte of a run's latest checkpoint on
// held-out token shards (default: the run's data.val).
#include <cmath>
#include <cstdio>
#include <string>

#include "app/commands.h"
#include "core/infer/eval_run.h"
#include "core/infer/run_checkpoint.h"

namespace m6 {

CLI::App* add_eval_command(CLI::App& app, EvalArgs& a) {
  auto* c = app.add_subcommand("eval", "loss and bits per byte of a run's latest checkpoint");
  c->add_option("--run-dir", a.run_dir, "the run directory")->required();
  c->add_option("--data", a.data, "glob of token shards (default: the run's data.val)");
  c->add_option("--batches", a.batches,
                "evaluate N evenly spaced micro-batches, as training does with eval.batches = N "
                "(default: every window of the shards)")
      ->check(non_negative());
  c->add_option("--threads", a.threads, "CPU threads (default: the run's train.threads)")
      ->check(non_negative());
  return c;
}

int run_eval(const EvalArgs& a) {
  RunCheckpoint ck = open_run_checkpoint(a.run_dir);
  override_threads(ck.cfg, a.threads);
  const std::string glob = a.data.empty() ? ck.cfg.data.val : a.data;
  const EvalRunResult r = eval_checkpoint(ck.cfg, ck.dir, glob, a.batches);
  std::printf("eval: %s (step %lld) on %s: %lld tokens in %d shard(s), %lld windows of %d\n",
              ck.dir.c_str(), static_cast<long long>(ck.step), glob.c_str(),
              static_cast<long long>(r.shard_tokens), r.shards, static_cast<long long>(r.windows),
              ck.cfg.train.seq_len);
  if (std::isfinite(r.bits_per_byte))
    std::printf("loss %.6f | bits per byte %.6f\n", r.loss, r.bits_per_byte);
  else
    std::printf("loss %.6f | bits per byte n/a (vocabulary of %d is not byte-level)\n", r.loss,
                ck.cfg.model.vocab_size);
  return 0;
}

}  // namespace m6
