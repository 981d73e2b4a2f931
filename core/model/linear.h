// y = x W^T + b and its backward, on the Backend's GEMM. W is [out, in]
// (row-major, as stored and exported), x [n, in], y [n, out].
#pragma once
#include "core/backend/backend.h"

namespace m6 {

enum class GradMode { Overwrite, Accumulate };

inline void linear_fwd(Backend& be, float* y, const float* x, const float* w, const float* b,
                       int n, int in, int out) {
  be.linear_fwd(y, nullptr, x, w, b, n, in, out);
}

// The same with GELU: pre = x W^T + b (kept for backward), act = gelu(pre);
// one fused GEMM on the GPU.
inline void linear_gelu_fwd(Backend& be, float* act, float* pre, const float* x, const float* w,
                            const float* b, int n, int in, int out) {
  be.linear_fwd(pre, act, x, w, b, n, in, out);
}

// dx[n,in] = (or +=) dy W; dw[out,in] += dy^T x; db[out] += sum_rows dy.
// dx may be null (input gradient not needed), db null when there is no bias.
inline void linear_bwd(Backend& be, float* dx, GradMode dx_mode, float* dw, float* db,
                       const float* dy, const float* x, const float* w, int n, int in, int out) {
  be.linear_bwd(dx, dx_mode == GradMode::Accumulate, dw, db, dy, x, w, n, in, out);
}

}  // namespace m6
