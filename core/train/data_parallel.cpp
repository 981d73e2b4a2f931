#include "core/train/data_parallel.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/train/optimizer.h"
#include "core/util/error.h"

namespace m6 {

CommDType comm_wire(Precision p) {
  switch (p) {
    case Precision::Fp32:
      return CommDType::F32;
    case Precision::Bf16:
      return CommDType::BF16;
    case Precision::Fp16:
      return CommDType::F16;
  }
  return CommDType::F32;
}

ExpertRange grid_experts(const GridLayout& g, int experts) {
  if (experts <= 0) return ExpertRange{0, 0};
  return ExpertRange{g.first_expert(experts), g.expert_count(experts)};
}

GradSync::GradSync(ProcessGrid& grid, Backend& be, CommDType wire, size_t bucket_bytes)
    : grid_(grid), be_(be), wire_(wire), bucket_bytes_(bucket_bytes) {}

GradSync::~GradSync() = default;

void GradSync::plan(const std::vector<Chunk>& chunks) {
  std::vector<const float*> ptrs;
  for (const Chunk& c : chunks) ptrs.push_back(c.grad);
  if (ptrs == planned_ && dense_) return;
  // Dense chunks in model order, then experts: every rank of a group lists
  // the same chunks in the same order, so bucket i means the same tensors.
  std::vector<GradSpan> dense, experts;
  for (const Chunk& c : chunks)
    (c.kind == ChunkKind::Expert ? experts : dense).push_back({c.grad, c.numel});
  dense_ = std::make_unique<GradBuckets>(be_, std::move(dense), bucket_bytes_);
  experts_ = std::make_unique<GradBuckets>(be_, std::move(experts), bucket_bytes_);
  planned_ = std::move(ptrs);
}

void GradSync::all_reduce(const std::vector<Chunk>& chunks) {
  plan(chunks);
  dense_->all_reduce_sum(grid_.world(), wire_, "dense grads", grad_wire_);
  experts_->all_reduce_sum(grid_.edp(), wire_, "expert grads", grad_wire_);
}

double GradSync::global_norm(const std::vector<Chunk>& chunks) {
  const GridLayout& g = grid_.layout();
  double dense = 0, experts = 0;
  const std::vector<double> sq = grad_squares(be_, chunks);
  for (size_t i = 0; i < chunks.size(); ++i)
    (chunks[i].kind == ChunkKind::Expert ? experts : dense) += sq[i];
  if (g.world == 1) return std::sqrt(dense + experts);
  // After all_reduce every holder of a tensor has the same gradient: count
  // the dense part on rank 0 and each expert on the first rank of its
  // expert-DP group (the ranks of EP group 0).
  const double mine = (g.rank == 0 ? dense : 0.0) + (g.edp_rank == 0 ? experts : 0.0);
  CommLabel label(grid_.activity(), "grad norm");
  return std::sqrt(grid_.world().all_reduce_scalar(mine, ReduceOp::Sum));
}

CommMeter::CommMeter(CommActivity& a)
    : a_(a), last_(a), last_t_(std::chrono::steady_clock::now()) {}

CommMeter::Report CommMeter::report(Comm& world, int64_t steps) {
  double v[4] = {a_.seconds - last_.seconds, static_cast<double>(a_.a2a_bytes - last_.a2a_bytes),
                 static_cast<double>(a_.reduce_bytes - last_.reduce_bytes),
                 a_.a2a_seconds - last_.a2a_seconds};
  double mx = v[0];
  const auto now = std::chrono::steady_clock::now();
  Report r;
  r.wall_s = std::chrono::duration<double>(now - last_t_).count();
  last_ = a_;
  last_t_ = now;
  {
    CommLabel label(a_, "metrics");
    world.all_reduce(v, 4, CommDType::F64, ReduceOp::Sum);
    world.all_reduce(&mx, 1, CommDType::F64, ReduceOp::Max);
  }
  // The metrics' own collectives belong to the next interval's count.
  const double s = static_cast<double>(std::max<int64_t>(1, steps));
  r.seconds_mean = v[0] / world.size();
  r.seconds_max = mx;
  r.a2a_seconds_mean = v[3] / world.size();
  r.a2a_bytes_per_step = v[1] / s;
  r.reduce_bytes_per_step = v[2] / s;
  return r;
}

nlohmann::json CommMeter::to_json(const Report& r, int64_t step) {
  return {{"step", step},
          {"comm_s", r.seconds_mean},
          {"comm_s_max", r.seconds_max},
          {"a2a_s", r.a2a_seconds_mean},
          {"comm_frac", r.wall_s > 0 ? r.seconds_mean / r.wall_s : 0.0},
          {"a2a_bytes_per_step", r.a2a_bytes_per_step},
          {"allreduce_bytes_per_step", r.reduce_bytes_per_step}};
}

}  // namespace m6
