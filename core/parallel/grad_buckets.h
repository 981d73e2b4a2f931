// Gradient all-reduce in size-bounded buckets (DESIGN.md section 4; EPL fuses
// gradients into a few buckets). Gradients live in many separate buffers (one
// per parameter chunk); reducing each alone pays the collective's latency per
// chunk, reducing all at once needs a staging buffer the size of the model.
// A bucket holds at most `bucket_bytes` of fp32: consecutive small buffers are
// packed into one staging buffer, reduced, and unpacked; a buffer larger than
// a bucket is reduced in place, in bucket-sized pieces.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "core/backend/backend.h"
#include "core/parallel/comm.h"

namespace m6 {

constexpr size_t kGradBucketBytes = size_t{16} << 20;  // 16 MiB of fp32 per bucket

struct GradSpan {
  float* data = nullptr;  // device buffer of n floats
  size_t n = 0;
};

// Gradient payloads on an fp16 wire get the fixed kFp16GradCommScale so that
// small values keep their precision -- unless they already carry the fp16
// loss scale (precision.compute: fp16), which the dynamic scaler sizes so
// that the scaled gradients fit fp16; a second scale would overflow them.
enum class GradWire { Unscaled, LossScaled };
inline float grad_wire_scale(CommDType wire, GradWire g) {
  return g == GradWire::LossScaled ? 1.0f : grad_comm_scale(wire);
}

class GradBuckets {
 public:
  GradBuckets(Backend& be, std::vector<GradSpan> spans, size_t bucket_bytes = kGradBucketBytes);
  ~GradBuckets();
  GradBuckets(const GradBuckets&) = delete;
  GradBuckets& operator=(const GradBuckets&) = delete;

  // Sums every span over `comm` (in place) with the payload in `wire`
  // precision (fp16 with the fixed gradient scale). Collective over comm;
  // `what` labels the buckets in timeout messages ("dense grads").
  void all_reduce_sum(Comm& comm, CommDType wire, const std::string& what,
                      GradWire g = GradWire::Unscaled);

  size_t bucket_count() const { return buckets_.size(); }
  const std::vector<GradSpan>& spans() const { return spans_; }

 private:
  struct Piece {
    float* data;
    size_t n;
    size_t at;  // offset in the staging buffer (packed buckets)
  };
  struct Bucket {
    std::vector<Piece> pieces;
    size_t n = 0;
    bool packed = false;  // several pieces: goes through the staging buffer
  };
  Backend& be_;
  std::vector<GradSpan> spans_;
  std::vector<Bucket> buckets_;
  float* staging_ = nullptr;
};

}  // namespace m6
