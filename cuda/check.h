// Checked CUDA and cuBLAS calls: every runtime call, every cuBLAS call and
// every kernel launch goes through one of these macros, which throw m6::Error
// with the failing expression, the file, the line and the library's message.
// (No rank yet: the CUDA backend runs single-rank until NCCL lands.)
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/util/error.h"

namespace m6::cuda {

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* expr, const char* file, int line) {
  throw Error(fmt(file, ":", line, ": CUDA call failed: ", expr, ": ", cudaGetErrorName(e), " (",
                  cudaGetErrorString(e), ")"));
}

[[noreturn]] inline void throw_cublas(cublasStatus_t s, const char* expr, const char* file,
                                      int line) {
  throw Error(fmt(file, ":", line, ": cuBLAS call failed: ", expr, ": ", cublasGetStatusName(s),
                  " (", cublasGetStatusString(s), ")"));
}

}  // namespace m6::cuda

#define M6_CUDA_CHECK(expr)                                                 \
  do {                                                                      \
    const cudaError_t m6_err_ = (expr);                                     \
    if (m6_err_ != cudaSuccess)                                             \
      ::m6::cuda::throw_cuda(m6_err_, #expr, __FILE__, __LINE__);           \
  } while (0)

#define M6_CUBLAS_CHECK(expr)                                               \
  do {                                                                      \
    const cublasStatus_t m6_st_ = (expr);                                   \
    if (m6_st_ != CUBLAS_STATUS_SUCCESS)                                    \
      ::m6::cuda::throw_cublas(m6_st_, #expr, __FILE__, __LINE__);          \
  } while (0)

// After a <<<...>>> launch: catches bad launch configurations at once
// (errors inside the kernel surface at the next synchronising call).
#define M6_LAUNCH_CHECK() M6_CUDA_CHECK(cudaGetLastError())
