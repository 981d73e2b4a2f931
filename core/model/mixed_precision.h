// precision.compute: bf16|fp16 (DESIGN.md section 5), the same semantics on
// every backend. The fp32 master weights and Adam moments stay as they are;
// the forward and backward read a compute copy of the weights rounded to the
// half type (round to nearest even), every activation and activation gradient
// is stored rounded where the table in cuda/README.md says, GEMMs accumulate
// in fp32, and LayerNorm, softmax, the router, the loss and every reduction
// compute in fp32. Storage stays fp32: a rounded value is exactly
// representable in the half type, so the CPU backend is an exact emulation of
// a half-precision kernel that rounds where these calls round, and the CUDA
// backend rounds in the same places (the same Backend::round_half op).
#pragma once
#include <cstddef>
#include <optional>
#include <vector>

#include "core/backend/backend.h"
#include "core/config/config.h"
#include "core/model/device_arena.h"
#include "core/model/params.h"

namespace m6 {

// The half type of precision.compute; nullopt for fp32.
std::optional<HalfType> compute_half_type(Precision p);

// Stores activations in the compute type: round(x) in place, nothing in fp32.
class ActRound {
 public:
  ActRound() = default;
  ActRound(Backend& be, std::optional<HalfType> t) : be_(&be), t_(t) {}
  bool active() const { return t_.has_value(); }
  std::optional<HalfType> type() const { return t_; }
  void operator()(float* x, size_t n) const {
    if (t_ && n > 0) be_->round_half(x, n, *t_);
  }

 private:
  Backend* be_ = nullptr;
  std::optional<HalfType> t_;
};

// Tensors whose compute copy stays fp32: LayerNorm weights and biases (the
// LayerNorm computes in fp32) and the router (DESIGN.md section 3).
bool keeps_fp32_compute_copy(const ParamTensor& t);

// The compute copy of a model's chunks: one buffer of numel floats per chunk,
// set as Chunk::compute, refreshed from the master weights with refresh().
class ComputeWeights {
 public:
  ComputeWeights(Backend& be, std::vector<Chunk>& chunks, HalfType t);
  // compute = round(param), tensor by tensor (fp32-kept tensors copied).
  void refresh(const std::vector<Chunk>& chunks);

 private:
  Backend& be_;
  HalfType t_;
  DeviceArena arena_;
};

}  // namespace m6
