// Durable file writes: everything m6train writes that another run reads
// (shards, exports, checkpoints, the resolved config) goes to a temporary
// name, is fsynced and renamed, so a crash leaves the old file or the new one.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace m6 {

// Writes `bytes` to path via path.tmp.<pid> + fsync + rename + fsync(dir).
void atomic_write_file(const std::string& path, std::string_view bytes);

// Streaming variant: open, append any number of times, then commit(); a
// destroyed, uncommitted writer removes its temporary file.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  void write(const void* data, size_t n);
  void commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

std::string read_file(const std::string& path);  // throws Error naming the path
void make_dirs(const std::string& path);         // mkdir -p; throws Error
void fsync_dir(const std::string& dir);

}  // namespace m6
