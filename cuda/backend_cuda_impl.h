// CudaBackend: the Backend interface (core/backend/backend.h) on one CUDA
// device, one stream and one cuBLAS handle, fp32 throughout. Each method is
// the entry point of its op: it checks the shapes (messages carry the values),
// then calls the launcher in kernels/ on raw pointers. Semantics are those of
// the CPU reference (core/backend/cpu), op for op: accumulate vs overwrite,
// aliasing, tie-breaking, slot-major capacity. Ops that return a value to the
// host synchronise (each counts as one host read); the rest only enqueue work
// on the stream. Bad indices that the CPU reference throws on at the op
// (crossentropy targets, moe_assign experts) are recorded on the device and
// thrown by check_errors() or sync(): no host read per op. Small host-to-
// device copies go through a pinned staging ring (no host stall), and the
// stream can be captured into CUDA graphs (capture_begin .. capture_end),
// during which every host read, allocation and host-to-device copy throws.
//
// The class, private to cuda/: its methods are defined in backend_cuda.cu
// (construction and the ops), backend_memory.cu (memory and copies) and
// backend_graphs.cu (graph capture, timestamps, bad-index records).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/backend/alloc_tracker.h"
#include "core/backend/backend.h"
#include "core/backend/cuda_factory.h"
#include "core/util/error.h"
#include "cuda/gemm_lt.h"
#include "cuda/kernels/kernels.h"
#include "cuda/staging_ring.h"

namespace m6 {
namespace cuda_impl {

using cuda::BadIndex;

// to_device of up to kStagedCopyMax bytes goes through the pinned staging
// ring (kStagingBytes, at most kStagingCopies copies in flight).
constexpr size_t kStagedCopyMax = 1u << 20;
constexpr size_t kStagingBytes = 4u << 20;
constexpr int kStagingCopies = 1024;
// The device records of bad indices, one per op kind (BadIndex).
enum BadKind { kBadMoeAssign = 0, kBadCrossentropyFwd = 1, kBadCrossentropyBwd = 2, kBadKinds = 3 };

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, const CudaBackendOptions& opt);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string name() const override { return name_; }
  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }

  // ---- memory ---------------------------------------------------------------
  void* alloc(size_t bytes) override;
  void release(void* p) override;
  // Host arena: pinned (page-locked) memory, so that copies to and from the
  // device run at full bus speed and asynchronously (the offload prefetch).
  // Under unified addressing the device can also reach it, which the copies
  // below rely on through cudaMemcpyDefault.
  bool has_host_arena() const override { return true; }
  void* alloc_host(size_t bytes) override;
  void release_host(void* p) override;
  MemoryStats memory_stats() const override;
  void reset_memory_peaks() override;
  void to_device(void* dst, const void* src, size_t bytes) override;
  void to_host(void* dst, const void* src, size_t bytes) override;
  void copy_async(int slot, void* dst, const void* src, size_t bytes) override;
  void copy_async_wait(int slot) override;
  void copy_async_sync(int slot) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void zero(void* p, size_t bytes) override;
  void sync() override;

  // ---- dense algebra ----------------------------------------------------------
  void gemm(const GemmArgs& g) override;
  void linear_fwd(float* y, float* act, const float* x, const float* w, const float* b, int n,
                  int in, int out) override;
  void linear_fwd_grouped(float* y, float* act, const float* x, const LinearGroup* g, int count,
                          int in, int out) override;
  void linear_bwd_grouped(float* dx, const float* dy, const float* x, const LinearGradGroup* g,
                          int count, int in, int out) override;

  void add_bias(float* y, const float* b, int n, int c) override;
  void bias_grad(float* db, const float* dy, int n, int c) override;
  void add(float* y, const float* a, const float* b, size_t n) override;
  void axpy(float* y, float alpha, const float* x, size_t n) override;
  void scale(float* x, float s, size_t n) override { cuda::launch_scale(x, s, n, stream_); }
  double sum(const float* x, size_t n) override { return reduce(x, n, false); }
  double sum_squares(const float* x, size_t n) override { return reduce(x, n, true); }
  void sum_squares_multi(double* out, const float* const* xs, const size_t* ns,
                         size_t count) override;
  bool all_finite(const float* x, size_t n) override;

  // ---- stream-ordered results -------------------------------------------------
  void sum_to(double* dst, const float* x, size_t n) override;
  void router_aux_sums(double* dst, const float* probs, const float* lse,
                       const RouterArgs& a) override;
  void routing_hash(uint64_t* dst, const int32_t* expert, const int32_t* pos, int n,
                    int S) override;
  void check_errors() override;
  int64_t host_reads() const override { return host_reads_; }

  // ---- graphs -------------------------------------------------------------------
  // Stream capture of stream_ (thread-local mode: an unsafe call from this
  // thread, such as a cudaMalloc or a synchronisation, fails the capture,
  // while other threads are unaffected). The ops that would need one throw
  // before calling CUDA (no_capture), which also marks the capture failed, so
  // that capture_end ends it and returns nullptr.
  bool graphs_available() const override { return true; }
  void capture_begin() override;
  std::unique_ptr<Graph> capture_end() override;
  void graph_launch(Graph& g) override;

  // ---- timestamps (the op profiler) ----------------------------------------------
  int mark() override;
  double mark_ms(int a, int b) override;
  void marks_reset() override { marks_used_ = 0; }

  bool set_fp32_gemms(bool on) override;
  void round_half(float* x, size_t n, HalfType t) override;

  // ---- transformer ops --------------------------------------------------------
  void embedding_fwd(float* x, const int32_t* tokens, const float* wte, const float* wpe, int B,
                     int T, int d) override;
  void embedding_bwd(float* dwte, float* dwpe, const float* dx, const int32_t* tokens, int B, int T,
                     int d) override;
  void layernorm_fwd(float* y, float* mean, float* rstd, const float* x, const float* w,
                     const float* b, int N, int d) override;
  void add_layernorm_fwd(float* x_out, float* y, float* mean, float* rstd, const float* x,
                         const float* delta, const float* w, const float* b, int N,
                         int d) override;
  void add_layernorm_fwd_half(float* x_out, float* y, float* mean, float* rstd, const float* x,
                              const float* delta, const float* w, const float* b, int N, int d,
                              HalfType t) override;
  void layernorm_bwd(float* dx, float* dw, float* db, const float* dy, const float* x,
                     const float* mean, const float* rstd, const float* w, int N, int d) override;
  void gelu_fwd(float* y, const float* x, size_t n) override;
  void gelu_bwd(float* dx, const float* x, const float* dy, size_t n) override;
  void gelu_fwd_half(float* y, float* x, size_t n, HalfType t) override;
  void gelu_bwd_half(float* dx, const float* x, float* dy, size_t n, HalfType t) override;
  AttentionBuffers attention_buffers(int B, int T, int H) const override;
  bool attention_on_tensor_cores(int H, int d) const;
  void attention_fwd(float* out, float* att, const float* qkv, int B, int T, int H,
                     int d) override;
  void attention_bwd(float* dqkv, float* datt, const float* dout, const float* qkv,
                     const float* out, const float* att, int B, int T, int H, int d) override;
  void crossentropy_fwd(float* loss, float* probs, const float* logits, const int32_t* targets,
                        int N, int V) override;
  void crossentropy_bwd(float* dlogits, const float* probs, const int32_t* targets, float dscale,
                        int N, int V) override;

  // ---- mixture of experts ----------------------------------------------------
  void router_fwd(float* probs, float* lse, int32_t* expert, float* gate, const float* logits,
                  const RouterArgs& a) override;
  void moe_assign(int32_t* pos, int32_t* count, int32_t* demand, const int32_t* expert, int N,
                  int S, int E, int capacity) override;
  void moe_permute(float* xp, const float* x, const int32_t* expert, const int32_t* pos,
                   const int32_t* offset, int N, int S, int d) override;
  void moe_permute_bwd(float* dx, const float* dxp, const int32_t* expert, const int32_t* pos,
                       const int32_t* offset, int N, int S, int d) override;
  void moe_unpermute(float* y, const float* yp, const float* gate, const int32_t* expert,
                     const int32_t* pos, const int32_t* offset, int N, int S, int d) override;
  void moe_unpermute_bwd(float* dyp, float* dgate, const float* dy, const float* yp,
                         const float* gate, const int32_t* expert, const int32_t* pos,
                         const int32_t* offset, int N, int S, int d) override;
  AuxLosses router_aux_fwd(const float* probs, const float* lse, const int32_t* demand,
                           const RouterArgs& a) override;
  void router_bwd(float* dlogits, const float* dgate, const float* probs, const float* lse,
                  const int32_t* expert, const float* gate, const int32_t* demand, float aux_coef,
                  float z_coef, const RouterArgs& a) override;

  // ---- optimizer -------------------------------------------------------------
  void adamw(float* p, const float* g, float* m, float* v, size_t n, const AdamArgs& a) override;
  void adamw_multi(const AdamTensor* ts, size_t count, const AdamArgs& a) override;

 private:
  template <class... Ints>
  void check_nonneg(const char* op, Ints... sizes) {
    if (((sizes < 0) || ...)) {
      std::string list;
      ((list += (list.empty() ? "" : ", ") + std::to_string(sizes)), ...);
      fail(fmt(op, ": negative size among (", list, "); sizes must be >= 0"));
    }
  }

  int resolve_ld(int ld, int width, const char* what);
  void check_router_args(const RouterArgs& a);
  void check_attention(int B, int T, int H, int d);

  // Grows the reduction scratch to the partials of n elements. The old
  // buffer is retired, not freed: a graph captured earlier may still use it.
  void ensure_partials(size_t n) { (void)partials(cuda::reduce_partials(n)); }
  double* partials(size_t doubles);
  double reduce(const float* x, size_t n, bool squares);

  static void check_slot(int slot);
  void upload_group_table(std::initializer_list<std::pair<const void*, size_t>> parts,
                          size_t room);

  // Device-to-host copies, then one wait for the stream: one host read.
  struct ReadBack {
    void* dst;
    const void* src;
    size_t bytes;
  };
  void read_back(std::initializer_list<ReadBack> parts);
  cuda::BadSink bad_sink(int kind);
  void report_bad();
  void no_capture(const char* what);
  [[noreturn]] void fail(const std::string& msg);
  static std::string cuda_error_text(cudaError_t e, const char* call);
  void retire(void* p);

  int device_;
  bool bf16_ = false;
  bool fp32_gemms_ = false;  // set_fp32_gemms: bf16_ suspended (the router)
  int bad_epoch_ = 0;  // bad_sink's counter
  bool half_gemms() const { return bf16_ && !fp32_gemms_; }
  // cublasGemmGroupedBatchedEx with fp32 operands and the bf16 tensor-core
  // compute type: cuBLAS versions differ on whether they take it. A refusal
  // (NOT_SUPPORTED, or INVALID_VALUE for the compute type; nothing was
  // enqueued) is remembered and said once, and the grouped ops run one GEMM
  // per group from then on (the same results); fp32 refusals likewise.
  bool grouped_half_refused_ = false, grouped_fp32_refused_ = false;
  bool grouped_ok() const { return !(half_gemms() ? grouped_half_refused_ : grouped_fp32_refused_); }
  bool grouped_refused(cublasStatus_t st);
  std::unique_ptr<cuda::LtLinear> lt_;  // created on the device, in the constructor
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cudaStream_t copy_stream_ = nullptr;  // offload copies (copy_async)
  cudaEvent_t copy_after_ = nullptr;    // recorded on stream_ before each async copy
  cudaEvent_t slot_done_[kCopySlots] = {};
  AllocTracker device_mem_, host_mem_;
  cublasHandle_t blas_ = nullptr;
  BadIndex* bad_ = nullptr;
  double* scalars_ = nullptr;
  int* flag_ = nullptr;
  double* partial_ = nullptr;
  size_t partial_cap_ = 0;
  char* group_table_ = nullptr;  // linear_fwd_grouped's pointer table on the device
  size_t group_table_bytes_ = 0;
  char* sumsq_table_ = nullptr;  // sum_squares_multi's tables, outputs and partials
  size_t sumsq_bytes_ = 0;
  int64_t sumsq_pieces_ = 0;
  std::vector<char> sumsq_host_;  // the tensor list the table was built for
  char* adam_table_ = nullptr;  // adamw_multi's chunk table on the device
  size_t adam_table_bytes_ = 0;
  std::vector<char> adam_table_host_;
  int64_t adam_chunks_ = 0;
  bool adam_table_captured_ = false;  // a graph reads adam_table_
  double* aux_sums_ = nullptr;        // router_aux_fwd's E + 1 sums
  size_t aux_sums_cap_ = 0;
  void* blas_workspace_ = nullptr;              // cuBLAS's (cublasSetWorkspace)
  std::unique_ptr<cuda::StagingRing> staging_;  // small to_device copies
  int64_t host_reads_ = 0;
  bool capturing_ = false;
  std::string capture_error_;   // the first op that failed the running capture
  std::vector<void*> retired_;  // replaced scratch buffers (retire)
  std::vector<cudaEvent_t> marks_;  // mark()'s event pool; [0, marks_used_) recorded
  size_t marks_used_ = 0;
};

}  // namespace cuda_impl
}  // namespace m6
