// Offload placement (core/model/offload.h) and its storage: the fractions
// pick prefixes of a fixed chunk order, host masters are a subset of host
// moments, the embedding and head never stream, the chosen buffers really
// come from the backend's host arena, and a streamed chunk cannot be used
// before it is streamed in. Also the byte-size parser of the memory keys.
#include <catch2/catch.hpp>

#include "core/model/offload.h"
#include "core/model/sharing.h"
#include "core/util/bytes.h"

using namespace m6;

namespace {

ModelConfig moe_model() {
  ModelConfig m;
  m.vocab_size = 64;
  m.max_seq_len = 8;
  m.d_model = 16;
  m.n_heads = 2;
  m.n_layers = 4;
  m.d_ff = 32;
  m.moe.every = 2;
  m.moe.experts = 4;
  return m;
}

double share(const std::vector<Chunk>& chunks, const std::vector<OffloadPlacement>& p,
             bool OffloadPlacement::*field) {
  double on = 0, all = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    all += static_cast<double>(chunks[i].numel);
    if (p[i].*field) on += static_cast<double>(chunks[i].numel);
  }
  return on / all;
}

}  // namespace

TEST_CASE("offload: fractions choose nested prefixes close to the share asked", "[offload]") {
  const std::vector<Chunk> chunks = plan_chunks(moe_model(), ExpertRange{0, 4});
  for (double f : {0.0, 0.25, 0.5, 0.75, 1.0}) {
    OffloadConfig o;
    o.optimizer = f;
    o.params = f / 2;
    const auto p = place_offload(chunks, o);
    const double got = share(chunks, p, &OffloadPlacement::adam_on_host);
    INFO("fraction " << f << " got " << got);
    // Within half of the largest chunk's share of the target.
    size_t largest = 0, total = 0;
    for (const Chunk& c : chunks) largest = std::max(largest, c.numel), total += c.numel;
    CHECK(std::abs(got - f) <=
          0.5 * static_cast<double>(largest) / static_cast<double>(total) + 1e-12);
    for (size_t i = 0; i < chunks.size(); ++i) {
      if (p[i].master_on_host) CHECK(p[i].adam_on_host);
      if (chunks[i].kind == ChunkKind::Embedding || chunks[i].kind == ChunkKind::Head)
        CHECK_FALSE(p[i].master_on_host);
    }
  }
  OffloadConfig all;
  all.optimizer = all.params = 1.0;
  const auto p = place_offload(chunks, all);
  for (size_t i = 0; i < chunks.size(); ++i) {
    CHECK(p[i].adam_on_host);
    CHECK(p[i].master_on_host ==
          (chunks[i].kind == ChunkKind::Layer || chunks[i].kind == ChunkKind::Expert));
  }
}

TEST_CASE("offload: storage takes host buffers from the host arena", "[offload]") {
  auto be = make_cpu_backend(1);
  std::vector<Chunk> chunks = plan_chunks(moe_model(), ExpertRange{0, 4});
  size_t numel = 0, host_floats = 0;
  OffloadConfig o;
  o.optimizer = 0.5;
  o.params = 0.25;
  const auto p = place_offload(chunks, o);
  for (size_t i = 0; i < chunks.size(); ++i) {
    numel += chunks[i].numel;
    host_floats += chunks[i].numel * (2 * p[i].adam_on_host + p[i].master_on_host);
  }
  REQUIRE(host_floats > 0);
  {
    ChunkStorage store(*be, chunks, o);
    const Backend::MemoryStats st = be->memory_stats();
    CHECK(st.host_live >= static_cast<int64_t>(host_floats * sizeof(float)));
    CHECK(st.host_live < static_cast<int64_t>(host_floats * sizeof(float)) + 64 * 4 * 64);
    CHECK(st.device_live + st.host_live >= static_cast<int64_t>(4 * numel * sizeof(float)));
    for (size_t i = 0; i < chunks.size(); ++i) {
      CHECK(chunks[i].master_on_host == p[i].master_on_host);
      if (chunks[i].master_on_host) {
        // Not streamed in: using it is a bug, reported as such.
        CHECK_THROWS_WITH(
            chunks[i].param_of(chunks[i].tensors[0].name.substr(chunks[i].name.size() + 1)),
            Catch::Contains("used before being streamed in"));
      }
    }
  }
  CHECK(be->memory_stats().host_live == 0);
  CHECK(be->memory_stats().device_live == 0);
  CHECK(be->memory_stats().host_peak > 0);
}

TEST_CASE("bytes: sizes as people write them", "[offload]") {
  CHECK(parse_bytes("80GiB") == int64_t{80} << 30);
  CHECK(parse_bytes("512 GiB") == int64_t{512} << 30);
  CHECK(parse_bytes("1.5KiB") == 1536);
  CHECK(parse_bytes("2GB") == 2000000000);
  CHECK(parse_bytes("4096") == 4096);
  CHECK_FALSE(parse_bytes("-1GiB"));
  CHECK_FALSE(parse_bytes("GiB"));
  CHECK_FALSE(parse_bytes("12 parsecs"));
  CHECK(format_bytes(1536) == "1.50 KiB");
  CHECK(format_bytes(100) == "100 B");
}
