// train.device across ranks (core/train/device_plan.h): the local rank from
// the launcher's environment, one GPU per rank, and the layouts that are
// config errors on every rank (no GPU, more ranks per node than GPUs, no NCCL).
#include <catch2/catch.hpp>

#include <map>
#include <string>
#include <thread>

#include "core/train/device_plan.h"
#include "core/util/error.h"
#include "tests/unit/ckpt/thread_comm.h"

using namespace m6;

namespace {

RankDevices rd(const std::string& host, int gpus, int env_lr = -1, const std::string& uuid = "") {
  RankDevices r;
  r.host = host;
  r.gpus = gpus;
  r.env_local_rank = env_lr;
  r.uuid = uuid;
  return r;
}

// The message of the ConfigError plan_devices throws ("" when none).
std::string plan_error(const std::vector<RankDevices>& ranks, int me, DeviceKind k,
                       bool nccl = true) {
  try {
    plan_devices(ranks, me, k, true, nccl, "cfg.yaml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("launcher_local_rank reads the launcher's variable", "[device]") {
  std::map<std::string, std::string> env;
  auto get = [&](const char* k) -> const char* {
    auto it = env.find(k);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  CHECK(launcher_local_rank(get) == -1);
  env["LOCAL_RANK"] = "5";
  CHECK(launcher_local_rank(get) == 5);
  env["SLURM_LOCALID"] = "2";  // without SLURM_STEP_ID: the sbatch script's own, ignored
  CHECK(launcher_local_rank(get) == 5);
  env["SLURM_STEP_ID"] = "0";
  CHECK(launcher_local_rank(get) == 2);
  env["OMPI_COMM_WORLD_LOCAL_RANK"] = "3";  // Open MPI's wins
  CHECK(launcher_local_rank(get) == 3);
  env["OMPI_COMM_WORLD_LOCAL_RANK"] = "x1";
  CHECK(launcher_local_rank(get) == -1);
}

TEST_CASE("local ranks: the launcher's, else the position among ranks on the host", "[device]") {
  CHECK(local_ranks({rd("a", 2), rd("b", 2), rd("a", 2), rd("b", 2)}) ==
        std::vector<int>{0, 0, 1, 1});
  CHECK(local_ranks({rd("a", 2, 1), rd("a", 2, 0)}) == std::vector<int>{1, 0});
}

TEST_CASE("device plan: cpu, auto and cuda with one GPU per rank", "[device]") {
  const std::vector<RankDevices> two_nodes = {rd("n0", 2, 0, "u00"), rd("n0", 2, 1, "u01"),
                                              rd("n1", 2, 0, "u10"), rd("n1", 2, 1, "u11")};
  for (int me = 0; me < 4; ++me) {
    const DevicePlan p = plan_devices(two_nodes, me, DeviceKind::Cuda, true, true, "c");
    CHECK(p.cuda);
    CHECK(p.device == me % 2);
    CHECK(plan_devices(two_nodes, me, DeviceKind::Auto, true, true, "c").cuda);
    CHECK_FALSE(plan_devices(two_nodes, me, DeviceKind::Cpu, true, true, "c").cuda);
  }
  // srun --gpus-per-task=1: every rank sees one (different) GPU as device 0.
  const std::vector<RankDevices> isolated = {rd("n0", 1, 0, "ua"), rd("n0", 1, 1, "ub")};
  CHECK(plan_devices(isolated, 1, DeviceKind::Cuda, true, true, "c").device == 0);
  // A build without CUDA: auto is the CPU, cuda an error.
  CHECK_FALSE(plan_devices({rd("a", 0)}, 0, DeviceKind::Auto, false, false, "c").cuda);
  CHECK_THROWS_WITH(plan_devices({rd("a", 0)}, 0, DeviceKind::Cuda, false, false, "c"),
                    Catch::Contains("no CUDA backend built in"));
}

TEST_CASE("device plan: GPUs missing on some rank", "[device]") {
  const std::vector<RankDevices> mixed = {rd("g0", 4, 0, "u0"), rd("c0", 0, 0), rd("c1", 0, 0)};
  for (int me = 0; me < 3; ++me) {
    const std::string e = plan_error(mixed, me, DeviceKind::Cuda);
    CHECK_THAT(e, Catch::Contains("cfg.yaml: train.device: cuda was asked for"));
    CHECK_THAT(e, Catch::Contains("2 of 3 ranks see no CUDA device (rank 1, 2"));
    CHECK_THAT(e, Catch::Contains("train.device: cpu"));
    const DevicePlan a = plan_devices(mixed, me, DeviceKind::Auto, true, true, "c");
    CHECK_FALSE(a.cuda);  // auto: every rank on the CPU together
    CHECK_THAT(a.note, Catch::Contains("every rank computes on the CPU"));
  }
  CHECK_THAT(plan_error({rd("a", 0)}, 0, DeviceKind::Cuda),
             Catch::Contains("no CUDA device is visible"));
}

TEST_CASE("device plan: more ranks on a node than GPUs is an error on every rank", "[device]") {
  // 3 ranks on a host with 2 GPUs: ranks 0 and 2 would share GPU 0.
  const std::vector<RankDevices> r = {rd("n0", 2, 0, "u0"), rd("n0", 2, 1, "u1"),
                                      rd("n0", 2, 2, "u0")};
  for (DeviceKind k : {DeviceKind::Cuda, DeviceKind::Auto})
    for (int me = 0; me < 3; ++me) {
      const std::string e = plan_error(r, me, k);
      CHECK_THAT(e, Catch::Contains("3 ranks run on host n0, which shows only 2 CUDA device(s)"));
      CHECK_THAT(e, Catch::Contains("ranks 0 and 2 would share GPU 0"));
      CHECK_THAT(e, Catch::Contains("start at most 2 ranks per node"));
    }
  // Without UUIDs the device index decides.
  CHECK_FALSE(plan_error({rd("n0", 1, 0), rd("n0", 1, 1)}, 0, DeviceKind::Cuda).empty());
  CHECK(plan_error({rd("n0", 1, 0), rd("n1", 1, 0)}, 0, DeviceKind::Cuda).empty());
}

TEST_CASE("device plan: several CUDA ranks need NCCL", "[device]") {
  const std::vector<RankDevices> r = {rd("n0", 2, 0, "u0"), rd("n0", 2, 1, "u1")};
  CHECK_THAT(plan_error(r, 0, DeviceKind::Cuda, false), Catch::Contains("built without NCCL"));
  CHECK_FALSE(plan_devices(r, 0, DeviceKind::Auto, true, false, "c").cuda);
  CHECK(plan_devices({rd("n0", 2, 0, "u0")}, 0, DeviceKind::Cuda, true, false, "c").cuda);
}

TEST_CASE("agree_devices: every rank of a world reaches the same verdict", "[device]") {
  // Four thread-ranks on this host; `gpus` visible to each.
  auto run = [](int gpus, bool per_rank_uuid) {
    auto shared = std::make_shared<test::ThreadCommShared>(4);
    std::vector<std::string> verdict(4);
    std::vector<std::thread> th;
    for (int r = 0; r < 4; ++r)
      th.emplace_back([&, r] {
        test::ThreadComm c(shared, r);
        const DeviceUuidFn uuid = [&](int d) {
          return per_rank_uuid ? fmt("gpu-of-rank-", r) : fmt("gpu-", d);
        };
        try {
          const DevicePlan p =
              agree_devices(c, DeviceKind::Cuda, "cfg.yaml", gpus, uuid, true, true);
          verdict[r] = fmt("cuda:", p.device);
        } catch (const ConfigError& e) {
          verdict[r] = e.what();
        }
      });
    for (auto& t : th) t.join();
    return verdict;
  };
  const auto four = run(4, false);
  CHECK(four == std::vector<std::string>{"cuda:0", "cuda:1", "cuda:2", "cuda:3"});
  const auto two = run(2, false);
  for (const std::string& v : two) {
    CHECK(v == two[0]);
    CHECK_THAT(v, Catch::Contains("4 ranks run on host"));
  }
  const auto isolated = run(1, true);  // one distinct GPU each
  CHECK(isolated == std::vector<std::string>{"cuda:0", "cuda:0", "cuda:0", "cuda:0"});
}
