// The safetensors format: 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}},
// then the raw little-endian tensor bytes. Used for exports and checkpoints.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace m6 {

enum class StDType { F32, F16, BF16, I32, I64, U16, U8 };
size_t st_dtype_size(StDType t);
const char* st_dtype_name(StDType t);  // "F32", "BF16", ...

struct StTensorView {
  std::string name;
  StDType dtype = StDType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // shape-product * dtype-size bytes
};

// Writes atomically (temporary name, fsync, rename). Tensors are laid out in
// the order given; names must be unique (checked).
void write_safetensors(const std::string& path, const std::vector<StTensorView>& tensors,
                       const std::map<std::string, std::string>& metadata);

// A whole file read and validated at open: header length within the file,
// valid JSON, known dtypes, offsets in order, inside the data, matching
// shape * dtype size, covering the data without gaps. Errors throw
// CheckpointError naming the file and what is wrong.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  // The views point into bytes_: a copy (or a move of a short string) would
  // leave them dangling.
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::vector<std::string> names() const;  // in file order
  bool has(const std::string& name) const;
  // Throws CheckpointError if missing.
  const StTensorView& get(const std::string& name) const;

 private:
  std::string path_;
  std::string bytes_;
  std::map<std::string, std::string> metadata_;
  std::vector<StTensorView> tensors_;
  std::map<std::string, size_t> index_;
};

}  // namespace m6
