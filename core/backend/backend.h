// The Backend: device memory plus every op the model, the MoE layer and the
// optimizer need, on raw device pointers. The model, the trainer and the MoE
// logic are written once against this interface; CpuBackend (core/backend/cpu)
// is the readable reference, the CUDA backend (cuda/) the fast one, and every
// CUDA op is tested against its CPU twin.
//
// Conventions (all ops):
//  - Tensors are float32, row-major, contiguous unless a leading dimension is
//    given; token ids and routing indices are int32.
//  - "+=" in a comment means the op accumulates into its output (gradients of
//    parameters and of the residual stream); otherwise the output is overwritten.
//  - Shapes are written next to each pointer: x[N,d] is N rows of d floats.
//  - Ops returning a double synchronise and bring the scalar to the host.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/util/half_round.h"

namespace m6 {

enum class Trans { No, Yes };

// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, row-major, repeated
// `batch` times with the given element strides between batch entries.
struct GemmArgs {
  Trans trans_a = Trans::No, trans_b = Trans::No;
  int m = 0, n = 0, k = 0;
  float alpha = 1.0f, beta = 0.0f;
  const float* a = nullptr; int lda = 0; int64_t stride_a = 0;
  const float* b = nullptr; int ldb = 0; int64_t stride_b = 0;
  float* c = nullptr;       int ldc = 0; int64_t stride_c = 0;
  int batch = 1;
};

// Routing of one MoE layer over N tokens (DESIGN.md section 3).
struct RouterArgs {
  int n = 0;           // tokens
  int e = 0;           // experts
  int groups = 1;      // 1 for top-k; k prototypes for expert prototyping
  int top_k = 1;       // experts chosen per group (top-k: top_k; prototypes: 1)
  bool normalize = false;  // renormalise gates over the chosen experts (top-k only)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // The backend this one wraps (ForwardingBackend: the op profiler, the
  // recording twin), nullptr for a backend of its own.
  virtual Backend* wrapped() { return nullptr; }

  // ---- memory ---------------------------------------------------------------
  virtual void* alloc(size_t bytes) = 0;  // zero-filled
  virtual void release(void* p) = 0;
  virtual void to_device(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void to_host(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // device to device
  virtual void zero(void* p, size_t bytes) = 0;
  virtual void sync() = 0;

  // Host arena (granular offload, DESIGN.md section 5): host memory the device
  // reaches by the copies above (pinned on CUDA; a separately counted heap on
  // the CPU backend, so the offload logic runs, and is tested, unchanged).
  // zero-filled. A backend without one refuses offload configs.
  virtual bool has_host_arena() const { return false; }
  virtual void* alloc_host(size_t bytes);
  virtual void release_host(void* p);
  // Asynchronous copies between the host arena and the device (offload):
  // copy_async queues a copy under one of kCopySlots slots, ordered after the
  // work issued so far and overlapped with the work issued after it (a side
  // copy stream on CUDA). copy_async_wait(slot) orders the work issued next
  // after every copy queued under that slot; copy_async_sync(slot) blocks the
  // host until they are done. Until then the source must stay unchanged and
  // the destination unread. Slots 0 and 1: the offload.params weight window
  // (core/model); 2 and 3: the host optimizer's staging (core/train).
  // Default: a synchronous copy, nothing to wait for.
  static constexpr int kCopySlots = 4;
  virtual void copy_async(int slot, void* dst, const void* src, size_t bytes) {
    (void)slot;
    copy(dst, src, bytes);
  }
  virtual void copy_async_wait(int slot) { (void)slot; }
  virtual void copy_async_sync(int slot) { (void)slot; }

  // Bytes held in each arena now and at most since creation (the high-water
  // mark metrics.jsonl reports as mem_peak_bytes). Zeros when not tracked.
  // allocs: allocations made in both arenas since creation (a training step
  // makes none: every buffer comes from arenas sized at start-up).
  struct MemoryStats {
    int64_t device_live = 0, device_peak = 0, host_live = 0, host_peak = 0;
    int64_t allocs = 0;
  };
  virtual MemoryStats memory_stats() const { return {}; }
  // Restarts the high-water marks at the bytes held now (after a start-up
  // probe whose buffers are released before the model is allocated).
  virtual void reset_memory_peaks() {}

  // ---- dense algebra ----------------------------------------------------------
  virtual void gemm(const GemmArgs& g) = 0;
  virtual void add_bias(float* y, const float* b, int n, int c) = 0;        // y[n,c] += b[c]
  virtual void bias_grad(float* db, const float* dy, int n, int c) = 0;     // db[c] += sum_rows dy[n,c]
  virtual void add(float* y, const float* a, const float* b, size_t n) = 0; // y = a + b
  virtual void axpy(float* y, float alpha, const float* x, size_t n) = 0;   // y += alpha x
  virtual void scale(float* x, float s, size_t n) = 0;                      // x *= s
  // The linear layer: y[n,out] = x[n,in] w[out,in]^T + b[out] (b may be null);
  // with `act` non-null also act[n,out] = gelu_tanh(y), y keeping the
  // pre-activation for backward. This default (gemm, add_bias, gelu_fwd) is
  // the reference; the CUDA backend fuses the bias and the GELU into the GEMM
  // (cuBLASLt epilogues) where the shape allows.
  virtual void linear_fwd(float* y, float* act, const float* x, const float* w, const float* b,
                          int n, int in, int out) {
    GemmArgs g;
    g.trans_b = Trans::Yes;
    g.m = n, g.n = out, g.k = in;
    g.a = x, g.lda = in;
    g.b = w, g.ldb = in;
    g.c = y, g.ldc = out;
    gemm(g);
    if (b) add_bias(y, b, n, out);
    if (act) gelu_fwd(act, y, static_cast<size_t>(n) * out);
  }
  // One linear layer per group of rows (the experts of an MoE layer, each
  // over its block): group i maps rows [row, row + rows) of x[., in] to the
  // same rows of y[., out] (and act) through w [out,in] and b [out] (may be
  // null), as linear_fwd. Rows outside every group are left alone. This
  // default (linear_fwd per group) is the reference; the CUDA backend runs
  // every group's GEMM in one grouped cuBLAS call, then one bias/GELU kernel.
  struct LinearGroup {
    const float* w;
    const float* b;
    int64_t row;
    int rows;
  };
  virtual void linear_fwd_grouped(float* y, float* act, const float* x, const LinearGroup* g,
                                  int count, int in, int out) {
    for (int i = 0; i < count; ++i) {
      if (g[i].rows <= 0) continue;
      const size_t o = static_cast<size_t>(g[i].row);
      linear_fwd(y + o * out, act ? act + o * out : nullptr, x + o * in, g[i].w, g[i].b,
                 g[i].rows, in, out);
    }
  }
  // The linear layer's backward: dx[n,in] = dy[n,out] w (or += with
  // accumulate_dx; dx may be null), dw[out,in] += dy^T x, db[out] += the
  // column sums of dy (db may be null). The sequence every backend runs.
  void linear_bwd(float* dx, bool accumulate_dx, float* dw, float* db, const float* dy,
                  const float* x, const float* w, int n, int in, int out) {
    if (n == 0) return;
    if (dx) {
      GemmArgs g;
      g.m = n, g.n = in, g.k = out;
      g.a = dy, g.lda = out;
      g.b = w, g.ldb = in;
      g.c = dx, g.ldc = in;
      g.beta = accumulate_dx ? 1.0f : 0.0f;
      gemm(g);
    }
    GemmArgs g;
    g.trans_a = Trans::Yes;
    g.m = out, g.n = in, g.k = n;
    g.a = dy, g.lda = out;
    g.b = x, g.ldb = in;
    g.c = dw, g.ldc = in;
    g.beta = 1.0f;
    gemm(g);
    if (db) bias_grad(db, dy, n, out);
  }
  // The backward of linear_fwd_grouped: for group i over rows [row, row +
  // rows), dx rows = dy rows w_i (overwrite), dw_i += dy^T x, db_i += column
  // sums of dy (db may be null); rows outside every group are left alone.
  // This default (linear_bwd per group) is the reference; the CUDA backend
  // runs the groups' dx GEMMs in one grouped cuBLAS call, their dw GEMMs in
  // another, then one bias-gradient kernel.
  struct LinearGradGroup {
    const float* w;
    float* dw;
    float* db;
    int64_t row;
    int rows;
  };
  virtual void linear_bwd_grouped(float* dx, const float* dy, const float* x,
                                  const LinearGradGroup* g, int count, int in, int out) {
    for (int i = 0; i < count; ++i) {
      if (g[i].rows <= 0) continue;
      const size_t o = static_cast<size_t>(g[i].row);
      linear_bwd(dx + o * in, false, g[i].dw, g[i].db, dy + o * out, x + o * in, g[i].w,
                 g[i].rows, in, out);
    }
  }
  virtual double sum(const float* x, size_t n) = 0;
  virtual double sum_squares(const float* x, size_t n) = 0;
  // out[i] = sum_squares(xs[i], ns[i]) for count tensors at once (the
  // gradient norm over every chunk: one host round trip on the GPU instead
  // of one per chunk). This default, one sum_squares per tensor, is the reference.
  virtual void sum_squares_multi(double* out, const float* const* xs, const size_t* ns,
                                 size_t count) {
    for (size_t i = 0; i < count; ++i) out[i] = sum_squares(xs[i], ns[i]);
  }
  virtual bool all_finite(const float* x, size_t n) = 0;

  // ---- stream-ordered results (no host read inside a step) -------------------
  // The ops above that return a value synchronise. Inside a training
  // micro-batch the model instead leaves its results in device memory and
  // reads them all at the end of the step (Model::collect_stats):
  //  - sum_to: *dst (one device double) = sum(x, n), the same value as sum();
  //  - router_aux_sums: dst[0..E) = sum_n probs[n,e], dst[E] = sum lse^2 (the
  //    sums of router_aux_fwd; router_aux_combine finishes them on the host);
  //  - routing_hash: *dst (a device uint64) = MoeStats::routing of these
  //    slots (core/model/moe.h), a wrapping sum of per-slot hashes, so any
  //    summation order gives the same bits.
  // Defaults: through the synchronous ops (the reference).
  virtual void sum_to(double* dst, const float* x, size_t n);
  virtual void router_aux_sums(double* dst, const float* probs, const float* lse,
                               const RouterArgs& a);
  virtual void routing_hash(uint64_t* dst, const int32_t* expert, const int32_t* pos, int n,
                            int S);
  // Bad indices seen by device kernels (a target >= vocab, an expert id out
  // of range) are reported without a host read per op on a GPU: they are
  // kept on the device and thrown here, which the trainer calls at the end
  // of every step (and Model::collect_stats before it reads). The CPU
  // backend throws at the op itself; nothing is deferred there.
  virtual void check_errors() {}
  // Host reads (to_host, the value-returning ops, sync) since creation: what
  // the step's "no host sync" claims are tested by (README: GPU performance).
  virtual int64_t host_reads() const { return -1; }  // -1: not counted

  // ---- graphs (static-shape replay) -------------------------------------------
  // capture_begin .. capture_end records the ops issued in between without
  // running them; graph_launch runs the recording again, with the arguments
  // (pointers, sizes, scalars) it was recorded with. Between begin and end
  // no host read, allocation or host-to-device copy may be issued (each is
  // an error, and the capture is abandoned). CUDA: CUDA graphs on the
  // compute stream. The CPU reference records closures, so the same model
  // code path is tested for replay on any machine.
  class Graph {
   public:
    virtual ~Graph() = default;
  };
  virtual bool graphs_available() const { return false; }
  virtual void capture_begin();
  // nullptr when the capture failed (the error is logged): run eagerly.
  virtual std::unique_ptr<Graph> capture_end();
  virtual void graph_launch(Graph& g);
  // ---- timestamps (the op profiler, log.profile) ----------------------------
  // mark() records a timestamp in stream order and returns its id (CUDA: an
  // event on the compute stream; this default, the host clock, is right for
  // a backend whose ops are synchronous, as the CPU's); once the device has
  // passed both (after a sync), mark_ms(a, b) is the time between them.
  // marks_reset() forgets every mark (their ids are reused).
  virtual int mark();
  virtual double mark_ms(int a, int b);
  virtual void marks_reset();

  // x[i] = round_half(x[i], t): the nearest bf16/fp16 value, ties to even
  // (core/util/half_round.h), overflow to inf. The mixed-precision compute
  // path (precision.compute) applies it where a tensor is stored in half.
  virtual void round_half(float* x, size_t n, HalfType t) = 0;

  // ---- transformer ops --------------------------------------------------------
  // x[b*T+t,:] = wte[tokens[b*T+t],:] + wpe[t,:]
  virtual void embedding_fwd(float* x, const int32_t* tokens, const float* wte, const float* wpe,
                             int B, int T, int d) = 0;
  // dwte += scatter of dx by token; dwpe[t] += sum_b dx[b,t]
  virtual void embedding_bwd(float* dwte, float* dwpe, const float* dx, const int32_t* tokens,
                             int B, int T, int d) = 0;
  // y[N,d] = (x - mean) * rstd * w + b; mean[N], rstd[N] saved for backward; eps 1e-5
  virtual void layernorm_fwd(float* y, float* mean, float* rstd, const float* x, const float* w,
                             const float* b, int N, int d) = 0;
  // The residual add and the LayerNorm after it: x_out[N,d] = x + delta, then
  // layernorm_fwd of x_out into y, mean, rstd. This default (add, then
  // layernorm_fwd) is the reference; the CUDA backend does both in one pass
  // over each row.
  virtual void add_layernorm_fwd(float* x_out, float* y, float* mean, float* rstd, const float* x,
                                 const float* delta, const float* w, const float* b, int N,
                                 int d) {
    add(x_out, x, delta, static_cast<size_t>(N) * d);
    layernorm_fwd(y, mean, rstd, x_out, w, b, N, d);
  }
  // add_layernorm_fwd where activations are stored in half (precision.
  // compute): x_out = round(x + delta), then the LayerNorm of x_out into y,
  // y rounded (mean and rstd stay fp32). This default (add, round_half,
  // layernorm_fwd, round_half) is the reference; the CUDA backend does it in
  // the one pass of add_layernorm_fwd.
  virtual void add_layernorm_fwd_half(float* x_out, float* y, float* mean, float* rstd,
                                      const float* x, const float* delta, const float* w,
                                      const float* b, int N, int d, HalfType t);
  // dx[N,d] +=, dw[d] +=, db[d] +=
  virtual void layernorm_bwd(float* dx, float* dw, float* db, const float* dy, const float* x,
                             const float* mean, const float* rstd, const float* w, int N,
                             int d) = 0;
  // y = gelu_tanh(x) ; dx = gelu_tanh'(x) * dy (overwrite)
  virtual void gelu_fwd(float* y, const float* x, size_t n) = 0;
  virtual void gelu_bwd(float* dx, const float* x, const float* dy, size_t n) = 0;
  // The GELU where activations are stored in half (precision.compute):
  // gelu_fwd_half rounds x in place, then y = round(gelu(x)); gelu_bwd_half
  // rounds dy in place, then dx = round(gelu'(x) * dy) (dx may alias dy).
  // These defaults (round_half, the op, round_half) are the reference; the
  // CUDA backend does each in one pass over the elements.
  virtual void gelu_fwd_half(float* y, float* x, size_t n, HalfType t);
  virtual void gelu_bwd_half(float* dx, const float* x, float* dy, size_t n, HalfType t);
  // Causal multi-head attention on fused qkv[B,T,3d] (order q,k,v; head h is
  // columns h*dh..(h+1)*dh of each), scale 1/sqrt(dh). out[B,T,d]; `att`
  // receives what backward needs, in the layout the backend chose
  // (attention_buffers): the CPU reference keeps the softmax probabilities
  // [B,H,T,T] (zero above the diagonal); the CUDA backend (fused, tiled) keeps
  // only the log-sum-exp of each query row's scaled scores [B,H,T].
  virtual void attention_fwd(float* out, float* att, const float* qkv, int B, int T, int H,
                             int d) = 0;
  // dqkv[B,T,3d] (overwrite) from dout[B,T,d], qkv, the forward's out[B,T,d]
  // and its saved att; datt is scratch of attention_buffers().scratch floats.
  virtual void attention_bwd(float* dqkv, float* datt, const float* dout, const float* qkv,
                             const float* out, const float* att, int B, int T, int H, int d) = 0;
  // The sizes of attention's buffers, the backend's choice: `saved` floats
  // per layer (att of attention_fwd), `scratch` floats (datt of
  // attention_bwd, one buffer shared by the layers). `probabilities`: saved
  // is the [B,H,T,T] probabilities, an activation the mixed-precision path
  // rounds like the others (a log-sum-exp is kept in fp32).
  struct AttentionBuffers {
    size_t saved = 0, scratch = 0;
    bool probabilities = true;
  };
  virtual AttentionBuffers attention_buffers(int B, int T, int H) const {
    const size_t probs = static_cast<size_t>(B) * H * T * T;
    return {probs, probs, true};
  }
  // Per-position cross-entropy of logits[N,V] against targets[N] (target < 0:
  // ignored, loss 0). probs[N,V] receives softmax(logits) (may alias logits).
  virtual void crossentropy_fwd(float* loss, float* probs, const float* logits,
                                const int32_t* targets, int N, int V) = 0;
  // dlogits[N,V] = (probs - onehot(target)) * dscale, rows with target < 0 zeroed
  // (may alias probs).
  virtual void crossentropy_bwd(float* dlogits, const float* probs, const int32_t* targets,
                                float dscale, int N, int V) = 0;

  // ---- mixture of experts ----------------------------------------------------
  // From router logits[N,E] (fp32): probs[N,E] = softmax within each of the
  // `groups` groups of E/groups consecutive experts; lse[N,groups] the
  // log-sum-exp of each group's logits; per group the top_k experts by prob
  // (ties to the lower index) go to expert[N,S] (global expert ids, S =
  // groups*top_k, group-major), their probs to gate[N,S], renormalised over the
  // token's chosen slots when a.normalize.
  virtual void router_fwd(float* probs, float* lse, int32_t* expert, float* gate,
                          const float* logits, const RouterArgs& a) = 0;
  // Capacity, slot-major: slot s of every token in token order, then slot s+1.
  // pos[N,S] = row of the slot inside its expert's block, or -1 when the expert
  // already holds `capacity` slots (capacity <= 0: no limit). count[E] = kept
  // slots per expert, demand[E] = slots that chose the expert before dropping.
  virtual void moe_assign(int32_t* pos, int32_t* count, int32_t* demand, const int32_t* expert,
                          int N, int S, int E, int capacity) = 0;
  // Gather: xp[offset[e] + pos[n,s], :] = x[n, :] for every kept slot.
  // offset[E] = first row of each expert's block in the packed buffer.
  virtual void moe_permute(float* xp, const float* x, const int32_t* expert, const int32_t* pos,
                           const int32_t* offset, int N, int S, int d) = 0;
  // dx[n,:] += sum over kept slots of dxp[offset[e]+pos[n,s], :]
  virtual void moe_permute_bwd(float* dx, const float* dxp, const int32_t* expert,
                               const int32_t* pos, const int32_t* offset, int N, int S,
                               int d) = 0;
  // Combine: y[n,:] += sum over kept slots of gate[n,s] * yp[offset[e]+pos[n,s], :]
  virtual void moe_unpermute(float* y, const float* yp, const float* gate, const int32_t* expert,
                             const int32_t* pos, const int32_t* offset, int N, int S, int d) = 0;
  // dyp[row,:] = gate[n,s] * dy[n,:] for kept slots (other rows untouched);
  // dgate[n,s] = dot(dy[n,:], yp[row,:]) for kept slots, 0 for dropped ones.
  virtual void moe_unpermute_bwd(float* dyp, float* dgate, const float* dy, const float* yp,
                                 const float* gate, const int32_t* expert, const int32_t* pos,
                                 const int32_t* offset, int N, int S, int d) = 0;
  // Auxiliary losses of one MoE layer. aux = (E/groups) * sum_e f_e * P_e
  // averaged over groups, f_e = demand[e] / (N*top_k) (share of the group's
  // slot assignments), P_e = mean_n probs[n,e]; z = mean_n,g lse[n,g]^2.
  // Returns {aux, z}.
  struct AuxLosses { double aux, z; };
  virtual AuxLosses router_aux_fwd(const float* probs, const float* lse, const int32_t* demand,
                                   const RouterArgs& a) = 0;
  // {aux, z} of router_aux_fwd from the sums of router_aux_sums (E + 1
  // doubles) and the demand (host ints): the same arithmetic in the same order.
  static AuxLosses router_aux_combine(const double* sums, const int32_t* demand,
                                      const RouterArgs& a);
  // dlogits[N,E] (overwrite) from: dgate[N,S] through the gate (normalised or
  // not) and the group softmax, plus aux_coef * d aux / d logits and
  // z_coef * d z / d logits. The caller folds its loss scale into dgate and the
  // two coefficients.
  virtual void router_bwd(float* dlogits, const float* dgate, const float* probs,
                          const float* lse, const int32_t* expert, const float* gate,
                          const int32_t* demand, float aux_coef, float z_coef,
                          const RouterArgs& a) = 0;

  // ---- optimizer -------------------------------------------------------------
  // Decoupled AdamW on n elements: m,v updated from g * grad_scale; bias
  // correction with step t (1-based); p -= lr * (mhat/(sqrt(vhat)+eps) + wd*p).
  struct AdamArgs {
    float lr, beta1, beta2, eps, weight_decay, grad_scale;
    int64_t t;
  };
  virtual void adamw(float* p, const float* g, float* m, float* v, size_t n,
                     const AdamArgs& a) = 0;
  // One AdamW update of many tensors (the optimizer step): the update of
  // adamw() on each, with its own weight decay (a.weight_decay is ignored).
  // This default is the reference; the CUDA backend updates every tensor in
  // one launch (a multi-tensor kernel) with the same arithmetic.
  struct AdamTensor {
    float* p;
    const float* g;
    float* m;
    float* v;
    size_t n;
    float weight_decay;
  };
  virtual void adamw_multi(const AdamTensor* ts, size_t count, const AdamArgs& a) {
    for (size_t i = 0; i < count; ++i) {
      AdamArgs b = a;
      b.weight_decay = ts[i].weight_decay;
      adamw(ts[i].p, ts[i].g, ts[i].m, ts[i].v, ts[i].n, b);
    }
  }

  // GEMMs whose operands are not half values (the router's fp32 weight and
  // logit gradient under precision.compute: bf16): while on, a backend whose
  // GEMMs convert operands to a half type (CUDA's bf16 tensor cores) runs
  // gemm / linear_fwd / linear_fwd_grouped in fp32. Returns the previous
  // setting. The CPU's GEMMs are always fp32: nothing to do. Use Fp32Gemms.
  virtual bool set_fp32_gemms(bool on) {
    (void)on;
    return false;
  }
};

// Scoped Backend::set_fp32_gemms(true).
class Fp32Gemms {
 public:
  explicit Fp32Gemms(Backend& be) : be_(be), prev_(be.set_fp32_gemms(true)) {}
  ~Fp32Gemms() { be_.set_fp32_gemms(prev_); }
  Fp32Gemms(const Fp32Gemms&) = delete;
  Fp32Gemms& operator=(const Fp32Gemms&) = delete;

 private:
  Backend& be_;
  bool prev_;
};

// The buffers of the fused (flash-style) attention of the CUDA backend: the
// log-sum-exp [B,H,T] saved, D = rowsum(dout * out) [B,H,T] as scratch. Also
// what the memory planner counts for a GPU layout.
inline Backend::AttentionBuffers flash_attention_buffers(int B, int T, int H) {
  const size_t rows = static_cast<size_t>(B) * H * T;
  return {rows, rows, false};
}

// The CPU reference backend (OpenBLAS GEMMs, OpenMP loops). threads <= 0: all cores.
std::unique_ptr<Backend> make_cpu_backend(int threads);
// A backend that forwards every op to `inner` and adds graphs (capture as
// closures, replay) and the host-read count: the CPU twin of CUDA graphs
// (core/backend/graph_recorder.cpp).
std::unique_ptr<Backend> make_recording_backend(std::unique_ptr<Backend> inner);
// A backend that forwards every op to `inner` and times each one between two
// marks (core/backend/op_profiler.h reads the table).
std::unique_ptr<Backend> make_op_profiler(std::unique_ptr<Backend> inner);

// AdamW on host arrays (OpenMP, vectorised): the optimizer step of offloaded
// chunks on every backend. The same code as the CPU backend's adamw, so an
// offloaded step is bit-identical to a resident one there.
void host_adamw(float* p, const float* g, float* m, float* v, size_t n,
                const Backend::AdamArgs& a);

// Physical memory of this machine in bytes (0 when unknown).
int64_t host_physical_memory();

}  // namespace m6
