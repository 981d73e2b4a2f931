// The CUDA backend as seen from core/ (defined in cuda/backend_cuda.cu): plain
// C++, no CUDA type, so that the trainer can select it without including a
// CUDA header (cuda/README.md).
#pragma once
#include <memory>
#include <string>

#include "core/backend/backend.h"

namespace m6 {

// Number of visible CUDA devices; 0 when there is no driver or no device
// (never throws).
int cuda_device_count();

// The UUID of device i as 32 hex digits ("" when it cannot be read): tells
// apart two ranks that see different GPUs under the same index.
std::string cuda_device_uuid(int device);

// Test hook: enqueues a kernel that keeps `be`'s stream busy for `seconds`
// (the NCCL timeout test stalls a collective with it).
void cuda_stall_stream(Backend& be, double seconds);

struct CudaBackendOptions {
  // GEMMs on the tensor cores with operands rounded to bf16 and fp32
  // accumulation (exact conversion when the values are bf16 already, as under
  // precision.compute: bf16); false: plain fp32 GEMMs.
  bool bf16_tensor_cores = false;
  // Bitwise-reproducible results run to run (the parity tests): cuBLASLt may
  // not split K across blocks (no reduction scheme); cuBLAS never uses
  // atomics (its default); every m6train kernel is deterministic anyway.
  bool deterministic = false;
};

// The CUDA backend on `device` (0-based): one cuBLAS handle, one stream,
// fp32 storage. Throws Error when the device cannot be used.
std::unique_ptr<Backend> make_cuda_backend(int device, const CudaBackendOptions& opt = {});

}  // namespace m6
