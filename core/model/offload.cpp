#include "core/model/offload.h"

#include <algorithm>
#include <cmath>

namespace m6 {

std::vector<OffloadPlacement> place_offload(const std::vector<Chunk>& chunks,
                                            const OffloadConfig& o) {
  std::vector<size_t> order;
  for (size_t i = 0; i < chunks.size(); ++i)
    if (chunks[i].kind == ChunkKind::Layer || chunks[i].kind == ChunkKind::Expert)
      order.push_back(i);
  for (size_t i = 0; i < chunks.size(); ++i)
    if (chunks[i].kind == ChunkKind::Embedding || chunks[i].kind == ChunkKind::Head)
      order.push_back(i);
  double total = 0;
  for (const Chunk& c : chunks) total += static_cast<double>(c.numel);
  std::vector<OffloadPlacement> out(chunks.size());
  // Prefix of `order` for fraction f: chunk i is taken while the parameters
  // before it plus half of its own stay within f * total.
  auto take = [&](double f, bool streamable_only, bool OffloadPlacement::*field) {
    if (f <= 0.0) return;
    double acc = 0;
    for (size_t i : order) {
      const Chunk& c = chunks[i];
      if (streamable_only && c.kind != ChunkKind::Layer && c.kind != ChunkKind::Expert) break;
      const double n = static_cast<double>(c.numel);
      if (f < 1.0 && acc + 0.5 * n > f * total) break;
      out[i].*field = true;
      acc += n;
    }
  };
  take(o.optimizer, false, &OffloadPlacement::adam_on_host);
  take(o.params, true, &OffloadPlacement::master_on_host);
  return out;
}

size_t offload_piece_floats(const OffloadConfig& o) {
  const double floats = o.chunk_mb * 1024.0 * 1024.0 / sizeof(float);
  return std::max<size_t>(16, static_cast<size_t>(std::floor(floats)));
}

}  // namespace m6
