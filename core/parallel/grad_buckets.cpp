#include "core/parallel/grad_buckets.h"

#include <algorithm>

#include "core/util/error.h"

namespace m6 {

GradBuckets::GradBuckets(Backend& be, std::vector<GradSpan> spans, size_t bucket_bytes)
    : be_(be), spans_(std::move(spans)) {
  const size_t cap = std::max<size_t>(1, bucket_bytes / sizeof(float));
  Bucket cur;
  auto flush = [&] {
    if (cur.pieces.empty()) return;
    cur.packed = cur.pieces.size() > 1;
    buckets_.push_back(std::move(cur));
    cur = Bucket{};
  };
  for (const GradSpan& s : spans_) {
    if (s.n == 0) continue;
    if (s.n >= cap) {  // its own in-place buckets, in pieces of at most cap
      flush();
      for (size_t at = 0; at < s.n; at += cap) {
        Bucket b;
        b.n = std::min(cap, s.n - at);
        b.pieces.push_back({s.data + at, b.n, 0});
        buckets_.push_back(std::move(b));
      }
      continue;
    }
    if (cur.n + s.n > cap) flush();
    cur.pieces.push_back({s.data, s.n, cur.n});
    cur.n += s.n;
  }
  flush();
  size_t staging = 0;
  for (const Bucket& b : buckets_)
    if (b.packed) staging = std::max(staging, b.n);
  if (staging) staging_ = static_cast<float*>(be_.alloc(staging * sizeof(float)));
}

GradBuckets::~GradBuckets() {
  if (staging_) be_.release(staging_);
}

void GradBuckets::all_reduce_sum(Comm& comm, CommDType wire, const std::string& what,
                                 GradWire g) {
  if (comm.size() == 1) return;  // nothing to add; every rank of a 1-rank group agrees
  const float scale = grad_wire_scale(wire, g);
  for (size_t i = 0; i < buckets_.size(); ++i) {
    const Bucket& b = buckets_[i];
    CommLabel label(comm.activity(), fmt(what, " bucket ", i + 1, "/", buckets_.size(), " (",
                                         b.n * sizeof(float), " bytes)"));
    if (!b.packed) {
      comm.all_reduce_f32(b.pieces[0].data, b.n, ReduceOp::Sum, wire, scale);
      continue;
    }
    for (const Piece& p : b.pieces) be_.copy(staging_ + p.at, p.data, p.n * sizeof(float));
    comm.all_reduce_f32(staging_, b.n, ReduceOp::Sum, wire, scale);
    for (const Piece& p : b.pieces) be_.copy(p.data, staging_ + p.at, p.n * sizeof(float));
  }
}

}  // namespace m6
