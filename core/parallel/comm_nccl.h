// The NCCL communicator (defined in cuda/comm_nccl.cu, built when CMake finds
// NCCL: M6_HAVE_NCCL=1). Plain C++ so that core/ needs no CUDA header.
//
// - One rank per GPU: the communicator runs on the CUDA backend's device and
//   enqueues every collective on the backend's stream (ordered with the ops
//   around it), then waits for it with a deadline of parallel.timeout_s.
// - Buffers may be device memory (gradients, tokens) or host memory (scalars,
//   expert counts, metrics): host buffers are staged through device memory.
// - all_to_all_v is a group of ncclSend/ncclRecv; bf16/fp16 payloads
//   (all_reduce_f32, all_to_all_v_f32 with a half wire) are converted on the
//   device, and reductions add with NCCL's own half-precision arithmetic.
// - A collective that does not finish within the timeout, or that NCCL
//   reports failed, aborts the communicator (ncclCommAbort) and throws
//   CommTimeout naming the collective and the caller's label; app/ then ends
//   the job.
#pragma once
#include <memory>
#include <string>

#include "core/backend/backend.h"
#include "core/parallel/comm.h"

namespace m6 {

// Collective over `bootstrap` (the MPI world, or the single-process
// communicator for a world of one): rank 0 creates the NCCL unique id and
// broadcasts it over `bootstrap`, then every rank joins the NCCL
// communicator of bootstrap.size() ranks on the CUDA backend `be`'s device.
// Shares bootstrap's CommActivity (timeout and counters).
std::unique_ptr<Comm> make_nccl_comm(Comm& bootstrap, Backend& be);

// "2.28.9": the NCCL library loaded at run time.
std::string nccl_runtime_version();

}  // namespace m6
