// The linear layer's forward on cuBLASLt: y = x w^T + b with the bias, and
// optionally the GELU, fused into the GEMM as epilogues (BIAS, GELU_AUX_BIAS:
// act = gelu(x w^T + b), y = the pre-activation for backward). fp32 storage;
// with `bf16` the tensor cores take the operands rounded to bf16 and
// accumulate in fp32 (CUBLAS_COMPUTE_32F_FAST_16BF: exact when the values are
// bf16 already, as under precision.compute bf16). Plans (descriptors and the
// heuristic's algorithm) are cached per shape and alignment; nothing is
// allocated per call after the first of a shape.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

namespace m6::cuda {

class LtLinear {
 public:
  explicit LtLinear(bool deterministic);
  ~LtLinear();
  LtLinear(const LtLinear&) = delete;
  LtLinear& operator=(const LtLinear&) = delete;

  // False when cuBLASLt offers no algorithm for this shape, alignment and
  // epilogue (e.g. a GELU pre-activation whose row width is not a multiple
  // of 8): the caller computes it another way. n, in, out > 0.
  bool run(float* y, float* act, const float* x, const float* w, const float* b, int n, int in,
           int out, bool bf16, cudaStream_t st);

 private:
  struct Plan {
    bool ok = false;
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  // n, in, out, epilogue, bf16, 16-byte aligned
  using Key = std::tuple<int, int, int, int, bool, bool>;
  Plan& plan(const Key& k);

  bool deterministic_ = false;
  cublasLtHandle_t lt_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, Plan> plans_;
};

}  // namespace m6::cuda
