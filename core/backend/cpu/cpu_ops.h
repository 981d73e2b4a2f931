// The CPU reference ops: every op of backend.h as a function template on the
// scalar type T (float for CpuBackend, double for the finite-difference tests).
// Same names and argument order as the Backend methods, in namespace m6::cpu.
//   cpu_dense.h       gemm (OpenBLAS), bias, axpy/scale, reductions, adamw
//   cpu_transformer.h embedding, layernorm, gelu, attention, crossentropy
//   cpu_moe.h         router, capacity assignment, permute/unpermute, aux losses
#pragma once
#include "core/backend/cpu/cpu_dense.h"
#include "core/backend/cpu/cpu_moe.h"
#include "core/backend/cpu/cpu_transformer.h"
