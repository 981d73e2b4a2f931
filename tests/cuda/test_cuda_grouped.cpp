// The grouped backward of the experts' linear layers (Backend::
// linear_bwd_grouped: two grouped GEMMs and one bias-gradient kernel on CUDA)
// against the CPU reference, which runs linear_bwd group by group. See
// test_cuda_ops.cpp for the conventions. Half mode (--compute bf16|fp16): dy,
// x and w are stored rounded, dx is rounded as the model rounds it, the
// weight gradients stay fp32.
#include <algorithm>
#include <cstdio>
#include <string>
#include <tuple>
#include <vector>

#include "core/backend/backend.h"
#include "core/parallel/half.h"
#include "tests/cuda/cuda_test_util.h"

using namespace m6;
using namespace m6::cuda_test;

void test_linear_bwd_grouped(Backend& c, Backend& g, Backend& g_bf16) {
  for (bool half : g_half ? std::vector<bool>{false} : std::vector<bool>{false, true}) {
    Backend& gg = half ? g_bf16 : g;
    for (auto [in, out] : {std::tuple{24, 72}, std::tuple{72, 24}, std::tuple{40, 257}}) {
      Twin t{c, gg};
      // Groups with gaps between them (rows no group owns must stay as they
      // were), an empty group, one without a bias.
      const int rows[] = {3, 0, 17, 1, 40}, gap = 2, E = 5;
      int64_t total = 0;
      std::vector<int64_t> at(E);
      for (int e = 0; e < E; ++e) at[e] = total, total += rows[e] + gap;
      auto round_all = [&](std::vector<float>& v) {
        if (half)
          for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
        return v;
      };
      std::vector<float> hx = randn(static_cast<size_t>(total) * in);
      std::vector<float> hdy = randn(static_cast<size_t>(total) * out);
      auto x = t.f(round_all(hx)), dy = t.f(round_all(hdy));
      std::vector<Twin::Buf> w, dw, db;
      double ga_dx = 0.0;
      for (int e = 0; e < E; ++e) {
        std::vector<float> hw = randn(static_cast<size_t>(out) * in, 0.2f);
        ga_dx = std::max(ga_dx, gemm_abs(out, hdy, hw));
        w.push_back(t.f(round_all(hw)));
        dw.push_back(t.f32(randn(static_cast<size_t>(out) * in, 0.1f)));  // accumulated onto
        db.push_back(t.f32(randn(out, 0.1f)));
      }
      const double ga_dw = gemm_abs(static_cast<int>(total), hdy, hx);
      auto dx = t.f32(std::vector<float>(static_cast<size_t>(total) * in, 7.0f));
      std::vector<Backend::LinearGradGroup> gc, gg_;
      for (int e = 0; e < E; ++e) {
        gc.push_back({w[e].fc(), dw[e].fc(), e == 3 ? nullptr : db[e].fc(), at[e], rows[e]});
        gg_.push_back({w[e].fg(), dw[e].fg(), e == 3 ? nullptr : db[e].fg(), at[e], rows[e]});
      }
      c.linear_bwd_grouped(dx.fc(), dy.fc(), x.fc(), gc.data(), E, in, out);
      gg.linear_bwd_grouped(dx.fg(), dy.fg(), x.fg(), gg_.data(), E, in, out);
      char name[96];
      std::snprintf(name, sizeof name, "linear_bwd_grouped%s in%d out%d", half ? " bf16" : "", in,
                    out);
      // The gap rows kept their poison on the device side (7 is exact in
      // every format, so check_f's rounding keeps it).
      t.check_f(std::string(name) + " dx", dx, kGemm, ga_dx);
      for (int e = 0; e < E; ++e) {
        t.check_f32(std::string(name) + " dw" + std::to_string(e), dw[e], kGemm, ga_dw);
        t.check_f32(std::string(name) + " db" + std::to_string(e), db[e], kReduce);
      }
      std::vector<float> hdx(static_cast<size_t>(total) * in);
      gg.to_host(hdx.data(), dx.fg(), hdx.size() * sizeof(float));
      bool kept = true;
      for (int e = 0; e < E; ++e)
        for (int64_t r = at[e] + rows[e]; r < at[e] + rows[e] + gap; ++r)
          for (int j = 0; j < in; ++j) kept = kept && hdx[static_cast<size_t>(r) * in + j] == 7.0f;
      expect_true(std::string(name) + ": rows outside the groups untouched", kept);
    }
  }
}

// The gradient norm's multi-tensor sum of squares against one sum_squares
// per tensor on the CPU: sizes around the piece size, an empty tensor, and a
// second call with another list (the CUDA piece table is cached per list).
void test_sum_squares_multi(Backend& c, Backend& g) {
  Twin t{c, g};
  for (const std::vector<size_t>& sizes :
       {std::vector<size_t>{1, 4095, 4096, 4097, 0, 100000, 3},
        std::vector<size_t>{70000, 5}}) {
    std::vector<Twin::Buf> bufs;
    std::vector<const float*> xs;
    std::vector<size_t> ns;
    std::vector<float> want;
    for (size_t n : sizes) {
      bufs.push_back(t.make(nullptr, 0));  // placeholder for n == 0 (no storage needed)
      if (n > 0) bufs.back() = t.f32(randn(n));  // gradients: fp32 in every mode
      ns.push_back(n);
      want.push_back(n > 0 ? static_cast<float>(c.sum_squares(bufs.back().fc(), n)) : 0.0f);
      xs.push_back(bufs.back().fg());
    }
    std::vector<double> out(sizes.size(), -1.0);
    for (int rep = 0; rep < 2; ++rep) {  // the second call reuses the table
      g.sum_squares_multi(out.data(), xs.data(), ns.data(), xs.size());
      std::vector<float> got(out.begin(), out.end());
      expect_close("sum_squares_multi " + std::to_string(sizes.size()) + " tensors, call " +
                       std::to_string(rep + 1),
                   got, want, kReduce);
    }
  }
}
