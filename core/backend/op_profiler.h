// The op profiler (log.profile): a ForwardingBackend that times every op the
// model, the MoE layers and the optimizer issue between two marks of the
// wrapped backend (CUDA events on the GPU, the host clock on the CPU), and
// sums the times per op name. Marks are resolved at the next host read (the
// device has passed them then), so profiling adds no wait of its own but
// one stream sync before each host read. Graphs are off under the profiler
// (the ops of a replay are not seen one by one).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/backend/backend.h"

namespace m6 {

struct OpTime {
  std::string op;
  int64_t calls = 0;
  double ms = 0;  // summed device time between the op's two marks
};

// The ops timed since the last reset, most time first; empty when `be` is
// not a profiler. Resolves the marks still pending (syncs).
std::vector<OpTime> op_profile(Backend& be);
// Forgets the times so far (after the warm-up step).
void op_profile_reset(Backend& be);

}  // namespace m6
