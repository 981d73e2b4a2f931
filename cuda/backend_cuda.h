// The CUDA backend's internals that other parts of cuda/ need (CUDA types
// allowed here, unlike core/backend/cuda_factory.h).
#pragma once
#include <cuda_runtime.h>

#include "core/backend/backend.h"

namespace m6 {

// The stream every op of a CUDA backend runs on; the NCCL communicator
// enqueues its collectives there, so they are ordered with the ops around
// them. Throws Error when `be` is not the CUDA backend.
cudaStream_t cuda_backend_stream(Backend& be);
// The device index of a CUDA backend.
int cuda_backend_device(Backend& be);

}  // namespace m6
