// The two-pass column sums of cuda/kernels/colsum.cuh (bias and LayerNorm
// weight gradients) run on the host through cuda_emulation.h: every row is
// counted once (sums of ones are exact), the sums match the CPU reference's
// single pass in row order (double, then float) to the last bit or within
// the double association error, and two runs are bit-identical. Shapes cover
// one chunk, a partial last chunk, the most chunks (128) and empty trailing
// chunks; and the grouped form (the experts' bias gradients). Exit code 0
// when every check passes.
#include "tests/cuda/emulated/cuda_emulation.h"
// (the emulation first: colsum.cuh's kernels use its built-ins)
#include "cuda/kernels/colsum.cuh"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace {

namespace cu = m6::cuda;
namespace emu = m6::cuda_emu;

int g_failed = 0, g_checks = 0;
void check(bool ok, const char* what, int n, int c, double detail) {
  ++g_checks;
  if (!ok) {
    ++g_failed;
    std::printf("FAIL %s n %d c %d (%g)\n", what, n, c, detail);
  }
}

// The same terms as dense.cu (bias) and transformer.cu (LayerNorm).
struct BiasTerm {
  const float* dy;
  int c;
  void operator()(int r, int j, double* acc) const { acc[0] += dy[static_cast<int64_t>(r) * c + j]; }
};
struct LnTerm {
  const float *dy, *x, *mean, *rstd;
  int d;
  void operator()(int r, int j, double* acc) const {
    const int64_t o = static_cast<int64_t>(r) * d + j;
    const double mu = mean[r], rs = rstd[r];
    acc[0] += static_cast<double>(dy[o]) * ((x[o] - mu) * rs);
    acc[1] += dy[o];
  }
};

// The launcher's two passes on the emulated grid.
template <int K, class Term>
void colsum(float* out0, float* out1, Term term, int n, int c) {
  std::vector<double> partial(cu::colsum_scratch(n, c, K), std::nan(""));
  const cu::ColsumGrid gr = cu::colsum_grid(n, c);
  const auto col_blocks = static_cast<unsigned>(gr.col_blocks);
  emu::launch_serial({col_blocks, static_cast<unsigned>(gr.chunks), 1}, cu::kColThreads, [&] {
    cu::colsum_partial_kernel<K>(partial.data(), term, n, c, gr.per_chunk);
  });
  emu::launch_serial({col_blocks, 1, 1}, cu::kColThreads,
                     [&] { cu::colsum_final_kernel<K>(out0, out1, partial.data(), gr.chunks, c); });
}

void run_shape(int n, int c, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  const size_t nc = static_cast<size_t>(n) * c;
  // every row once: sums of ones are exact
  std::vector<float> ones(nc, 1.0f), db(c, 0.5f);
  colsum<1>(db.data(), nullptr, BiasTerm{ones.data(), c}, n, c);
  bool exact = true;
  for (int j = 0; j < c; ++j) exact &= db[j] == static_cast<float>(n) + 0.5f;
  check(exact, "sum of ones", n, c, db[0]);

  std::vector<float> dy(nc), x(nc), mean(n), rstd(n);
  for (auto& v : dy) v = nd(rng);
  for (auto& v : x) v = 2.0f * nd(rng);
  for (int r = 0; r < n; ++r) mean[r] = 0.1f * nd(rng), rstd[r] = 0.5f + std::fabs(nd(rng));
  std::vector<float> want_w(c), want_b(c), abs_w(c), abs_b(c);
  for (int j = 0; j < c; ++j) {
    double aw = 0, ab = 0, sw = 0, sb = 0;
    for (int r = 0; r < n; ++r) {
      double acc[2] = {0, 0};
      LnTerm{dy.data(), x.data(), mean.data(), rstd.data(), c}(r, j, acc);
      aw += acc[0], ab += acc[1], sw += std::fabs(acc[0]), sb += std::fabs(acc[1]);
    }
    want_w[j] = static_cast<float>(aw), want_b[j] = static_cast<float>(ab);
    abs_w[j] = static_cast<float>(sw), abs_b[j] = static_cast<float>(sb);
  }
  std::vector<float> dw(c, 0.0f), db2(c, 0.0f), dw_again(c, 0.0f), db_again(c, 0.0f);
  const LnTerm term{dy.data(), x.data(), mean.data(), rstd.data(), c};
  colsum<2>(dw.data(), db2.data(), term, n, c);
  colsum<2>(dw_again.data(), db_again.data(), term, n, c);
  double worst = 0;
  for (int j = 0; j < c; ++j) {
    // the float rounding of two double sums that differ by association only
    const double ew = std::fabs(dw[j] - want_w[j]) - 1e-7 * std::fabs(want_w[j]) - 1e-12 * abs_w[j];
    const double eb = std::fabs(db2[j] - want_b[j]) - 1e-7 * std::fabs(want_b[j]) - 1e-12 * abs_b[j];
    worst = std::max({worst, ew, eb});
  }
  check(worst <= 0, "layernorm dw/db vs the CPU's row order", n, c, worst);
  check(std::memcmp(dw.data(), dw_again.data(), c * sizeof(float)) == 0 &&
            std::memcmp(db2.data(), db_again.data(), c * sizeof(float)) == 0,
        "two runs bit-identical", n, c, 0);
}

// The experts' bias gradients: groups of their own row counts (0 rows, a
// few, one chunk, 128 chunks) at their offsets of one dy, one group without
// a bias (db null: untouched).
void run_grouped(std::mt19937& rng) {
  std::normal_distribution<float> nd;
  const int c = 300;
  const std::vector<int64_t> rows = {0, 5, 200, 9001, 70};
  std::vector<int64_t> row(rows.size());
  int64_t total = 0;
  for (size_t g = 0; g < rows.size(); ++g) row[g] = total, total += rows[g];
  std::vector<float> dy(static_cast<size_t>(total) * c);
  for (auto& v : dy) v = nd(rng);
  const int G = static_cast<int>(rows.size());
  std::vector<std::vector<float>> db(G, std::vector<float>(c, 0.25f));
  std::vector<float*> dbp(G);
  for (int g = 0; g < G; ++g) dbp[g] = db[g].data();
  dbp[4] = nullptr;  // no bias
  const int max_rows = 9001;
  const cu::ColsumGrid gr = cu::colsum_grid(max_rows, c);  // as launch_grouped_bias_grad
  std::vector<double> partial(cu::colsum_scratch(max_rows, c, G), std::nan(""));
  const auto col_blocks = static_cast<unsigned>(gr.col_blocks);
  emu::launch_serial({col_blocks, static_cast<unsigned>(gr.chunks), static_cast<unsigned>(G)},
                     cu::kColThreads, [&] {
                       cu::grouped_colsum_partial_kernel(partial.data(), dbp.data(), dy.data(),
                                                         row.data(), rows.data(), c, gr.chunks);
                     });
  emu::launch_serial({col_blocks, static_cast<unsigned>(G), 1}, cu::kColThreads, [&] {
    cu::grouped_colsum_final_kernel(dbp.data(), partial.data(), gr.chunks, c);
  });
  double worst = 0;
  for (int g = 0; g < 4; ++g)
    for (int j = 0; j < c; ++j) {
      double s = 0, a = 0;
      for (int64_t r = 0; r < rows[g]; ++r) {
        const double v = dy[static_cast<size_t>(row[g] + r) * c + j];
        s += v, a += std::fabs(v);
      }
      const float want = 0.25f + static_cast<float>(s);
      worst = std::max(worst, std::fabs(db[g][j] - want) - 1e-7 * std::fabs(want) - 1e-12 * a);
    }
  check(worst <= 0, "grouped bias sums vs the CPU's row order", total, c, worst);
  bool untouched = true;
  for (float v : db[4]) untouched &= v == 0.25f;
  check(untouched, "grouped: a group without a bias is left alone", total, c, 0);
  check(db[0][0] == 0.25f, "grouped: a group of 0 rows adds 0", total, c, db[0][0]);
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  // 1 row; a partial chunk; exactly one chunk; several; 128 chunks with a
  // partial last one; 128 chunks whose last ones are empty (8193 rows: 65
  // per chunk); two column blocks with a partial second.
  const int shapes[][2] = {{1, 1}, {63, 5}, {64, 300}, {257, 259}, {9001, 67}, {8193, 3}, {130, 513}};
  for (const auto& s : shapes) run_shape(s[0], s[1], rng);
  run_grouped(rng);
  std::printf("colsum emulated: %d of %d checks failed\n", g_failed, g_checks);
  return g_failed == 0 ? 0 : 1;
}
