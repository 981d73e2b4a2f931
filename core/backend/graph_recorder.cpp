// RecordingBackend: the CPU twin of CUDA graphs. Every op is forwarded to the
// wrapped backend; between capture_begin and capture_end an op is recorded
// as a closure over its arguments (by value: the pointers, sizes and scalars
// a CUDA graph node keeps, and copies of the small host tables an op reads)
// and not run. graph_launch runs the closures in order. The model's captured
// code path is thereby tested on any machine for what a CUDA graph demands:
// no host read, allocation or host-to-device copy inside the capture, and
// nothing that the host would have to redo on each replay.
#include <functional>
#include <utility>
#include <vector>

#include "core/backend/backend.h"
#include "core/util/error.h"
#include "core/util/log.h"

namespace m6 {
namespace {

class RecordedGraph final : public Backend::Graph {
 public:
  std::vector<std::function<void()>> ops;
};

class RecordingBackend final : public Backend {
 public:
  explicit RecordingBackend(std::unique_ptr<Backend> inner) : in_(std::move(inner)) {
    M6_CHECK(in_ != nullptr, "recording backend: no backend to wrap");
  }
  std::string name() const override { return in_->name() + "+graphs"; }

  // ---- memory: never inside a capture -----------------------------------------
  void* alloc(size_t bytes) override {
    forbid("alloc");
    return in_->alloc(bytes);
  }
  void release(void* p) override {
    forbid("release");
    in_->release(p);
  }
  void to_device(void* dst, const void* src, size_t bytes) override {
    forbid("to_device (a host-to-device copy)");
    in_->to_device(dst, src, bytes);
  }
  void to_host(void* dst, const void* src, size_t bytes) override {
    read("to_host");
    in_->to_host(dst, src, bytes);
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    op([=, this] { in_->copy(dst, src, bytes); });
  }
  void zero(void* p, size_t bytes) override {
    op([=, this] { in_->zero(p, bytes); });
  }
  void sync() override {
    read("sync");
    in_->sync();
  }
  bool has_host_arena() const override { return in_->has_host_arena(); }
  void* alloc_host(size_t bytes) override {
    forbid("alloc_host");
    return in_->alloc_host(bytes);
  }
  void release_host(void* p) override {
    forbid("release_host");
    in_->release_host(p);
  }
  void copy_async(int slot, void* dst, const void* src, size_t bytes) override {
    forbid("copy_async");
    in_->copy_async(slot, dst, src, bytes);
  }
  void copy_async_wait(int slot) override {
    forbid("copy_async_wait");
    in_->copy_async_wait(slot);
  }
  void copy_async_sync(int slot) override {
    forbid("copy_async_sync");
    in_->copy_async_sync(slot);
  }
  MemoryStats memory_stats() const override { return in_->memory_stats(); }
  void reset_memory_peaks() override { in_->reset_memory_peaks(); }

  // ---- dense algebra ----------------------------------------------------------
  void gemm(const GemmArgs& g) override {
    op([=, this] { in_->gemm(g); });
  }
  void add_bias(float* y, const float* b, int n, int c) override {
    op([=, this] { in_->add_bias(y, b, n, c); });
  }
  void bias_grad(float* db, const float* dy, int n, int c) override {
    op([=, this] { in_->bias_grad(db, dy, n, c); });
  }
  void add(float* y, const float* a, const float* b, size_t n) override {
    op([=, this] { in_->add(y, a, b, n); });
  }
  void axpy(float* y, float alpha, const float* x, size_t n) override {
    op([=, this] { in_->axpy(y, alpha, x, n); });
  }
  void scale(float* x, float s, size_t n) override {
    op([=, this] { in_->scale(x, s, n); });
  }
  void linear_fwd(float* y, float* act, const float* x, const float* w, const float* b, int n,
                  int in, int out) override {
    op([=, this] { in_->linear_fwd(y, act, x, w, b, n, in, out); });
  }
  void linear_fwd_grouped(float* y, float* act, const float* x, const LinearGroup* g, int count,
                          int in, int out) override {
    std::vector<LinearGroup> gs(g, g + count);
    op([=, this] { in_->linear_fwd_grouped(y, act, x, gs.data(), count, in, out); });
  }
  void linear_bwd_grouped(float* dx, const float* dy, const float* x, const LinearGradGroup* g,
                          int count, int in, int out) override {
    std::vector<LinearGradGroup> gs(g, g + count);
    op([=, this] { in_->linear_bwd_grouped(dx, dy, x, gs.data(), count, in, out); });
  }

  // ---- values read back: counted, never inside a capture -----------------------
  double sum(const float* x, size_t n) override {
    read("sum");
    return in_->sum(x, n);
  }
  double sum_squares(const float* x, size_t n) override {
    read("sum_squares");
    return in_->sum_squares(x, n);
  }
  void sum_squares_multi(double* out, const float* const* xs, const size_t* ns,
                         size_t count) override {
    read("sum_squares_multi");
    in_->sum_squares_multi(out, xs, ns, count);
  }
  bool all_finite(const float* x, size_t n) override {
    read("all_finite");
    return in_->all_finite(x, n);
  }
  AuxLosses router_aux_fwd(const float* probs, const float* lse, const int32_t* demand,
                           const RouterArgs& a) override {
    read("router_aux_fwd");
    return in_->router_aux_fwd(probs, lse, demand, a);
  }

  // ---- stream-ordered results -------------------------------------------------
  // The wrapped backend's own defaults read to the host; they run at replay
  // (from the closure), so in the capture they are stream-ordered ops. A
  // read made by a closure at replay is not one the host waits for inside
  // the captured code, so it is not counted.
  void sum_to(double* dst, const float* x, size_t n) override {
    op([=, this] { in_->sum_to(dst, x, n); });
  }
  void router_aux_sums(double* dst, const float* probs, const float* lse,
                       const RouterArgs& a) override {
    op([=, this] { in_->router_aux_sums(dst, probs, lse, a); });
  }
  void routing_hash(uint64_t* dst, const int32_t* expert, const int32_t* pos, int n,
                    int S) override {
    op([=, this] { in_->routing_hash(dst, expert, pos, n, S); });
  }
  // A wait on a GPU (the deferred error records are read back): counted.
  void check_errors() override {
    read("check_errors");
    in_->check_errors();
  }
  int64_t host_reads() const override { return reads_; }

  // ---- graphs -----------------------------------------------------------------
  bool graphs_available() const override { return true; }
  void capture_begin() override {
    M6_CHECK(!capturing_, "capture_begin: a capture is already open");
    capturing_ = true;
    failed_.clear();
    recording_ = std::make_unique<RecordedGraph>();
  }
  std::unique_ptr<Graph> capture_end() override {
    M6_CHECK(capturing_, "capture_end without capture_begin");
    capturing_ = false;
    if (!failed_.empty()) {
      log_warn(fmt("graph capture failed (", failed_, "); the step runs without a graph"));
      recording_.reset();
      return nullptr;
    }
    return std::move(recording_);
  }
  void graph_launch(Graph& g) override {
    M6_CHECK(!capturing_, "graph_launch inside a capture");
    auto* r = dynamic_cast<RecordedGraph*>(&g);
    M6_CHECK(r != nullptr, "graph_launch: not a graph of this backend");
    for (const auto& f : r->ops) f();
  }

  void round_half(float* x, size_t n, HalfType t) override {
    op([=, this] { in_->round_half(x, n, t); });
  }

  // ---- transformer ops --------------------------------------------------------
  void embedding_fwd(float* x, const int32_t* tokens, const float* wte, const float* wpe, int B,
                     int T, int d) override {
    op([=, this] { in_->embedding_fwd(x, tokens, wte, wpe, B, T, d); });
  }
  void embedding_bwd(float* dwte, float* dwpe, const float* dx, const int32_t* tokens, int B, int T,
                     int d) override {
    op([=, this] { in_->embedding_bwd(dwte, dwpe, dx, tokens, B, T, d); });
  }
  void layernorm_fwd(float* y, float* mean, float* rstd, const float* x, const float* w,
                     const float* b, int N, int d) override {
    op([=, this] { in_->layernorm_fwd(y, mean, rstd, x, w, b, N, d); });
  }
  void add_layernorm_fwd(float* x_out, float* y, float* mean, float* rstd, const float* x,
                         const float* delta, const float* w, const float* b, int N,
                         int d) override {
    op([=, this] { in_->add_layernorm_fwd(x_out, y, mean, rstd, x, delta, w, b, N, d); });
  }
  void layernorm_bwd(float* dx, float* dw, float* db, const float* dy, const float* x,
                     const float* mean, const float* rstd, const float* w, int N, int d) override {
    op([=, this] { in_->layernorm_bwd(dx, dw, db, dy, x, mean, rstd, w, N, d); });
  }
  void gelu_fwd(float* y, const float* x, size_t n) override {
    op([=, this] { in_->gelu_fwd(y, x, n); });
  }
  void gelu_bwd(float* dx, const float* x, const float* dy, size_t n) override {
    op([=, this] { in_->gelu_bwd(dx, x, dy, n); });
  }
  void attention_fwd(float* out, float* att, const float* qkv, int B, int T, int H,
                     int d) override {
    op([=, this] { in_->attention_fwd(out, att, qkv, B, T, H, d); });
  }
  void attention_bwd(float* dqkv, float* datt, const float* dout, const float* qkv,
                     const float* out, const float* att, int B, int T, int H, int d) override {
    op([=, this] { in_->attention_bwd(dqkv, datt, dout, qkv, out, att, B, T, H, d); });
  }
  AttentionBuffers attention_buffers(int B, int T, int H) const override {
    return in_->attention_buffers(B, T, H);
  }
  void crossentropy_fwd(float* loss, float* probs, const float* logits, const int32_t* targets,
                        int N, int V) override {
    op([=, this] { in_->crossentropy_fwd(loss, probs, logits, targets, N, V); });
  }
  void crossentropy_bwd(float* dlogits, const float* probs, const int32_t* targets, float dscale,
                        int N, int V) override {
    op([=, this] { in_->crossentropy_bwd(dlogits, probs, targets, dscale, N, V); });
  }

  // ---- mixture of experts ----------------------------------------------------
  void router_fwd(float* probs, float* lse, int32_t* expert, float* gate, const float* logits,
                  const RouterArgs& a) override {
    op([=, this] { in_->router_fwd(probs, lse, expert, gate, logits, a); });
  }
  void moe_assign(int32_t* pos, int32_t* count, int32_t* demand, const int32_t* expert, int N,
                  int S, int E, int capacity) override {
    op([=, this] { in_->moe_assign(pos, count, demand, expert, N, S, E, capacity); });
  }
  void moe_permute(float* xp, const float* x, const int32_t* expert, const int32_t* pos,
                   const int32_t* offset, int N, int S, int d) override {
    op([=, this] { in_->moe_permute(xp, x, expert, pos, offset, N, S, d); });
  }
  void moe_permute_bwd(float* dx, const float* dxp, const int32_t* expert, const int32_t* pos,
                       const int32_t* offset, int N, int S, int d) override {
    op([=, this] { in_->moe_permute_bwd(dx, dxp, expert, pos, offset, N, S, d); });
  }
  void moe_unpermute(float* y, const float* yp, const float* gate, const int32_t* expert,
                     const int32_t* pos, const int32_t* offset, int N, int S, int d) override {
    op([=, this] { in_->moe_unpermute(y, yp, gate, expert, pos, offset, N, S, d); });
  }
  void moe_unpermute_bwd(float* dyp, float* dgate, const float* dy, const float* yp,
                         const float* gate, const int32_t* expert, const int32_t* pos,
                         const int32_t* offset, int N, int S, int d) override {
    op([=, this] {
      in_->moe_unpermute_bwd(dyp, dgate, dy, yp, gate, expert, pos, offset, N, S, d);
    });
  }
  void router_bwd(float* dlogits, const float* dgate, const float* probs, const float* lse,
                  const int32_t* expert, const float* gate, const int32_t* demand, float aux_coef,
                  float z_coef, const RouterArgs& a) override {
    op([=, this] {
      in_->router_bwd(dlogits, dgate, probs, lse, expert, gate, demand, aux_coef, z_coef, a);
    });
  }

  // ---- optimizer -------------------------------------------------------------
  void adamw(float* p, const float* g, float* m, float* v, size_t n, const AdamArgs& a) override {
    op([=, this] { in_->adamw(p, g, m, v, n, a); });
  }
  void adamw_multi(const AdamTensor* ts, size_t count, const AdamArgs& a) override {
    std::vector<AdamTensor> t(ts, ts + count);
    op([=, this] { in_->adamw_multi(t.data(), t.size(), a); });
  }
  // The setting is the wrapped backend's at once (the value returned) and is
  // recorded, so a replay sets it around the same ops again.
  bool set_fp32_gemms(bool on) override {
    const bool prev = in_->set_fp32_gemms(on);
    if (capturing_) recording_->ops.push_back([=, this] { in_->set_fp32_gemms(on); });
    return prev;
  }

 private:
  template <class F>
  void op(F&& f) {
    if (capturing_)
      recording_->ops.emplace_back(std::forward<F>(f));
    else
      f();
  }
  // An op a capture may not contain: the capture is abandoned (capture_end
  // returns nullptr) and the caller gets an error, as from a CUDA capture.
  void forbid(const char* what) {
    if (!capturing_) return;
    if (failed_.empty()) failed_ = what;
    throw Error(fmt(what, " inside a graph capture (a captured step must not read to the host, "
                          "allocate or copy from the host)"));
  }
  void read(const char* what) {
    forbid(what);
    ++reads_;
  }

  std::unique_ptr<Backend> in_;
  bool capturing_ = false;
  std::unique_ptr<RecordedGraph> recording_;
  std::string failed_;  // the first forbidden op of the open capture
  int64_t reads_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_recording_backend(std::unique_ptr<Backend> inner) {
  return std::make_unique<RecordingBackend>(std::move(inner));
}

}  // namespace m6
