// TensorBoard event files (see tb_writer.h): protobuf wire format written by
// hand -- varints, fixed64/fixed32 little-endian, length-delimited fields --
// for the few messages TensorBoard needs.
#include "core/metrics/tb_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "core/util/error.h"
#include "core/util/fs.h"

namespace m6 {
namespace {

std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;  // reflected 0x1EDC6F41
    t[i] = c;
  }
  return t;
}

// ---- protobuf wire format ----------------------------------------------------
enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void put_tag(std::string& out, uint32_t field, WireType w) { put_varint(out, (field << 3) | w); }
void put_le(std::string& out, uint64_t bits, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
}
void put_double(std::string& out, uint32_t field, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, 8);
  put_tag(out, field, kFixed64);
  put_le(out, bits, 8);
}
void put_float(std::string& out, uint32_t field, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  put_tag(out, field, kFixed32);
  put_le(out, bits, 4);
}
void put_int64(std::string& out, uint32_t field, int64_t v) {
  put_tag(out, field, kVarint);
  put_varint(out, static_cast<uint64_t>(v));  // negative: ten bytes, as protobuf does
}
void put_bytes(std::string& out, uint32_t field, std::string_view bytes) {
  put_tag(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out.append(bytes);
}
void put_packed_doubles(std::string& out, uint32_t field, const std::vector<double>& v) {
  std::string body;
  for (double x : v) {
    uint64_t bits;
    std::memcpy(&bits, &x, 8);
    put_le(body, bits, 8);
  }
  put_bytes(out, field, body);
}

// Event { double wall_time = 1; int64 step = 2; oneof { string file_version = 3;
//         Summary summary = 5; } }
// Summary { repeated Value value = 1; }
// Summary.Value { string tag = 1; oneof { float simple_value = 2; HistogramProto histo = 5; } }
std::string event_with_value(double wall_time, int64_t step, const std::string& value) {
  std::string summary;
  put_bytes(summary, 1, value);
  std::string ev;
  put_double(ev, 1, wall_time);
  put_int64(ev, 2, step);
  put_bytes(ev, 5, summary);
  return ev;
}

double now_seconds() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t crc32c(std::string_view data) {
  static const std::array<uint32_t, 256> table = make_crc32c_table();
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : data) c = table[(c ^ b) & 0xff] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(std::string_view data) {
  const uint32_t c = crc32c(data);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string tfrecord_frame(std::string_view payload) {
  std::string len, out;
  put_le(len, payload.size(), 8);
  out.reserve(payload.size() + 16);
  out += len;
  put_le(out, masked_crc32c(len), 4);
  out.append(payload);
  put_le(out, masked_crc32c(payload), 4);
  return out;
}

std::string tb_event_version(double wall_time) {
  std::string ev;
  put_double(ev, 1, wall_time);
  put_bytes(ev, 3, "brain.Event:2");
  return ev;
}

std::string tb_event_scalar(double wall_time, int64_t step, const std::string& tag, float value) {
  std::string v;
  put_bytes(v, 1, tag);
  put_float(v, 2, value);
  return event_with_value(wall_time, step, v);
}

// HistogramProto { double min = 1; double max = 2; double num = 3; double sum = 4;
//   double sum_squares = 5; repeated double bucket_limit = 6 [packed];
//   repeated double bucket = 7 [packed]; }
std::string tb_event_histogram(double wall_time, int64_t step, const std::string& tag,
                               const Histogram& h) {
  M6_CHECK(h.bucket.size() == h.bucket_limit.size(), "histogram '", tag, "': ", h.bucket.size(),
           " buckets but ", h.bucket_limit.size(), " limits");
  std::string hp;
  put_double(hp, 1, h.min);
  put_double(hp, 2, h.max);
  put_double(hp, 3, h.num);
  put_double(hp, 4, h.sum);
  put_double(hp, 5, h.sum_squares);
  put_packed_doubles(hp, 6, h.bucket_limit);
  put_packed_doubles(hp, 7, h.bucket);
  std::string v;
  put_bytes(v, 1, tag);
  put_bytes(v, 5, hp);
  return event_with_value(wall_time, step, v);
}

Histogram expert_load_histogram(const std::vector<int64_t>& load) {
  Histogram h;
  bool any = false;
  for (size_t e = 0; e < load.size(); ++e) {
    const double n = static_cast<double>(load[e]), x = static_cast<double>(e);
    h.bucket_limit.push_back(x + 0.5);
    h.bucket.push_back(n);
    if (n <= 0) continue;
    if (!any) h.min = x;
    h.max = x;
    any = true;
    h.num += n;
    h.sum += n * x;
    h.sum_squares += n * x * x;
  }
  return h;
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir, bool enabled) {
  if (!enabled) return;
  make_dirs(dir);
  char host[256] = "localhost";
  ::gethostname(host, sizeof host - 1);
  const double t = now_seconds();
  path_ = (std::filesystem::path(dir) /
           fmt("events.out.tfevents.", static_cast<int64_t>(t), ".", host, ".", ::getpid()))
              .string();
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(fmt("cannot create ", path_, ": ", std::strerror(errno)));
  write_record(tb_event_version(t));
}

TensorBoardWriter::~TensorBoardWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void TensorBoardWriter::add_scalar(const std::string& tag, int64_t step, double value) {
  if (!enabled()) return;
  write_record(tb_event_scalar(now_seconds(), step, tag, static_cast<float>(value)));
}

void TensorBoardWriter::add_histogram(const std::string& tag, int64_t step, const Histogram& h) {
  if (!enabled()) return;
  write_record(tb_event_histogram(now_seconds(), step, tag, h));
}

void TensorBoardWriter::write_record(std::string_view payload) {
  const std::string rec = tfrecord_frame(payload);
  const char* p = rec.data();
  size_t n = rec.size();
  while (n > 0) {
    const ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw Error(fmt("cannot write ", path_, ": ", std::strerror(errno)));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace m6
