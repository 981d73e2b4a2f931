// The TensorBoard writer's building blocks against known values: CRC32C test
// vectors, the TFRecord framing, protobuf bytes of a scalar event, and the
// expert-load histogram. (tests/cli/tensorboard.sh reads whole event files
// back with the tensorboard package.)
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "core/metrics/tb_writer.h"

namespace fs = std::filesystem;

namespace {
uint64_t le(const std::string& s, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[at + i]);
  return v;
}
}  // namespace

TEST_CASE("crc32c matches the Castagnoli check values", "[metrics]") {
  CHECK(m6::crc32c("") == 0u);
  CHECK(m6::crc32c("123456789") == 0xE3069283u);  // the standard check value
  CHECK(m6::crc32c(std::string(32, '\0')) == 0x8A9136AAu);  // RFC 3720 B.4
  CHECK(m6::crc32c(std::string(32, '\xff')) == 0x62A8AB43u);
  const uint32_t c = m6::crc32c("123456789");
  CHECK(m6::masked_crc32c("123456789") == (((c >> 15) | (c << 17)) + 0xa282ead8u));
}

TEST_CASE("a TFRecord is length, its CRC, the payload and its CRC", "[metrics]") {
  const std::string payload = "hello event";
  const std::string r = m6::tfrecord_frame(payload);
  REQUIRE(r.size() == 8 + 4 + payload.size() + 4);
  CHECK(le(r, 0, 8) == payload.size());
  CHECK(le(r, 8, 4) == m6::masked_crc32c(r.substr(0, 8)));
  CHECK(r.substr(12, payload.size()) == payload);
  CHECK(le(r, 12 + payload.size(), 4) == m6::masked_crc32c(payload));
}

TEST_CASE("a scalar event encodes wall time, step, tag and float value", "[metrics]") {
  const std::string e = m6::tb_event_scalar(1.5, 300, "train/loss", 2.25f);
  std::string want;
  want += '\x09';  // field 1, fixed64: wall_time
  double wt = 1.5;
  want.append(reinterpret_cast<const char*>(&wt), 8);
  want += "\x10\xac\x02";  // field 2, varint 300
  // field 5 (summary) { field 1 (value) { tag "train/loss", simple_value 2.25f } }
  const std::string tag = "train/loss";
  std::string value = "\x0a" + std::string(1, char(tag.size())) + tag + "\x15";
  float f = 2.25f;
  value.append(reinterpret_cast<const char*>(&f), 4);
  const std::string summary = "\x0a" + std::string(1, char(value.size())) + value;
  want += "\x2a" + std::string(1, char(summary.size())) + summary;
  CHECK(e == want);
}

TEST_CASE("expert load becomes a histogram with one bucket per expert", "[metrics]") {
  const m6::Histogram h = m6::expert_load_histogram({0, 5, 3, 0});
  CHECK(h.bucket_limit == std::vector<double>{0.5, 1.5, 2.5, 3.5});
  CHECK(h.bucket == std::vector<double>{0, 5, 3, 0});
  CHECK(h.num == 8);
  CHECK(h.min == 1);
  CHECK(h.max == 2);
  CHECK(h.sum == 5 * 1 + 3 * 2);
  CHECK(h.sum_squares == 5 * 1 + 3 * 4);
}

TEST_CASE("the writer starts a file with the version event; disabled writes nothing", "[metrics]") {
  const fs::path dir = fs::temp_directory_path() / ("m6_test_tb_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  {
    m6::TensorBoardWriter off((dir / "off").string(), false);
    off.add_scalar("x", 1, 1.0);
    CHECK_FALSE(off.enabled());
  }
  CHECK_FALSE(fs::exists(dir / "off"));
  std::string path;
  {
    m6::TensorBoardWriter tb((dir / "tb").string(), true);
    REQUIRE(tb.enabled());
    path = tb.path();
    CHECK(fs::path(path).filename().string().rfind("events.out.tfevents.", 0) == 0);
    tb.add_scalar("train/loss", 1, 3.0);
  }
  std::ifstream in(path, std::ios::binary);
  const std::string bytes{std::istreambuf_iterator<char>(in), {}};
  const uint64_t n0 = le(bytes, 0, 8);
  const std::string first = bytes.substr(12, n0);
  CHECK(first.find("brain.Event:2") != std::string::npos);
  const size_t second = 12 + n0 + 4;
  REQUIRE(bytes.size() > second + 12);
  const uint64_t n1 = le(bytes, second, 8);
  CHECK(bytes.size() == second + 12 + n1 + 4);
  CHECK(bytes.substr(second + 12, n1).find("train/loss") != std::string::npos);
  fs::remove_all(dir);
}
