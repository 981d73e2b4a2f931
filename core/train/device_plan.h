// Which device each rank trains on (train.device), agreed by every rank
// before anything is allocated. One rank per GPU: a rank uses GPU
// `local rank % visible GPUs` of its node, the local rank taken from the
// launcher's environment (launcher_local_rank) or, when none is set, the
// rank's position among the ranks on the same host. `auto` uses CUDA (and
// NCCL between ranks) when every rank sees a GPU; `cuda` requires it.
// Bad layouts are config errors (exit 2) raised identically on every rank,
// since every rank decides from the same gathered facts:
//   - train.device: cuda and some rank sees no GPU (or CUDA is not built in);
//   - several ranks of a node would share one GPU (more ranks per node than
//     visible GPUs), with cuda or auto;
//   - several ranks with CUDA but m6train was built without NCCL.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/config/config.h"
#include "core/parallel/comm.h"

namespace m6 {

// The local rank (0-based index of this process among the job's processes on
// its node) that the launcher put in the environment, or -1 when none did:
// OMPI_COMM_WORLD_LOCAL_RANK (Open MPI), SLURM_LOCALID (srun), MPI_LOCALRANKID
// (MPICH/Hydra), PALS_LOCAL_RANKID (Cray PALS), LOCAL_RANK (torchrun-style).
// SLURM_LOCALID counts only under srun (SLURM_STEP_ID set), not inside an
// sbatch script where mpirun starts the ranks. `getenv_fn` is for the tests.
int launcher_local_rank(const std::function<const char*(const char*)>& getenv_fn = nullptr);

// What one rank sees, gathered over the world.
struct RankDevices {
  std::string host;        // host name
  int gpus = 0;            // CUDA devices visible to the rank
  int env_local_rank = -1; // launcher_local_rank()
  std::string uuid;        // UUID of the device the rank would use ("" when none / unknown)
};

// Local rank of every rank: the launcher's when given, else its index among
// the ranks with the same host name (in rank order).
std::vector<int> local_ranks(const std::vector<RankDevices>& ranks);

struct DevicePlan {
  bool cuda = false;  // CUDA backend on `device` (NCCL between ranks when world > 1)
  int device = -1;
  std::string note;   // why auto chose the CPU, for the log ("" otherwise)
};

// The decision, a pure function of the gathered facts (unit-tested). `uuid`
// of every rank must already be that of the device it would use
// (local rank % gpus). Throws ConfigError naming what to change.
DevicePlan plan_devices(const std::vector<RankDevices>& ranks, int my_rank, DeviceKind asked,
                        bool cuda_built, bool nccl_built, const std::string& source);

// How a rank learns the UUID of device i (cuda_device_uuid in CUDA builds).
using DeviceUuidFn = std::function<std::string(int device)>;

// Collective over `world` (host buffers): gathers every rank's facts and
// returns plan_devices of them. `gpus` and `uuid_of` describe this rank's
// CUDA devices (0 and null without CUDA).
DevicePlan agree_devices(Comm& world, DeviceKind asked, const std::string& source, int gpus,
                         const DeviceUuidFn& uuid_of, bool cuda_built, bool nccl_built);

}  // namespace m6
