// CudaBackend's mixture-of-experts ops: the router (forward, backward, aux
// losses and their device sums), the capacity assignment, the permutations
// to and from the experts' rows, and the routing fingerprint; each checks its
// shapes, then calls its launcher in kernels/moe.cu. The class is in
// backend_cuda_impl.h.
#include <vector>

#include "core/backend/backend.h"
#include "core/util/error.h"
#include "cuda/backend_cuda_impl.h"
#include "cuda/kernels/kernels.h"

namespace m6 {
namespace cuda_impl {

void CudaBackend::router_aux_sums(double* dst, const float* probs, const float* lse,
                                  const RouterArgs& a) {
  check_router_args(a);
  cuda::launch_router_aux_sums(dst, dst + a.e, probs, lse, a.n, a.e, a.groups, stream_);
}

void CudaBackend::routing_hash(uint64_t* dst, const int32_t* expert, const int32_t* pos, int n,
                               int S) {
  check_nonneg("routing_hash", n, S);
  cuda::launch_routing_hash(dst, expert, pos, static_cast<int64_t>(n) * S, stream_);
}

void CudaBackend::router_fwd(float* probs, float* lse, int32_t* expert, float* gate,
                             const float* logits, const RouterArgs& a) {
  check_router_args(a);
  cuda::launch_router_fwd(probs, lse, expert, gate, logits, a.n, a.e, a.groups, a.top_k,
                          a.normalize, stream_);
}

void CudaBackend::moe_assign(int32_t* pos, int32_t* count, int32_t* demand, const int32_t* expert,
                             int N, int S, int E, int capacity) {
  check_nonneg("moe_assign", N, S, E);
  cuda::launch_moe_assign(pos, count, demand, expert, N, S, E, capacity, bad_sink(kBadMoeAssign),
                          stream_);
}

void CudaBackend::moe_permute(float* xp, const float* x, const int32_t* expert, const int32_t* pos,
                              const int32_t* offset, int N, int S, int d) {
  check_nonneg("moe_permute", N, S, d);
  cuda::launch_moe_permute(xp, x, expert, pos, offset, N, S, d, stream_);
}

void CudaBackend::moe_permute_bwd(float* dx, const float* dxp, const int32_t* expert,
                                  const int32_t* pos, const int32_t* offset, int N, int S, int d) {
  check_nonneg("moe_permute_bwd", N, S, d);
  cuda::launch_moe_permute_bwd(dx, dxp, expert, pos, offset, N, S, d, stream_);
}

void CudaBackend::moe_unpermute(float* y, const float* yp, const float* gate, const int32_t* expert,
                                const int32_t* pos, const int32_t* offset, int N, int S, int d) {
  check_nonneg("moe_unpermute", N, S, d);
  cuda::launch_moe_unpermute(y, yp, gate, expert, pos, offset, N, S, d, stream_);
}

void CudaBackend::moe_unpermute_bwd(float* dyp, float* dgate, const float* dy, const float* yp,
                                    const float* gate, const int32_t* expert, const int32_t* pos,
                                    const int32_t* offset, int N, int S, int d) {
  check_nonneg("moe_unpermute_bwd", N, S, d);
  cuda::launch_moe_unpermute_bwd(dyp, dgate, dy, yp, gate, expert, pos, offset, N, S, d,
                                 stream_);
}

// The two sums run on the device (into a buffer kept between calls); the
// final combination (E terms) runs on the host in the CPU reference's
// order (router_aux_combine). One host read for the sums and the demand.
Backend::AuxLosses CudaBackend::router_aux_fwd(const float* probs, const float* lse,
                                               const int32_t* demand, const RouterArgs& a) {
  check_router_args(a);
  if (a.n == 0) return {0.0, 0.0};
  const size_t E = static_cast<size_t>(a.e);
  if (E + 1 > aux_sums_cap_) {
    auto* fresh = static_cast<double*>(alloc((E + 1) * sizeof(double)));
    retire(aux_sums_);
    aux_sums_ = fresh;
    aux_sums_cap_ = E + 1;
  }
  cuda::launch_router_aux_sums(aux_sums_, aux_sums_ + E, probs, lse, a.n, a.e, a.groups, stream_);
  std::vector<double> sums(E + 1);
  std::vector<int32_t> dem(E);
  read_back({{sums.data(), aux_sums_, sums.size() * sizeof(double)},
             {dem.data(), demand, dem.size() * sizeof(int32_t)}});
  return router_aux_combine(sums.data(), dem.data(), a);
}

void CudaBackend::router_bwd(float* dlogits, const float* dgate, const float* probs,
                             const float* lse, const int32_t* expert, const float* gate,
                             const int32_t* demand, float aux_coef, float z_coef,
                             const RouterArgs& a) {
  check_router_args(a);
  if (a.n == 0) return;
  cuda::launch_router_bwd(dlogits, dgate, probs, lse, expert, gate, demand, aux_coef, z_coef,
                          a.n, a.e, a.groups, a.top_k, a.normalize, stream_);
}

void CudaBackend::check_router_args(const RouterArgs& a) {
  if (a.n < 0) fail(fmt("router: tokens (", a.n, ") must be >= 0"));
  if (a.e <= 0 || a.groups <= 0 || a.e % a.groups != 0)
    fail(fmt("router: experts (", a.e, ") must be a positive multiple of groups (", a.groups,
             ")"));
  if (a.top_k < 1 || a.top_k > a.e / a.groups)
    fail(fmt("router: top_k (", a.top_k, ") must be in [1, experts per group (", a.e / a.groups,
             ")]"));
}

}  // namespace cuda_impl
}  // namespace m6
