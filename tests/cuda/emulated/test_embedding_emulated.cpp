// The token embedding's gradient kernel (cuda/kernels/embedding_bwd.cuh) run
// on the host through cuda_emulation.h against the CPU reference's
// arithmetic: dwte[tokens[r], j] += dx[r, j] for the rows in order, in fp32,
// so the result must be bit-identical. Repeated tokens, tokens in the same
// bucket, rows over several staged tiles (a 64-token tile as well as the
// kernel's own), and two column blocks with a partial second. Exit code 0
// when every check passes.
#include "tests/cuda/emulated/cuda_emulation.h"
// (the emulation first: the kernel uses its built-ins)
#include "cuda/kernels/embedding_bwd.cuh"

#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace {

namespace cu = m6::cuda;
namespace emu = m6::cuda_emu;

int g_failed = 0, g_checks = 0;

template <int Tile>
void run_shape(int rows, int d, int V, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  // skewed tokens: many repeats, neighbours in one bucket (t and t + 64)
  std::uniform_int_distribution<int> pick(0, V - 1), coin(0, 3);
  std::vector<int32_t> tok(rows);
  for (auto& t : tok) t = coin(rng) == 0 ? pick(rng) : (coin(rng) < 2 ? 0 : (V - 1));
  std::vector<float> dx(static_cast<size_t>(rows) * d), want(static_cast<size_t>(V) * d);
  for (auto& v : dx) v = nd(rng);
  for (auto& v : want) v = nd(rng);
  std::vector<float> got = want;
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < d; ++j) want[static_cast<size_t>(tok[r]) * d + j] += dx[static_cast<size_t>(r) * d + j];
  const unsigned col_blocks = (d + cu::kWteThreads - 1) / cu::kWteThreads;
  emu::launch_grid({col_blocks, cu::kWteBuckets, 1}, cu::kWteThreads, [&] {
    cu::embedding_bwd_wte_bucket_kernel<Tile>(got.data(), dx.data(), tok.data(), rows, d);
  });
  ++g_checks;
  if (std::memcmp(got.data(), want.data(), want.size() * sizeof(float)) != 0) {
    ++g_failed;
    size_t bad = 0;
    for (size_t i = 0; i < want.size(); ++i) bad += std::memcmp(&got[i], &want[i], 4) != 0;
    std::printf("FAIL embedding_bwd wte rows %d d %d V %d tile %d: %zu of %zu values differ\n",
                rows, d, V, Tile, bad, want.size());
  }
}

}  // namespace

int main() {
  std::mt19937 rng(11);
  run_shape<64>(1, 5, 3, rng);
  run_shape<64>(200, 67, 130, rng);   // 4 tiles, the last partial; tokens 0, 64, 128 share a bucket
  run_shape<64>(129, 300, 257, rng);  // two column blocks
  run_shape<cu::kWteTile>(2500, 40, 300, rng);
  std::printf("embedding emulated: %d of %d checks failed\n", g_failed, g_checks);
  return g_failed == 0 ? 0 : 1;
}
