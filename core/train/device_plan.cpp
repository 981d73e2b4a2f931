#include "core/train/device_plan.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>

#include "core/util/error.h"

namespace m6 {

namespace {

// "0, 2, 5 and 4 more"
std::string rank_list(const std::vector<int>& r) {
  std::string s;
  const size_t shown = std::min<size_t>(r.size(), 8);
  for (size_t i = 0; i < shown; ++i) s += (i ? ", " : "") + std::to_string(r[i]);
  if (r.size() > shown) s += fmt(" and ", r.size() - shown, " more");
  return s;
}

}  // namespace

int launcher_local_rank(const std::function<const char*(const char*)>& getenv_fn) {
  auto get = [&](const char* k) -> const char* {
    const char* v = getenv_fn ? getenv_fn(k) : std::getenv(k);
    return v && *v ? v : nullptr;
  };
  auto parse = [](const char* v) {
    char* end = nullptr;
    const long x = std::strtol(v, &end, 10);
    return end != v && *end == '\0' && x >= 0 && x < (1 << 20) ? static_cast<int>(x) : -1;
  };
  for (const char* k : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PALS_LOCAL_RANKID"})
    if (const char* v = get(k)) return parse(v);
  // Inside an sbatch script SLURM_LOCALID is the batch step's (0), not the rank's.
  if (get("SLURM_STEP_ID") && get("SLURM_LOCALID")) return parse(get("SLURM_LOCALID"));
  if (const char* v = get("LOCAL_RANK")) return parse(v);
  return -1;
}

std::vector<int> local_ranks(const std::vector<RankDevices>& ranks) {
  std::map<std::string, int> seen;
  std::vector<int> out(ranks.size());
  for (size_t r = 0; r < ranks.size(); ++r) {
    const int pos = seen[ranks[r].host]++;
    out[r] = ranks[r].env_local_rank >= 0 ? ranks[r].env_local_rank : pos;
  }
  return out;
}

DevicePlan plan_devices(const std::vector<RankDevices>& ranks, int my_rank, DeviceKind asked,
                        bool cuda_built, bool nccl_built, const std::string& source) {
  const int W = static_cast<int>(ranks.size());
  M6_CHECK(my_rank >= 0 && my_rank < W, "rank ", my_rank, " of ", W);
  DevicePlan plan;
  if (asked == DeviceKind::Cpu) return plan;
  const std::string where = source.empty() ? "" : source + ": ";
  if (!cuda_built) {
    if (asked == DeviceKind::Cuda)
      throw ConfigError(fmt(where, "train.device: cuda was asked for, but this m6train has no "
                                   "CUDA backend built in (configure with -DM6_CUDA=ON); use "
                                   "train.device: cpu or auto"));
    return plan;
  }
  std::vector<int> blind;
  for (int r = 0; r < W; ++r)
    if (ranks[r].gpus <= 0) blind.push_back(r);
  if (!blind.empty()) {
    const std::string who =
        W == 1 ? std::string("no CUDA device is visible")
               : fmt(blind.size(), " of ", W, " ranks see no CUDA device (rank ", rank_list(blind),
                     ", e.g. on host ", ranks[blind[0]].host, ")");
    if (asked == DeviceKind::Cuda)
      throw ConfigError(fmt(where, "train.device: cuda was asked for, but ", who,
                            "; run every rank on a GPU node (check CUDA_VISIBLE_DEVICES and "
                            "the driver with nvidia-smi) or use train.device: cpu"));
    plan.note = fmt("train.device auto: ", who, ", so every rank computes on the CPU");
    return plan;
  }
  if (W > 1 && !nccl_built) {
    const std::string msg =
        "this m6train was built without NCCL, which multi-rank CUDA training needs (install "
        "NCCL's headers and library -- the CUDA toolkit's, libnccl-dev, or the nvidia-nccl "
        "wheel -- and rebuild)";
    if (asked == DeviceKind::Cuda)
      throw ConfigError(fmt(where, "train.device: cuda with ", W, " ranks: ", msg,
                            "; or use train.device: cpu"));
    plan.note = fmt("train.device auto: ", msg, ", so every rank computes on the CPU");
    return plan;
  }
  // One rank per GPU: no two ranks of a host on the same device.
  const std::vector<int> lr = local_ranks(ranks);
  std::map<std::pair<std::string, std::string>, int> owner;  // (host, device) -> first rank
  for (int r = 0; r < W; ++r) {
    const std::string dev =
        ranks[r].uuid.empty() ? fmt("#", lr[r] % ranks[r].gpus) : ranks[r].uuid;
    const auto [it, fresh] = owner.emplace(std::make_pair(ranks[r].host, dev), r);
    if (fresh) continue;
    int on_host = 0;
    for (const RankDevices& x : ranks) on_host += x.host == ranks[r].host;
    throw ConfigError(fmt(
        where, "train.device: ", asked == DeviceKind::Cuda ? "cuda" : "auto", ": ", on_host,
        " ranks run on host ", ranks[r].host, ", which shows only ", ranks[r].gpus,
        " CUDA device(s) to each: ranks ", it->second, " and ", r, " would share GPU ",
        lr[r] % ranks[r].gpus, " (local ranks ", lr[it->second], " and ", lr[r],
        "). m6train uses one GPU per rank: start at most ", ranks[r].gpus,
        " ranks per node (mpirun --map-by ppr:", ranks[r].gpus, ":node, srun --ntasks-per-node=",
        ranks[r].gpus, "), make more GPUs visible (CUDA_VISIBLE_DEVICES), or use "
        "train.device: cpu"));
  }
  plan.cuda = true;
  plan.device = lr[my_rank] % ranks[my_rank].gpus;
  return plan;
}

DevicePlan agree_devices(Comm& world, DeviceKind asked, const std::string& source, int gpus,
                         const DeviceUuidFn& uuid_of, bool cuda_built, bool nccl_built) {
  const int W = world.size(), me = world.rank();
  constexpr size_t kHost = 64, kUuid = 48;
  std::vector<RankDevices> ranks(W);
  if (asked == DeviceKind::Cpu) return DevicePlan{};  // nothing to agree on
  CommLabel label(world.activity(), "device plan");
  {
    char host[kHost] = {0};
    if (gethostname(host, kHost - 1) != 0) std::strcpy(host, "?");
    host[kHost - 1] = '\0';
    std::vector<char> all_hosts(kHost * W);
    world.all_gather(host, all_hosts.data(), kHost, CommDType::U8);
    int64_t mine[2] = {gpus, launcher_local_rank()};
    std::vector<int64_t> all(2 * W);
    world.all_gather(mine, all.data(), 2, CommDType::I64);
    for (int r = 0; r < W; ++r) {
      ranks[r].host.assign(&all_hosts[kHost * r], strnlen(&all_hosts[kHost * r], kHost));
      ranks[r].gpus = static_cast<int>(all[2 * r]);
      ranks[r].env_local_rank = static_cast<int>(all[2 * r + 1]);
    }
  }
  {
    // The UUID of the device each rank would use, so that two ranks given
    // different CUDA_VISIBLE_DEVICES (srun --gpus-per-task) are told apart
    // from two ranks on the same GPU.
    char uuid[kUuid] = {0};
    const std::vector<int> lr = local_ranks(ranks);
    if (gpus > 0 && uuid_of) {
      const std::string u = uuid_of(lr[me] % gpus);
      std::strncpy(uuid, u.c_str(), kUuid - 1);
    }
    std::vector<char> all(kUuid * W);
    world.all_gather(uuid, all.data(), kUuid, CommDType::U8);
    for (int r = 0; r < W; ++r) ranks[r].uuid.assign(&all[kUuid * r], strnlen(&all[kUuid * r], kUuid));
  }
  return plan_devices(ranks, me, asked, cuda_built, nccl_built, source);
}

}  // namespace m6
