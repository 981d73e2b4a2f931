// safetensors read/write (the format of huggingface/safetensors): u64 LE header
// length n, n bytes of JSON header, then the tensor bytes. The reader trusts
// nothing in the file: every inconsistency is a CheckpointError that starts
// with the path and carries the offending values, so a corrupt checkpoint is
// refused at open instead of producing garbage weights later.
#include "core/ckpt/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "core/util/error.h"
#include "core/util/fs.h"

namespace m6 {
namespace {

// Headers above this size are refused (huggingface/safetensors uses the same
// 100 MB limit); it stops a corrupt length from driving a huge JSON parse.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// The data area starts at an offset aligned to this many bytes in memory, so
// the views of a file whose writer did not pad the header are still aligned.
constexpr size_t kDataAlign = 64;

struct DTypeInfo {
  StDType type;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {StDType::F32, "F32", 4}, {StDType::F16, "F16", 2}, {StDType::BF16, "BF16", 2},
    {StDType::I32, "I32", 4}, {StDType::I64, "I64", 8}, {StDType::U16, "U16", 2},
    {StDType::U8, "U8", 1},
};

[[noreturn]] void fail_at(const std::string& path, const std::string& what) {
  throw CheckpointError(path + ": " + what);
}

const DTypeInfo& dtype_info(StDType t) {
  for (const auto& d : kDTypes)
    if (d.type == t) return d;
  throw Error(fmt("invalid StDType value ", static_cast<int>(t)));
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// Bytes of a tensor, or throws via `fail` on a negative dim or on overflow.
template <class Fail>
uint64_t tensor_bytes(const std::vector<int64_t>& shape, size_t elem, Fail&& fail) {
  uint64_t n = elem;
  for (int64_t d : shape) {
    if (d < 0) fail(fmt("negative dimension ", d, " in shape ", shape_str(shape)));
    const auto u = static_cast<uint64_t>(d);
    if (u != 0 && n > std::numeric_limits<uint64_t>::max() / u)
      fail(fmt("shape ", shape_str(shape), " overflows 64-bit byte count"));
    n *= u;
  }
  return n;
}

void put_u64_le(char* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

uint64_t get_u64_le(const char* in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(in[i])) << (8 * i);
  return v;
}

// SAX handler that records the first duplicated key of the top-level object.
struct TopLevelKeys : nlohmann::json::json_sax_t {
  int depth = 0;
  std::unordered_set<std::string> seen;
  std::string duplicate;
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return ++depth, true; }
  bool end_object() override { return --depth, true; }
  bool start_array(std::size_t) override { return ++depth, true; }
  bool end_array() override { return --depth, true; }
  bool key(string_t& k) override {
    if (depth == 1 && !seen.insert(k).second && duplicate.empty()) duplicate = k;
    return true;
  }
  // Stops the pass; the DOM parse that follows raises the error with its message.
  bool parse_error(std::size_t, const std::string&, const nlohmann::json::exception&) override {
    return false;
  }
};

}  // namespace

size_t st_dtype_size(StDType t) { return dtype_info(t).size; }
const char* st_dtype_name(StDType t) { return dtype_info(t).name; }

// ---- writer ----------------------------------------------------------------------

void write_safetensors(const std::string& path, const std::vector<StTensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  auto fail = [&](const std::string& what) { fail_at(path, what); };

  // The header is written as text in the caller's order, so the file lists
  // the tensors in the order their bytes follow. (An ordered_json object would
  // do the same with a linear key search per insertion: quadratic in the
  // tensor count, hours for the 245k tensors of one M6-10T-shaped expert file.)
  auto quoted = [&](const std::string& s) {
    try {
      return nlohmann::json(s).dump();
    } catch (const nlohmann::json::exception& e) {  // a string that is not UTF-8
      fail(fmt("cannot encode the header: ", e.what()));
    }
    return std::string();
  };
  std::string text = "{";
  if (!metadata.empty()) {
    text += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      text += (first ? "" : ",") + quoted(k) + ":" + quoted(v);
      first = false;
    }
    text += "}";
  }
  std::unordered_set<std::string> seen;
  seen.reserve(tensors.size());
  std::vector<uint64_t> sizes;  // bytes of each tensor, in order
  sizes.reserve(tensors.size());
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name.empty()) fail("tensor with an empty name");
    if (t.name == "__metadata__") fail("tensor name '__metadata__' is reserved");
    if (!seen.insert(t.name).second) fail(fmt("duplicate tensor name '", t.name, "'"));
    const uint64_t nbytes = tensor_bytes(t.shape, st_dtype_size(t.dtype), [&](const std::string& m) {
      fail(fmt("tensor '", t.name, "': ", m));
    });
    if (nbytes > 0 && t.data == nullptr)
      fail(fmt("tensor '", t.name, "' has shape ", shape_str(t.shape), " but no data"));
    if (text.size() > 1) text += ",";
    text += quoted(t.name);
    text += ":{\"dtype\":\"";
    text += st_dtype_name(t.dtype);
    text += "\",\"shape\":";
    text += shape_str(t.shape);
    text += ",\"data_offsets\":[";
    text += std::to_string(offset);
    text += ",";
    text += std::to_string(offset + nbytes);
    text += "]}";
    sizes.push_back(nbytes);
    offset += nbytes;
  }
  text += "}";

  // Pad with spaces (valid JSON whitespace) so the data starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  char len[8];
  put_u64_le(len, text.size());

  try {
    AtomicFileWriter out(path);
    out.write(len, sizeof len);
    out.write(text.data(), text.size());
    for (size_t i = 0; i < tensors.size(); ++i)
      if (sizes[i] > 0) out.write(tensors[i].data, static_cast<size_t>(sizes[i]));
    out.commit();
  } catch (const CheckpointError&) {
    throw;
  } catch (const Error& e) {
    throw CheckpointError(fmt(path, ": ", e.what()));
  }
}

// ---- reader ----------------------------------------------------------------------

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  auto fail = [&](const std::string& what) { fail_at(path_, what); };

  std::ifstream in(path_, std::ios::binary | std::ios::ate);
  if (!in) fail(fmt("cannot open: ", std::strerror(errno)));
  const std::streamoff end = in.tellg();
  if (end < 0) fail("cannot determine the file size");
  const auto file_size = static_cast<uint64_t>(end);
  if (file_size < 8) fail(fmt("file size ", file_size, " is smaller than the 8-byte header length"));
  in.seekg(0);
  char len_bytes[8];
  if (!in.read(len_bytes, 8)) fail("cannot read the header length");
  const uint64_t header_len = get_u64_le(len_bytes);
  if (header_len > file_size - 8)
    fail(fmt("header length ", header_len, " exceeds file size ", file_size));
  if (header_len > kMaxHeaderBytes)
    fail(fmt("header length ", header_len, " exceeds the limit of ", kMaxHeaderBytes, " bytes"));
  if (header_len < 2) fail(fmt("header length ", header_len, " is too small for a JSON object"));

  // Place the file in bytes_ at a shift that puts the data area on a
  // kDataAlign boundary; `base` is where the file's byte 0 lives.
  bytes_.assign(file_size + kDataAlign, '\0');
  const auto data_addr = reinterpret_cast<uintptr_t>(bytes_.data()) + 8 + header_len;
  const size_t shift = (kDataAlign - data_addr % kDataAlign) % kDataAlign;
  char* base = bytes_.data() + shift;
  std::memcpy(base, len_bytes, 8);
  if (!in.read(base + 8, static_cast<std::streamsize>(file_size - 8)))
    fail(fmt("short read: expected ", file_size, " bytes"));
  const char* header_text = base + 8;
  const char* data = header_text + header_len;
  const uint64_t data_size = file_size - 8 - header_len;

  // Parse, refusing duplicate top-level keys (nlohmann would keep the last):
  // a SAX pass collects the keys, then a plain DOM parse. Both are linear in
  // the tensor count; nlohmann's callback parser and ordered_json are not
  // (the former rescans the parent object at every object end, the latter
  // searches its keys linearly), which made the 245k-tensor expert files of
  // M6-10T's shape take minutes. The order that matters is the data order,
  // recovered from the offsets below.
  std::string duplicate;
  nlohmann::json header;
  try {
    TopLevelKeys keys;
    if (nlohmann::json::sax_parse(header_text, header_text + header_len, &keys))
      duplicate = keys.duplicate;
    header = nlohmann::json::parse(header_text, header_text + header_len);
  } catch (const nlohmann::json::exception& e) {  // parse_error; out_of_range: a number too large
    fail(fmt("header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) fail(fmt("header is JSON ", header.type_name(), ", expected an object"));
  if (!duplicate.empty()) fail(fmt("duplicate tensor name '", duplicate, "' in header"));

  struct Span {
    uint64_t begin, end;
    size_t header_pos;
  };
  std::vector<StTensorView> found;
  std::vector<Span> spans;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail(fmt("__metadata__ is JSON ", entry.type_name(), ", expected an object"));
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) fail(fmt("__metadata__ value of '", k, "' is JSON ", v.type_name(), ", expected a string"));
        metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    // (captures a copy: clang before 16 cannot capture a structured binding)
    auto bad = [&, tname = name](const std::string& what) { fail(fmt("tensor '", tname, "' ", what)); };
    if (!entry.is_object()) bad(fmt("is JSON ", entry.type_name(), ", expected an object"));
    for (const auto& item : entry.items()) {
      const std::string& k = item.key();
      if (k != "dtype" && k != "shape" && k != "data_offsets") bad(fmt("has unknown key '", k, "'"));
    }
    if (!entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
      bad("needs the keys dtype, shape and data_offsets");

    StTensorView view;
    view.name = name;
    const auto& jd = entry.at("dtype");
    if (!jd.is_string()) bad(fmt("dtype is JSON ", jd.type_name(), ", expected a string"));
    const std::string dname = jd.get<std::string>();
    const DTypeInfo* info = nullptr;
    for (const auto& d : kDTypes)
      if (dname == d.name) info = &d;
    if (info == nullptr) bad(fmt("has unknown dtype '", dname, "'"));
    view.dtype = info->type;

    const auto& js = entry.at("shape");
    if (!js.is_array()) bad(fmt("shape is JSON ", js.type_name(), ", expected an array"));
    for (const auto& d : js) {
      // nlohmann parses non-negative integers as unsigned, negative as signed.
      if (!d.is_number_unsigned()) bad(fmt("shape ", js.dump(), " must hold non-negative integers"));
      if (d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        bad(fmt("shape ", js.dump(), " has a dimension too large"));
      view.shape.push_back(d.get<int64_t>());
    }
    const uint64_t nbytes = tensor_bytes(view.shape, info->size, bad);

    const auto& jo = entry.at("data_offsets");
    if (!jo.is_array() || jo.size() != 2 || !jo[0].is_number_unsigned() || !jo[1].is_number_unsigned())
      bad(fmt("data_offsets ", jo.dump(), " must be two non-negative integers"));
    const uint64_t b = jo[0].get<uint64_t>(), e = jo[1].get<uint64_t>();
    if (b > e) bad(fmt("data_offsets [", b, ",", e, "] end before they begin"));
    if (e > data_size)
      bad(fmt("data_offsets [", b, ",", e, "] exceed the data size ", data_size, " (file truncated?)"));
    if (e - b != nbytes)
      bad(fmt("data_offsets [", b, ",", e, "] do not match shape ", shape_str(view.shape), " x ", info->name,
              " = ", nbytes, " bytes"));
    view.data = data + b;
    spans.push_back({b, e, found.size()});
    found.push_back(std::move(view));
  }

  // The tensors must tile the data area exactly: sorted by (begin, end), so an
  // empty tensor comes before a non-empty one at its offset (name order
  // breaks the remaining ties), each starts where the previous one ended, and
  // the last ends at the end of the file.
  std::stable_sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t covered = 0;
  const std::string* prev = nullptr;
  for (const auto& s : spans) {
    const std::string& name = found[s.header_pos].name;
    if (s.begin < covered)
      fail(fmt("tensor '", name, "' data_offsets [", s.begin, ",", s.end, "] overlap tensor '", *prev,
               "' which ends at ", covered));
    if (s.begin > covered)
      fail(fmt("gap of ", s.begin - covered, " bytes in the data before tensor '", name, "' at offset ", covered));
    covered = s.end;
    prev = &name;
  }
  if (covered != data_size)
    fail(fmt("tensors cover ", covered, " bytes but the data area holds ", data_size, " bytes"));

  for (const auto& s : spans) {
    index_[found[s.header_pos].name] = tensors_.size();
    tensors_.push_back(std::move(found[s.header_pos]));
  }
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& t : tensors_) out.push_back(t.name);
  return out;
}

bool SafetensorsFile::has(const std::string& name) const { return index_.count(name) != 0; }

const StTensorView& SafetensorsFile::get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw CheckpointError(fmt(path_, ": no tensor named '", name, "'"));
  return tensors_[it->second];
}

}  // namespace m6
