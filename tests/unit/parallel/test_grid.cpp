// Single-process tests of the parallel layer: the process-grid arithmetic,
// launcher detection, the self communicator, timeout messages, and the
// gradient buckets against a fake communicator whose result is known.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/parallel/comm.h"
#include "core/parallel/comm_wait.h"
#include "core/parallel/grad_buckets.h"
#include "core/parallel/grid.h"
#include "core/parallel/half.h"
#include "core/parallel/mpi_session.h"

using namespace m6;

TEST_CASE("grid: EP groups are consecutive ranks, expert-DP groups share rank % ep", "[grid]") {
  const int W = 8, E = 16;
  for (int ep : {1, 2, 4, 8}) {
    std::map<int, std::set<int>> ep_groups, edp_groups;
    std::vector<int> holders(E, 0);
    for (int r = 0; r < W; ++r) {
      const GridLayout g = grid_layout(W, r, ep);
      CHECK(g.ep_rank == r % ep);
      ep_groups[g.ep_group].insert(r);
      edp_groups[g.ep_rank].insert(r);
      CHECK(g.edp_size == W / ep);
      CHECK(g.expert_count(E) == E / ep);
      for (int e = g.first_expert(E); e < g.first_expert(E) + g.expert_count(E); ++e) holders[e]++;
    }
    CHECK(ep_groups.size() == static_cast<size_t>(W / ep));
    for (const auto& [grp, ranks] : ep_groups) {
      CHECK(ranks.size() == static_cast<size_t>(ep));
      CHECK(*ranks.begin() == grp * ep);
      CHECK(*ranks.rbegin() == grp * ep + ep - 1);
    }
    CHECK(edp_groups.size() == static_cast<size_t>(ep));
    // Every expert is held by exactly one rank of each EP group.
    for (int e = 0; e < E; ++e) CHECK(holders[e] == W / ep);
  }
  CHECK_THROWS_AS(grid_layout(6, 0, 4), ConfigError);
  CHECK(describe_grid(grid_layout(4, 0, 2), 4) ==
        "world 4, ep 2: EP groups {0,1} {2,3}, expert-DP groups {0,2} {1,3}; "
        "EP rank j holds experts [2j, 2j+2) of 4");
}

TEST_CASE("launcher detection reads mpirun, PMIx, PMI and srun variables", "[grid]") {
  auto with = [](std::map<std::string, std::string> env) {
    return detect_parallel_launcher([env](const char* k) -> const char* {
      auto it = env.find(k);
      return it == env.end() ? nullptr : it->second.c_str();
    });
  };
  CHECK(with({}) == "");
  CHECK(with({{"OMPI_COMM_WORLD_SIZE", "4"}}) == "mpirun");
  CHECK(with({{"PMIX_RANK", "0"}}) == "pmix");
  CHECK(with({{"PMI_RANK", "3"}}) == "pmi");
  CHECK(with({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}}) == "srun");
  // A batch script's own environment (one task) is not a parallel launch.
  CHECK(with({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}}) == "");
  CHECK(with({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}, {"SLURM_STEP_NUM_TASKS", "1"}}) == "");
}

TEST_CASE("self communicator: a world of one", "[comm]") {
  auto c = make_self_comm();
  CHECK(c->size() == 1);
  CHECK(c->rank() == 0);
  float v[3] = {1, 2, 3};
  c->all_reduce(v, 3, CommDType::F32, ReduceOp::Sum);
  c->all_reduce_f32(v, 3, ReduceOp::Sum, CommDType::BF16, 1.0f);  // nothing travels: no rounding
  CHECK(v[0] == 1.0f);
  CHECK(v[2] == 3.0f);
  const float send[4] = {5, 6, 7, 8};
  float recv[4] = {0, 0, 0, 0};
  const int64_t sc[1] = {3}, sd[1] = {1}, rc[1] = {3}, rd[1] = {0};
  c->all_to_all_v(send, sc, sd, recv, rc, rd, CommDType::F32);
  CHECK(recv[0] == 6.0f);
  CHECK(recv[2] == 8.0f);
  auto sub = c->split(0, 0);
  CHECK(&sub->activity() == &c->activity());
  CHECK(c->all_reduce_scalar(2.5, ReduceOp::Sum) == 2.5);
}

TEST_CASE("a collective that never completes times out naming step, op and label", "[comm]") {
  CommActivity a;
  a.timeout_s = 0.05;
  a.step = 12;
  CommLabel outer(a, "outer");
  {
    CommLabel label(a, "layer 3 dispatch");
    try {
      wait_collective([] { return false; }, a, "all_to_all_v", "ep", 2);
      FAIL("no timeout");
    } catch (const CommTimeout& e) {
      const std::string m = e.what();
      CHECK_THAT(m, Catch::Contains("step 12: timed out after"));
      CHECK_THAT(m, Catch::Contains("waiting in all_to_all_v (layer 3 dispatch)"));
      CHECK_THAT(m, Catch::Contains("ep communicator (2 ranks)"));
    }
  }
  CHECK(a.label == "outer");  // restored
  a.timeout_s = 60;
  int polls = 0;
  const double waited = wait_collective([&] { return ++polls == 5000; }, a, "barrier", "world", 4);
  CHECK(polls == 5000);
  CHECK(waited < 60);
}

namespace {

// A communicator of `size` ranks that all hold the same data: a sum is the
// value times size. Records the element count of every all-reduce.
class FakeComm final : public Comm {
 public:
  explicit FakeComm(int size) : Comm(nullptr), size_(size) {}
  int rank() const override { return 0; }
  int size() const override { return size_; }
  std::string name() const override { return "fake"; }
  void all_reduce(void* buf, size_t count, CommDType t, ReduceOp) override {
    counts.push_back(count);
    types.push_back(t);
    for (size_t i = 0; i < count; ++i) {
      if (t == CommDType::F32) {
        static_cast<float*>(buf)[i] *= static_cast<float>(size_);
      } else {
        uint16_t& h = static_cast<uint16_t*>(buf)[i];
        const float x = t == CommDType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
        h = t == CommDType::BF16 ? f32_to_bf16(x * size_) : f32_to_f16(x * size_);
      }
    }
  }
  void all_to_all_v(const void*, const int64_t*, const int64_t*, void*, const int64_t*,
                    const int64_t*, CommDType) override {}
  void all_gather(const void*, void*, size_t, CommDType) override {}
  void broadcast(void*, size_t, CommDType, int) override {}
  void barrier() override {}
  std::unique_ptr<Comm> split(int, int) override { return nullptr; }
  std::vector<size_t> counts;
  std::vector<CommDType> types;

 private:
  int size_;
};

}  // namespace

TEST_CASE("gradient buckets: packed and split buckets reduce every element once", "[buckets]") {
  auto be = make_cpu_backend(1);
  // Spans of 30, 50, 10, 250 (larger than a bucket: split 100+100+50), 0, 60, 45 floats.
  const std::vector<size_t> sizes = {30, 50, 10, 250, 0, 60, 45};
  std::vector<float*> bufs;
  std::vector<GradSpan> spans;
  for (size_t i = 0; i < sizes.size(); ++i) {
    float* p = static_cast<float*>(be->alloc(std::max<size_t>(1, sizes[i]) * sizeof(float)));
    std::vector<float> host(sizes[i]);
    for (size_t j = 0; j < sizes[i]; ++j) host[j] = static_cast<float>(i + 1) + 0.001f * j;
    be->to_device(p, host.data(), sizes[i] * sizeof(float));
    bufs.push_back(p);
    spans.push_back({p, sizes[i]});
  }
  GradBuckets buckets(*be, spans, 100 * sizeof(float));
  // [30+50+10] [100] [100] [50] [60] [45]: 45 does not fit beside 60.
  CHECK(buckets.bucket_count() == 6);
  FakeComm comm(3);
  buckets.all_reduce_sum(comm, CommDType::F32, "test");
  CHECK(comm.counts == std::vector<size_t>{90, 100, 100, 50, 60, 45});
  int wrong = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    std::vector<float> host(sizes[i]);
    be->to_host(host.data(), bufs[i], sizes[i] * sizeof(float));
    for (size_t j = 0; j < sizes[i]; ++j)
      wrong += host[j] != 3.0f * (static_cast<float>(i + 1) + 0.001f * j);
  }
  CHECK(wrong == 0);

  // Half precision on the wire: fp16 with the gradient scale, values back within fp16 rounding.
  comm.counts.clear();
  buckets.all_reduce_sum(comm, CommDType::F16, "test");
  CHECK(comm.types.back() == CommDType::F16);
  wrong = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    std::vector<float> host(sizes[i]);
    be->to_host(host.data(), bufs[i], sizes[i] * sizeof(float));
    for (size_t j = 0; j < sizes[i]; ++j) {
      const float want = 9.0f * (static_cast<float>(i + 1) + 0.001f * j);
      wrong += std::fabs(host[j] - want) > want * 0x1.0p-10f;
    }
  }
  CHECK(wrong == 0);
  // A 1-rank group has nothing to add and issues no collective.
  FakeComm one(1);
  buckets.all_reduce_sum(one, CommDType::F32, "test");
  CHECK(one.counts.empty());
  for (float* p : bufs) be->release(p);
}
