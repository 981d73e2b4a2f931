// ForwardingBackend: a Backend that hands every op to a wrapped one through
// two hooks, the base of the backends that observe another: the recording
// twin of CUDA graphs (graph_recorder.cpp) and the op profiler
// (op_profiler.cpp).
//  - device work (every op that only enqueues work on the device) goes
//    through run(op, f): f runs the wrapped op with the arguments bound by
//    value (pointers, sizes, scalars, and copies of the small host tables an
//    op reads), so a hook may also keep f and run it later;
//  - host interaction (reads back, waits, allocations, uploads, offload
//    copies) calls host(op, kind) first, then the wrapped op at once.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/backend/backend.h"
#include "core/util/error.h"

namespace m6 {

class ForwardingBackend : public Backend {
 public:
  // What a host-interaction op does, for host(): Read = the host waits for
  // the device and reads a result; the others need the host but read nothing.
  enum class HostKind { Read, Alloc, Upload, Offload };

  explicit ForwardingBackend(std::unique_ptr<Backend> inner) : in_(std::move(inner)) {
    M6_CHECK(in_ != nullptr, "forwarding backend: no backend to wrap");
  }
  Backend& inner() { return *in_; }
  Backend* wrapped() override { return in_.get(); }
  const Backend& inner() const { return *in_; }
  int mark() override { return in_->mark(); }
  double mark_ms(int a, int b) override { return in_->mark_ms(a, b); }
  void marks_reset() override { in_->marks_reset(); }

  // ---- memory -------------------------------------------------------------------
  void* alloc(size_t bytes) override {
    host("alloc", HostKind::Alloc);
    return in_->alloc(bytes);
  }
  void release(void* p) override {
    host("release", HostKind::Alloc);
    in_->release(p);
  }
  void to_device(void* dst, const void* src, size_t bytes) override {
    host("to_device (a host-to-device copy)", HostKind::Upload);
    in_->to_device(dst, src, bytes);
  }
  void to_host(void* dst, const void* src, size_t bytes) override {
    host("to_host", HostKind::Read);
    in_->to_host(dst, src, bytes);
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    run("copy", [=, this] { in_->copy(dst, src, bytes); });
  }
  void zero(void* p, size_t bytes) override {
    run("zero", [=, this] { in_->zero(p, bytes); });
  }
  void sync() override {
    host("sync", HostKind::Read);
    in_->sync();
  }
  bool has_host_arena() const override { return in_->has_host_arena(); }
  void* alloc_host(size_t bytes) override {
    host("alloc_host", HostKind::Alloc);
    return in_->alloc_host(bytes);
  }
  void release_host(void* p) override {
    host("release_host", HostKind::Alloc);
    in_->release_host(p);
  }
  void copy_async(int slot, void* dst, const void* src, size_t bytes) override {
    host("copy_async", HostKind::Offload);
    in_->copy_async(slot, dst, src, bytes);
  }
  void copy_async_wait(int slot) override {
    host("copy_async_wait", HostKind::Offload);
    in_->copy_async_wait(slot);
  }
  void copy_async_sync(int slot) override {
    host("copy_async_sync", HostKind::Offload);
    in_->copy_async_sync(slot);
  }
  MemoryStats memory_stats() const override { return in_->memory_stats(); }
  void reset_memory_peaks() override { in_->reset_memory_peaks(); }

  // ---- dense algebra ----------------------------------------------------------
  void gemm(const GemmArgs& g) override {
    run("gemm", [=, this] { in_->gemm(g); });
  }
  void add_bias(float* y, const float* b, int n, int c) override {
    run("add_bias", [=, this] { in_->add_bias(y, b, n, c); });
  }
  void bias_grad(float* db, const float* dy, int n, int c) override {
    run("bias_grad", [=, this] { in_->bias_grad(db, dy, n, c); });
  }
  void add(float* y, const float* a, const float* b, size_t n) override {
    run("add", [=, this] { in_->add(y, a, b, n); });
  }
  void axpy(float* y, float alpha, const float* x, size_t n) override {
    run("axpy", [=, this] { in_->axpy(y, alpha, x, n); });
  }
  void scale(float* x, float s, size_t n) override {
    run("scale", [=, this] { in_->scale(x, s, n); });
  }
  void linear_fwd(float* y, float* act, const float* x, const float* w, const float* b, int n,
                  int in, int out) override {
    run(act ? "linear_fwd (+gelu)" : "linear_fwd",
        [=, this] { in_->linear_fwd(y, act, x, w, b, n, in, out); });
  }
  void linear_fwd_grouped(float* y, float* act, const float* x, const LinearGroup* g, int count,
                          int in, int out) override {
    std::vector<LinearGroup> gs(g, g + count);
    run("linear_fwd_grouped",
        [=, this] { in_->linear_fwd_grouped(y, act, x, gs.data(), count, in, out); });
  }
  void linear_bwd_grouped(float* dx, const float* dy, const float* x, const LinearGradGroup* g,
                          int count, int in, int out) override {
    std::vector<LinearGradGroup> gs(g, g + count);
    run("linear_bwd_grouped",
        [=, this] { in_->linear_bwd_grouped(dx, dy, x, gs.data(), count, in, out); });
  }

  // ---- values read back -------------------------------------------------------
  double sum(const float* x, size_t n) override {
    host("sum", HostKind::Read);
    return in_->sum(x, n);
  }
  double sum_squares(const float* x, size_t n) override {
    host("sum_squares", HostKind::Read);
    return in_->sum_squares(x, n);
  }
  void sum_squares_multi(double* out, const float* const* xs, const size_t* ns,
                         size_t count) override {
    host("sum_squares_multi", HostKind::Read);
    in_->sum_squares_multi(out, xs, ns, count);
  }
  bool all_finite(const float* x, size_t n) override {
    host("all_finite", HostKind::Read);
    return in_->all_finite(x, n);
  }
  AuxLosses router_aux_fwd(const float* probs, const float* lse, const int32_t* demand,
                           const RouterArgs& a) override {
    host("router_aux_fwd", HostKind::Read);
    return in_->router_aux_fwd(probs, lse, demand, a);
  }

  // ---- stream-ordered results ---------------------------------------------------
  // Device work: the wrapped backend's own defaults may read to the host
  // inside f; what the wrapping observes is the op as issued.
  void sum_to(double* dst, const float* x, size_t n) override {
    run("sum_to", [=, this] { in_->sum_to(dst, x, n); });
  }
  void router_aux_sums(double* dst, const float* probs, const float* lse,
                       const RouterArgs& a) override {
    run("router_aux_sums", [=, this] { in_->router_aux_sums(dst, probs, lse, a); });
  }
  void routing_hash(uint64_t* dst, const int32_t* expert, const int32_t* pos, int n,
                    int S) override {
    run("routing_hash", [=, this] { in_->routing_hash(dst, expert, pos, n, S); });
  }
  // A wait on a GPU (the deferred error records are read back).
  void check_errors() override {
    host("check_errors", HostKind::Read);
    in_->check_errors();
  }
  int64_t host_reads() const override { return in_->host_reads(); }

  // ---- graphs: the wrapped backend's -------------------------------------------
  bool graphs_available() const override { return in_->graphs_available(); }
  void capture_begin() override { in_->capture_begin(); }
  std::unique_ptr<Graph> capture_end() override { return in_->capture_end(); }
  void graph_launch(Graph& g) override {
    run("graph_launch", [&g, this] { in_->graph_launch(g); });
  }

  void round_half(float* x, size_t n, HalfType t) override {
    run("round_half", [=, this] { in_->round_half(x, n, t); });
  }

  // ---- transformer ops --------------------------------------------------------
  void embedding_fwd(float* x, const int32_t* tokens, const float* wte, const float* wpe, int B,
                     int T, int d) override {
    run("embedding_fwd", [=, this] { in_->embedding_fwd(x, tokens, wte, wpe, B, T, d); });
  }
  void embedding_bwd(float* dwte, float* dwpe, const float* dx, const int32_t* tokens, int B, int T,
                     int d) override {
    run("embedding_bwd", [=, this] { in_->embedding_bwd(dwte, dwpe, dx, tokens, B, T, d); });
  }
  void layernorm_fwd(float* y, float* mean, float* rstd, const float* x, const float* w,
                     const float* b, int N, int d) override {
    run("layernorm_fwd", [=, this] { in_->layernorm_fwd(y, mean, rstd, x, w, b, N, d); });
  }
  void add_layernorm_fwd(float* x_out, float* y, float* mean, float* rstd, const float* x,
                         const float* delta, const float* w, const float* b, int N,
                         int d) override {
    run("add_layernorm_fwd",
        [=, this] { in_->add_layernorm_fwd(x_out, y, mean, rstd, x, delta, w, b, N, d); });
  }
  void add_layernorm_fwd_half(float* x_out, float* y, float* mean, float* rstd, const float* x,
                              const float* delta, const float* w, const float* b, int N, int d,
                              HalfType t) override {
    run("add_layernorm_fwd_half", [=, this] {
      in_->add_layernorm_fwd_half(x_out, y, mean, rstd, x, delta, w, b, N, d, t);
    });
  }
  void layernorm_bwd(float* dx, float* dw, float* db, const float* dy, const float* x,
                     const float* mean, const float* rstd, const float* w, int N, int d) override {
    run("layernorm_bwd", [=, this] { in_->layernorm_bwd(dx, dw, db, dy, x, mean, rstd, w, N, d); });
  }
  void gelu_fwd(float* y, const float* x, size_t n) override {
    run("gelu_fwd", [=, this] { in_->gelu_fwd(y, x, n); });
  }
  void gelu_bwd(float* dx, const float* x, const float* dy, size_t n) override {
    run("gelu_bwd", [=, this] { in_->gelu_bwd(dx, x, dy, n); });
  }
  void gelu_fwd_half(float* y, float* x, size_t n, HalfType t) override {
    run("gelu_fwd_half", [=, this] { in_->gelu_fwd_half(y, x, n, t); });
  }
  void gelu_bwd_half(float* dx, const float* x, float* dy, size_t n, HalfType t) override {
    run("gelu_bwd_half", [=, this] { in_->gelu_bwd_half(dx, x, dy, n, t); });
  }
  void attention_fwd(float* out, float* att, const float* qkv, int B, int T, int H,
                     int d) override {
    run("attention_fwd", [=, this] { in_->attention_fwd(out, att, qkv, B, T, H, d); });
  }
  void attention_bwd(float* dqkv, float* datt, const float* dout, const float* qkv,
                     const float* out, const float* att, int B, int T, int H, int d) override {
    run("attention_bwd",
        [=, this] { in_->attention_bwd(dqkv, datt, dout, qkv, out, att, B, T, H, d); });
  }
  AttentionBuffers attention_buffers(int B, int T, int H) const override {
    return in_->attention_buffers(B, T, H);
  }
  void crossentropy_fwd(float* loss, float* probs, const float* logits, const int32_t* targets,
                        int N, int V) override {
    run("crossentropy_fwd",
        [=, this] { in_->crossentropy_fwd(loss, probs, logits, targets, N, V); });
  }
  void crossentropy_bwd(float* dlogits, const float* probs, const int32_t* targets, float dscale,
                        int N, int V) override {
    run("crossentropy_bwd",
        [=, this] { in_->crossentropy_bwd(dlogits, probs, targets, dscale, N, V); });
  }

  // ---- mixture of experts ----------------------------------------------------
  void router_fwd(float* probs, float* lse, int32_t* expert, float* gate, const float* logits,
                  const RouterArgs& a) override {
    run("router_fwd", [=, this] { in_->router_fwd(probs, lse, expert, gate, logits, a); });
  }
  void moe_assign(int32_t* pos, int32_t* count, int32_t* demand, const int32_t* expert, int N,
                  int S, int E, int capacity) override {
    run("moe_assign",
        [=, this] { in_->moe_assign(pos, count, demand, expert, N, S, E, capacity); });
  }
  void moe_permute(float* xp, const float* x, const int32_t* expert, const int32_t* pos,
                   const int32_t* offset, int N, int S, int d) override {
    run("moe_permute", [=, this] { in_->moe_permute(xp, x, expert, pos, offset, N, S, d); });
  }
  void moe_permute_bwd(float* dx, const float* dxp, const int32_t* expert, const int32_t* pos,
                       const int32_t* offset, int N, int S, int d) override {
    run("moe_permute_bwd",
        [=, this] { in_->moe_permute_bwd(dx, dxp, expert, pos, offset, N, S, d); });
  }
  void moe_unpermute(float* y, const float* yp, const float* gate, const int32_t* expert,
                     const int32_t* pos, const int32_t* offset, int N, int S, int d) override {
    run("moe_unpermute",
        [=, this] { in_->moe_unpermute(y, yp, gate, expert, pos, offset, N, S, d); });
  }
  void moe_unpermute_bwd(float* dyp, float* dgate, const float* dy, const float* yp,
                         const float* gate, const int32_t* expert, const int32_t* pos,
                         const int32_t* offset, int N, int S, int d) override {
    run("moe_unpermute_bwd", [=, this] {
      in_->moe_unpermute_bwd(dyp, dgate, dy, yp, gate, expert, pos, offset, N, S, d);
    });
  }
  void router_bwd(float* dlogits, const float* dgate, const float* probs, const float* lse,
                  const int32_t* expert, const float* gate, const int32_t* demand, float aux_coef,
                  float z_coef, const RouterArgs& a) override {
    run("router_bwd", [=, this] {
      in_->router_bwd(dlogits, dgate, probs, lse, expert, gate, demand, aux_coef, z_coef, a);
    });
  }

  // ---- optimizer -------------------------------------------------------------
  void adamw(float* p, const float* g, float* m, float* v, size_t n, const AdamArgs& a) override {
    run("adamw", [=, this] { in_->adamw(p, g, m, v, n, a); });
  }
  void adamw_multi(const AdamTensor* ts, size_t count, const AdamArgs& a) override {
    std::vector<AdamTensor> t(ts, ts + count);
    run("adamw_multi", [=, this] { in_->adamw_multi(t.data(), t.size(), a); });
  }
  // The setting changes at once (the value returned) and, as device work, is
  // also run(): a recording replays it around the same ops.
  bool set_fp32_gemms(bool on) override {
    const bool prev = in_->set_fp32_gemms(on);
    setting("set_fp32_gemms", [=, this] { in_->set_fp32_gemms(on); });
    return prev;
  }

 protected:
  // The hooks. Defaults: run f now; nothing before a host op.
  virtual void run(const char* op, std::function<void()> f) {
    (void)op;
    f();
  }
  virtual void host(const char* op, HostKind kind) {
    (void)op;
    (void)kind;
  }
  // A backend setting already applied to the wrapped backend; f applies it
  // again (a recording keeps it, everything else ignores it).
  virtual void setting(const char* op, std::function<void()> f) {
    (void)op;
    (void)f;
  }

 private:
  std::unique_ptr<Backend> in_;
};

}  // namespace m6
