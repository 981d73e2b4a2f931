// CpuBackend: the Backend interface on host memory, forwarding every op to the
// float instantiation of the reference templates in cpu_ops.h. "Device"
// memory is 64-byte aligned, zero-filled host memory; transfers are memcpy.
#include <cblas.h>
#include <omp.h>

#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "core/backend/alloc_tracker.h"
#include "core/backend/backend.h"
#include "core/backend/cpu/cpu_ops.h"
#include "core/util/error.h"

namespace m6 {
namespace {

constexpr size_t kAlign = 64;

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : threads_(threads) {}
  std::string name() const override { return fmt("cpu(", threads_, " threads)"); }

  // ---- memory ---------------------------------------------------------------
  // Two counted arenas on the same heap: "device" (alloc) and "host"
  // (alloc_host), so that offload moves bytes from one count to the other
  // exactly as it moves them from GPU to pinned host memory on CUDA.
  void* alloc(size_t bytes) override { return take(device_, bytes); }
  void release(void* p) override { give(device_, p); }
  bool has_host_arena() const override { return true; }
  void* alloc_host(size_t bytes) override { return take(host_, bytes); }
  void release_host(void* p) override { give(host_, p); }
  MemoryStats memory_stats() const override {
    return {device_.live(), device_.peak(), host_.live(), host_.peak(),
            device_.count() + host_.count()};
  }
  void reset_memory_peaks() override {
    device_.reset_peak();
    host_.reset_peak();
  }
  void to_device(void* dst, const void* src, size_t bytes) override { copy_bytes(dst, src, bytes); }
  void to_host(void* dst, const void* src, size_t bytes) override { copy_bytes(dst, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override { copy_bytes(dst, src, bytes); }
  void zero(void* p, size_t bytes) override {
    if (bytes > 0) std::memset(p, 0, bytes);
  }
  void sync() override {}

  // ---- dense algebra ----------------------------------------------------------
  void gemm(const GemmArgs& g) override { cpu::gemm(cpu::to_gemm_t(g)); }
  void add_bias(float* y, const float* b, int n, int c) override { cpu::add_bias(y, b, n, c); }
  void bias_grad(float* db, const float* dy, int n, int c) override {
    cpu::bias_grad(db, dy, n, c);
  }
  void add(float* y, const float* a, const float* b, size_t n) override { cpu::add(y, a, b, n); }
  void axpy(float* y, float alpha, const float* x, size_t n) override { cpu::axpy(y, alpha, x, n); }
  void scale(float* x, float s, size_t n) override { cpu::scale(x, s, n); }
  double sum(const float* x, size_t n) override { return cpu::sum(x, n); }
  double sum_squares(const float* x, size_t n) override { return cpu::sum_squares(x, n); }
  bool all_finite(const float* x, size_t n) override { return cpu::all_finite(x, n); }
  void round_half(float* x, size_t n, HalfType t) override { cpu::round_half(x, n, t); }

  // ---- transformer ops --------------------------------------------------------
  void embedding_fwd(float* x, const int32_t* tokens, const float* wte, const float* wpe, int B,
                     int T, int d) override {
    cpu::embedding_fwd(x, tokens, wte, wpe, B, T, d);
  }
  void embedding_bwd(float* dwte, float* dwpe, const float* dx, const int32_t* tokens, int B, int T,
                     int d) override {
    cpu::embedding_bwd(dwte, dwpe, dx, tokens, B, T, d);
  }
  void layernorm_fwd(float* y, float* mean, float* rstd, const float* x, const float* w,
                     const float* b, int N, int d) override {
    cpu::layernorm_fwd(y, mean, rstd, x, w, b, N, d);
  }
  void layernorm_bwd(float* dx, float* dw, float* db, const float* dy, const float* x,
                     const float* mean, const float* rstd, const float* w, int N, int d) override {
    cpu::layernorm_bwd(dx, dw, db, dy, x, mean, rstd, w, N, d);
  }
  void gelu_fwd(float* y, const float* x, size_t n) override { cpu::gelu_fwd(y, x, n); }
  void gelu_bwd(float* dx, const float* x, const float* dy, size_t n) override {
    cpu::gelu_bwd(dx, x, dy, n);
  }
  void attention_fwd(float* out, float* att, const float* qkv, int B, int T, int H,
                     int d) override {
    cpu::attention_fwd(out, att, qkv, B, T, H, d);
  }
  void attention_bwd(float* dqkv, float* datt, const float* dout, const float* qkv,
                     const float* /*out: the saved probabilities suffice*/, const float* att, int B,
                     int T, int H, int d) override {
    cpu::attention_bwd(dqkv, datt, dout, qkv, att, B, T, H, d);
  }
  void crossentropy_fwd(float* loss, float* probs, const float* logits, const int32_t* targets,
                        int N, int V) override {
    cpu::crossentropy_fwd(loss, probs, logits, targets, N, V);
  }
  void crossentropy_bwd(float* dlogits, const float* probs, const int32_t* targets, float dscale,
                        int N, int V) override {
    cpu::crossentropy_bwd(dlogits, probs, targets, dscale, N, V);
  }

  // ---- mixture of experts ----------------------------------------------------
  void router_fwd(float* probs, float* lse, int32_t* expert, float* gate, const float* logits,
                  const RouterArgs& a) override {
    cpu::router_fwd(probs, lse, expert, gate, logits, a);
  }
  void moe_assign(int32_t* pos, int32_t* count, int32_t* demand, const int32_t* expert, int N,
                  int S, int E, int capacity) override {
    cpu::moe_assign(pos, count, demand, expert, N, S, E, capacity);
  }
  void moe_permute(float* xp, const float* x, const int32_t* expert, const int32_t* pos,
                   const int32_t* offset, int N, int S, int d) override {
    cpu::moe_permute(xp, x, expert, pos, offset, N, S, d);
  }
  void moe_permute_bwd(float* dx, const float* dxp, const int32_t* expert, const int32_t* pos,
                       const int32_t* offset, int N, int S, int d) override {
    cpu::moe_permute_bwd(dx, dxp, expert, pos, offset, N, S, d);
  }
  void moe_unpermute(float* y, const float* yp, const float* gate, const int32_t* expert,
                     const int32_t* pos, const int32_t* offset, int N, int S, int d) override {
    cpu::moe_unpermute(y, yp, gate, expert, pos, offset, N, S, d);
  }
  void moe_unpermute_bwd(float* dyp, float* dgate, const float* dy, const float* yp,
                         const float* gate, const int32_t* expert, const int32_t* pos,
                         const int32_t* offset, int N, int S, int d) override {
    cpu::moe_unpermute_bwd(dyp, dgate, dy, yp, gate, expert, pos, offset, N, S, d);
  }
  AuxLosses router_aux_fwd(const float* probs, const float* lse, const int32_t* demand,
                           const RouterArgs& a) override {
    return cpu::router_aux_fwd(probs, lse, demand, a);
  }
  void router_aux_sums(double* dst, const float* probs, const float* lse,
                       const RouterArgs& a) override {
    cpu::router_aux_sums(dst, probs, lse, a);
  }
  void router_bwd(float* dlogits, const float* dgate, const float* probs, const float* lse,
                  const int32_t* expert, const float* gate, const int32_t* demand, float aux_coef,
                  float z_coef, const RouterArgs& a) override {
    cpu::router_bwd(dlogits, dgate, probs, lse, expert, gate, demand, aux_coef, z_coef, a);
  }

  // ---- optimizer -------------------------------------------------------------
  void adamw(float* p, const float* g, float* m, float* v, size_t n, const AdamArgs& a) override {
    cpu::adamw(p, g, m, v, n, a);
  }

 private:
  static void* take(AllocTracker& a, size_t bytes) {
    const size_t rounded = (std::max<size_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign;
    void* p = std::aligned_alloc(kAlign, rounded);
    if (p == nullptr) throw Error(fmt("cpu backend: cannot allocate ", bytes, " bytes"));
    std::memset(p, 0, rounded);
    a.add(p, rounded);
    return p;
  }
  static void give(AllocTracker& a, void* p) {
    if (p == nullptr) return;
    a.remove(p, "cpu backend");
    std::free(p);
  }
  static void copy_bytes(void* dst, const void* src, size_t bytes) {
    if (bytes > 0 && dst != src) std::memmove(dst, src, bytes);
  }
  int threads_;
  AllocTracker device_, host_;
};

}  // namespace

void* Backend::alloc_host(size_t) {
  throw ConfigError(fmt("backend ", name(), " has no host arena: offload.optimizer and "
                        "offload.params must be 0 with it"));
}
void Backend::release_host(void*) {}

void host_adamw(float* p, const float* g, float* m, float* v, size_t n,
                const Backend::AdamArgs& a) {
  cpu::adamw(p, g, m, v, n, a);
}

int64_t host_physical_memory() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
}

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  if (threads <= 0) threads = omp_get_num_procs();
  // Process-wide settings: every OpenMP loop of cpu_ops.h and every OpenBLAS
  // GEMM use this many threads from now on.
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
  return std::make_unique<CpuBackend>(threads);
}

}  // namespace m6
