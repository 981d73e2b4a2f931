// The training run's memory check (core/train/memory_check.h), as a unit:
// offload on a backend without a host arena is a config error naming the key
// (exit 2) before anything is allocated; a layout that does not fit
// train.device_memory is refused with the planner's numbers unless
// train.allow_unfit is set, and the check plans with the CPU backend's fp32
// widths (its plan equals what the model then allocates).
#include <catch2/catch.hpp>

#include "core/model/model.h"
#include "core/train/memory_check.h"
#include "core/util/error.h"

using namespace m6;

namespace {

// A backend with the CPU backend's ops but no host arena (like a build whose
// device backend has none). With AttentionSizes::Flash it asks for the CUDA
// backend's attention buffers instead (for allocation only: its attention
// ops are the CPU's, which need the probabilities).
enum class AttentionSizes { Cpu, Flash };
class NoHostArenaBackend final : public Backend {
 public:
  explicit NoHostArenaBackend(AttentionSizes sizes = AttentionSizes::Cpu)
      : be_(make_cpu_backend(1)), sizes_(sizes) {}
  std::string name() const override { return be_->name(); }
  MemoryStats memory_stats() const override { return be_->memory_stats(); }
  void* alloc(size_t bytes) override { return be_->alloc(bytes); }
  void release(void* p) override { be_->release(p); }
  void to_device(void* dst, const void* host_src, size_t bytes) override {
    be_->to_device(dst, host_src, bytes);
  }
  void to_host(void* host_dst, const void* src, size_t bytes) override {
    be_->to_host(host_dst, src, bytes);
  }
  void copy(void* dst, const void* src, size_t bytes) override { be_->copy(dst, src, bytes); }
  void zero(void* p, size_t bytes) override { be_->zero(p, bytes); }
  void sync() override { be_->sync(); }
  void gemm(const GemmArgs& g) override { be_->gemm(g); }
  void add_bias(float* y, const float* b, int n, int c) override { be_->add_bias(y, b, n, c); }
  void bias_grad(float* db, const float* dy, int n, int c) override {
    be_->bias_grad(db, dy, n, c);
  }
  void add(float* y, const float* a, const float* b, size_t n) override { be_->add(y, a, b, n); }
  void axpy(float* y, float alpha, const float* x, size_t n) override { be_->axpy(y, alpha, x, n); }
  void scale(float* x, float s, size_t n) override { be_->scale(x, s, n); }
  double sum(const float* x, size_t n) override { return be_->sum(x, n); }
  double sum_squares(const float* x, size_t n) override { return be_->sum_squares(x, n); }
  bool all_finite(const float* x, size_t n) override { return be_->all_finite(x, n); }
  void round_half(float* x, size_t n, HalfType t) override { be_->round_half(x, n, t); }
  void embedding_fwd(float* x, const int32_t* tokens, const float* wte, const float* wpe, int B,
                     int T, int d) override {
    be_->embedding_fwd(x, tokens, wte, wpe, B, T, d);
  }
  void embedding_bwd(float* dwte, float* dwpe, const float* dx, const int32_t* tokens, int B, int T,
                     int d) override {
    be_->embedding_bwd(dwte, dwpe, dx, tokens, B, T, d);
  }
  void layernorm_fwd(float* y, float* mean, float* rstd, const float* x, const float* w,
                     const float* b, int N, int d) override {
    be_->layernorm_fwd(y, mean, rstd, x, w, b, N, d);
  }
  void layernorm_bwd(float* dx, float* dw, float* db, const float* dy, const float* x,
                     const float* mean, const float* rstd, const float* w, int N, int d) override {
    be_->layernorm_bwd(dx, dw, db, dy, x, mean, rstd, w, N, d);
  }
  void gelu_fwd(float* y, const float* x, size_t n) override { be_->gelu_fwd(y, x, n); }
  void gelu_bwd(float* dx, const float* x, const float* dy, size_t n) override {
    be_->gelu_bwd(dx, x, dy, n);
  }
  void attention_fwd(float* out, float* att, const float* qkv, int B, int T, int H,
                     int d) override {
    be_->attention_fwd(out, att, qkv, B, T, H, d);
  }
  void attention_bwd(float* dqkv, float* datt, const float* dout, const float* qkv,
                     const float* out, const float* att, int B, int T, int H, int d) override {
    be_->attention_bwd(dqkv, datt, dout, qkv, out, att, B, T, H, d);
  }
  AttentionBuffers attention_buffers(int B, int T, int H) const override {
    return sizes_ == AttentionSizes::Flash ? flash_attention_buffers(B, T, H)
                                           : be_->attention_buffers(B, T, H);
  }
  void crossentropy_fwd(float* loss, float* probs, const float* logits, const int32_t* targets,
                        int N, int V) override {
    be_->crossentropy_fwd(loss, probs, logits, targets, N, V);
  }
  void crossentropy_bwd(float* dlogits, const float* probs, const int32_t* targets, float dscale,
                        int N, int V) override {
    be_->crossentropy_bwd(dlogits, probs, targets, dscale, N, V);
  }
  void router_fwd(float* probs, float* lse, int32_t* expert, float* gate, const float* logits,
                  const RouterArgs& a) override {
    be_->router_fwd(probs, lse, expert, gate, logits, a);
  }
  void moe_assign(int32_t* pos, int32_t* count, int32_t* demand, const int32_t* expert, int N,
                  int S, int E, int capacity) override {
    be_->moe_assign(pos, count, demand, expert, N, S, E, capacity);
  }
  void moe_permute(float* xp, const float* x, const int32_t* expert, const int32_t* pos,
                   const int32_t* offset, int N, int S, int d) override {
    be_->moe_permute(xp, x, expert, pos, offset, N, S, d);
  }
  void moe_permute_bwd(float* dx, const float* dxp, const int32_t* expert, const int32_t* pos,
                       const int32_t* offset, int N, int S, int d) override {
    be_->moe_permute_bwd(dx, dxp, expert, pos, offset, N, S, d);
  }
  void moe_unpermute(float* y, const float* yp, const float* gate, const int32_t* expert,
                     const int32_t* pos, const int32_t* offset, int N, int S, int d) override {
    be_->moe_unpermute(y, yp, gate, expert, pos, offset, N, S, d);
  }
  void moe_unpermute_bwd(float* dyp, float* dgate, const float* dy, const float* yp,
                         const float* gate, const int32_t* expert, const int32_t* pos,
                         const int32_t* offset, int N, int S, int d) override {
    be_->moe_unpermute_bwd(dyp, dgate, dy, yp, gate, expert, pos, offset, N, S, d);
  }
  AuxLosses router_aux_fwd(const float* probs, const float* lse, const int32_t* demand,
                           const RouterArgs& a) override {
    return be_->router_aux_fwd(probs, lse, demand, a);
  }
  void router_bwd(float* dlogits, const float* dgate, const float* probs, const float* lse,
                  const int32_t* expert, const float* gate, const int32_t* demand, float aux_coef,
                  float z_coef, const RouterArgs& a) override {
    be_->router_bwd(dlogits, dgate, probs, lse, expert, gate, demand, aux_coef, z_coef, a);
  }
  void adamw(float* p, const float* g, float* m, float* v, size_t n, const AdamArgs& a) override {
    be_->adamw(p, g, m, v, n, a);
  }

 private:
  std::unique_ptr<Backend> be_;
  AttentionSizes sizes_;
};

Config small_moe() {
  Config c;
  c.source = "test.yaml";
  c.model.vocab_size = 64;
  c.model.max_seq_len = 16;
  c.model.d_model = 32;
  c.model.n_heads = 2;
  c.model.n_layers = 2;
  c.model.d_ff = 64;
  c.model.moe.every = 2;
  c.model.moe.experts = 4;
  c.train.seq_len = 16;
  c.train.micro_batch = 2;
  c.train.global_batch = 2;
  c.data.train = c.data.val = "unused";
  return c;
}

std::string message_of(const std::function<void()>& f, ExitCode* code) {
  try {
    f();
  } catch (const Error& e) {
    *code = e.code();
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("memory check: offload needs a host arena", "[memory]") {
  NoHostArenaBackend be;
  Config c = small_moe();
  CHECK_NOTHROW(check_run_memory(c, 1, be));
  c.offload.optimizer = 0.5;
  ExitCode code = ExitCode::Internal;
  const std::string msg = message_of([&] { check_run_memory(c, 1, be); }, &code);
  CHECK(code == ExitCode::Usage);
  CHECK_THAT(msg, Catch::Contains("offload.optimizer (0.5)") && Catch::Contains("no host arena"));
}

TEST_CASE("memory check: an unfit layout is refused unless allowed", "[memory]") {
  auto be = make_cpu_backend(1);
  Config c = small_moe();
  c.train.device_memory = "64KiB";
  ExitCode code = ExitCode::Internal;
  const std::string msg = message_of([&] { check_run_memory(c, 1, *be); }, &code);
  CHECK(code == ExitCode::Usage);
  CHECK_THAT(msg, Catch::Contains("does not fit in memory") && Catch::Contains("of 64.00 KiB") &&
                      Catch::Contains("activations") && Catch::Contains("train.allow_unfit=true"));
  c.train.allow_unfit = true;
  CHECK_NOTHROW(check_run_memory(c, 1, *be));
  // Nothing was allocated by the check; the plan is what the model takes.
  CHECK(be->memory_stats().device_peak == 0);
  const MemoryPlan plan = check_run_memory(c, 1, *be);
  // The model takes all of it but the gradient buckets' staging (GradSync's).
  int64_t buckets = -1;
  for (const MemoryLine& l : plan.lines)
    if (l.name == "comm buckets") buckets = l.device;
  REQUIRE(buckets > 0);
  {
    Model model(c, *be, ExpertRange{0, 4});
    CHECK(be->memory_stats().device_live == plan.device_total - buckets);
  }
}

TEST_CASE("memory plan: a GPU layout counts the fused attention's state, as the model takes it",
          "[memory]") {
  for (const Recompute rc : {Recompute::None, Recompute::Attention, Recompute::Layer}) {
    CAPTURE(recompute_name(rc));
    NoHostArenaBackend be(AttentionSizes::Flash);
    Config c = small_moe();
    c.train.recompute = rc;
    c.train.device = DeviceKind::Cuda;
    // fp32 compute: the GPU layout's widths are the CPU backend's, so the
    // plan is exactly what the model allocates
    const MemoryPlan plan = plan_memory(c, 1, PlanStorage::Gpu);
    int64_t buckets = -1;
    for (const MemoryLine& l : plan.lines)
      if (l.name == "comm buckets") buckets = l.device;
    REQUIRE(buckets > 0);
    {
      Model model(c, be, ExpertRange{0, 4});
      CHECK(be.memory_stats().device_live == plan.device_total - buckets);
    }
    // pinned to the CPU backend, the same layout counts the probabilities
    c.train.device = DeviceKind::Cpu;
    CHECK(plan_memory(c, 1, PlanStorage::Gpu).device_total > plan.device_total);
  }
}
