// TensorBoard event files without TensorFlow: <run>/tb/events.out.tfevents.*,
// the TFRecord framing TensorBoard reads (u64 length, masked CRC32C of the
// length, the record, masked CRC32C of the record) around hand-encoded
// Event protos (tensorflow/core/util/event.proto, summary.proto): a version
// event first, then one Event per scalar (Summary.Value.simple_value, fp32)
// or histogram (HistogramProto). Only rank 0 writes; other ranks construct a
// disabled writer. Every event reaches the kernel with one write(), so a
// reader never sees half a record from an earlier event.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace m6 {

// CRC32C (Castagnoli polynomial 0x1EDC6F41, reflected), and TFRecord's mask:
// ((crc >> 15) | (crc << 17)) + 0xa282ead8.
uint32_t crc32c(std::string_view data);
uint32_t masked_crc32c(std::string_view data);

// One TFRecord: the framing around `payload`.
std::string tfrecord_frame(std::string_view payload);

// HistogramProto: bucket i counts the values in (limit[i-1], limit[i]]
// (the first from -infinity); min, max, num, sum and sum of squares describe
// the values.
struct Histogram {
  double min = 0, max = 0, num = 0, sum = 0, sum_squares = 0;
  std::vector<double> bucket_limit, bucket;
};

// Encoded Event protos (exposed for the unit tests).
std::string tb_event_version(double wall_time);
std::string tb_event_scalar(double wall_time, int64_t step, const std::string& tag, float value);
std::string tb_event_histogram(double wall_time, int64_t step, const std::string& tag,
                               const Histogram& h);

// A histogram whose buckets are the experts: bucket e (limit e + 0.5) holds
// load[e]; it is the distribution of the expert index over the kept slots.
Histogram expert_load_histogram(const std::vector<int64_t>& load);

class TensorBoardWriter {
 public:
  // enabled = false opens nothing. Otherwise creates dir and a new event file
  // events.out.tfevents.<unix time>.<host>.<pid> in it (a resumed run adds a
  // file; TensorBoard reads them in order) and writes the version event.
  // Throws Error naming the path when it cannot be created.
  TensorBoardWriter(const std::string& dir, bool enabled);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  void add_scalar(const std::string& tag, int64_t step, double value);
  void add_histogram(const std::string& tag, int64_t step, const Histogram& h);

  bool enabled() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }

 private:
  void write_record(std::string_view payload);

  std::string path_;
  int fd_ = -1;
};

}  // namespace m6
