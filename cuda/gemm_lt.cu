// cuBLASLt linear forward with bias / GELU epilogues (gemm_lt.h).
//
// Row-major y[n,out] = x[n,in] w[out,in]^T is column-major
// Y^T[out,n] = W[out,in] X^T[in,n]: A = w seen as column-major [in,out]
// (ld in) transposed, B = x seen as column-major [in,n] (ld in), D = y seen
// as column-major [out,n] (ld out); the bias (length out = the rows of D) is
// what cuBLASLt's bias epilogue broadcasts over the columns.
#include "cuda/gemm_lt.h"

#include <cstdint>
#include <stdexcept>

#include "core/util/error.h"
#include "cuda/check.h"

namespace m6::cuda {
namespace {

void lt_check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw Error(fmt("cuBLASLt call failed: ", what, ": ", cublasGetStatusName(s), " (",
                    cublasGetStatusString(s), ")"));
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

constexpr size_t kWorkspaceBytes = 32u << 20;

}  // namespace

LtLinear::LtLinear(bool deterministic) : deterministic_(deterministic) {
  lt_check(cublasLtCreate(&lt_), "cublasLtCreate");
  M6_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
  workspace_bytes_ = kWorkspaceBytes;
}

LtLinear::~LtLinear() {
  for (auto& [k, p] : plans_) {
    if (p.op) cublasLtMatmulDescDestroy(p.op);
    if (p.a) cublasLtMatrixLayoutDestroy(p.a);
    if (p.b) cublasLtMatrixLayoutDestroy(p.b);
    if (p.c) cublasLtMatrixLayoutDestroy(p.c);
  }
  cudaFree(workspace_);
  cublasLtDestroy(lt_);
}

LtLinear::Plan& LtLinear::plan(const Key& k) {
  auto it = plans_.find(k);
  if (it != plans_.end()) return it->second;
  Plan& p = plans_[k];
  const auto [n, in, out, epi_int, bf16, al16] = k;
  const auto epi = static_cast<cublasLtEpilogue_t>(epi_int);
  const cublasComputeType_t ct = bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
  lt_check(cublasLtMatmulDescCreate(&p.op, ct, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  lt_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta),
           "TRANSA");
  lt_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb),
           "TRANSB");
  lt_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi),
           "EPILOGUE");
  // The heuristic reads the alignment of the bias and aux pointers from the
  // descriptor (a null one counts as aligned): stand-ins of the key's
  // alignment class, so that the algorithm it picks accepts every pointer
  // run() will set for this key (16-byte aligned or only 4).
  void* stand_in = reinterpret_cast<void*>(uintptr_t{al16 ? 256u : 4u});
  if (epi == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || epi == CUBLASLT_EPILOGUE_BIAS)
    lt_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &stand_in,
                                            sizeof stand_in),
             "BIAS_POINTER");
  if (epi == CUBLASLT_EPILOGUE_GELU_AUX_BIAS || epi == CUBLASLT_EPILOGUE_GELU_AUX) {
    const int64_t ld = out;
    lt_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld,
                                            sizeof ld),
             "EPILOGUE_AUX_LD");
    lt_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                            &stand_in, sizeof stand_in),
             "EPILOGUE_AUX_POINTER");
  }
  lt_check(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_32F, in, out, in), "layout A");
  lt_check(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_32F, in, n, in), "layout B");
  lt_check(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, out, n, out), "layout C");
  cublasLtMatmulPreference_t pref = nullptr;
  lt_check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  const uint64_t ws = workspace_bytes_;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                       sizeof ws);
  // Pointers inside a buffer (an expert's rows) may be only 4-byte aligned.
  const uint32_t align = al16 ? 16 : 4;
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof align);
  if (deterministic_) {  // no split-K reduction: the same sums in the same order every run
    const uint32_t none = CUBLASLT_REDUCTION_SCHEME_NONE;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &none,
                                         sizeof none);
  }
  cublasLtMatmulHeuristicResult_t r{};
  int found = 0;
  const cublasStatus_t s =
      cublasLtMatmulAlgoGetHeuristic(lt_, p.op, p.a, p.b, p.c, p.c, pref, 1, &r, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  p.ok = s == CUBLAS_STATUS_SUCCESS && found > 0;
  if (p.ok) p.algo = r.algo;
  return p;
}

bool LtLinear::run(float* y, float* act, const float* x, const float* w, const float* b, int n,
                   int in, int out, bool bf16, cudaStream_t st) {
  cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
  if (act != nullptr) {
    if (out % 8 != 0) return false;  // the GELU pre-activation's ld must be a multiple of 8
    epi = b ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
  } else if (b != nullptr) {
    epi = CUBLASLT_EPILOGUE_BIAS;
  }
  const bool al16 = aligned16(y) && aligned16(act) && aligned16(x) && aligned16(w) &&
                    aligned16(b) && in % 4 == 0 && out % 4 == 0;
  Plan& p = plan(Key{n, in, out, static_cast<int>(epi), bf16, al16});
  if (!p.ok) return false;
  if (b != nullptr)
    lt_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof b),
             "BIAS_POINTER");
  float* d = y;
  if (act != nullptr) {  // D = gelu(...), the aux output keeps the pre-activation
    lt_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &y,
                                            sizeof y),
             "EPILOGUE_AUX_POINTER");
    d = act;
  }
  const float alpha = 1.0f, beta = 0.0f;
  const cublasStatus_t s = cublasLtMatmul(lt_, p.op, &alpha, w, p.a, x, p.b, &beta, d, p.c, d,
                                          p.c, &p.algo, workspace_, workspace_bytes_, st);
  if (s == CUBLAS_STATUS_NOT_SUPPORTED || s == CUBLAS_STATUS_INVALID_VALUE) {
    // The algorithm refuses these arguments (checked before anything is
    // enqueued): this key is computed another way from now on.
    p.ok = false;
    return false;
  }
  lt_check(s, "cublasLtMatmul");
  return true;
}

}  // namespace m6::cuda
