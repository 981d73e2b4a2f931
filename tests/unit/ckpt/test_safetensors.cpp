// safetensors: round trips, a file laid out the way Python's struct/json
// writes it, and one test per kind of corruption the reader must refuse with a
// CheckpointError that names the file.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/ckpt/safetensors.h"
#include "core/util/error.h"

namespace fs = std::filesystem;
using m6::CheckpointError;
using m6::SafetensorsFile;
using m6::StDType;
using m6::StTensorView;

namespace {

// A fresh directory per test case, removed at the end of the case.
struct TempDir {
  fs::path dir;
  explicit TempDir(const std::string& tag) {
    dir = fs::temp_directory_path() / ("m6_st_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string file(const std::string& name) const { return (dir / name).string(); }
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// struct.pack('<Q', len(header)) + header + data, with the header as given (no
// padding: Python writers often do not pad).
std::string st_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

template <class T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::string view_bytes(const StTensorView& t) {
  size_t n = m6::st_dtype_size(t.dtype);
  for (int64_t d : t.shape) n *= static_cast<size_t>(d);
  return std::string(static_cast<const char*>(t.data), n);
}

// Opening `bytes` as a file must throw a CheckpointError that starts with the
// path and contains `needle`.
void expect_corrupt(const TempDir& tmp, const std::string& name, const std::string& bytes,
                    const std::string& needle) {
  const std::string path = tmp.file(name);
  write_bytes(path, bytes);
  try {
    SafetensorsFile f(path);
    FAIL("no error for " << name << " (expected '" << needle << "')");
  } catch (const CheckpointError& e) {
    const std::string msg = e.what();
    INFO("message: " << msg);
    CHECK(msg.rfind(path + ": ", 0) == 0);
    CHECK(msg.find(needle) != std::string::npos);
  }
}

// A valid two-tensor file: a F32 [2,2] (16 bytes) then b I32 [3] (12 bytes).
const std::string kGoodHeader =
    R"({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, )"
    R"("b": {"dtype": "I32", "shape": [3], "data_offsets": [16, 28]}})";
const std::string kGoodData = raw(std::vector<float>{1, 2, 3, 4}) + raw(std::vector<int32_t>{5, -6, 7});

}  // namespace

TEST_CASE("safetensors round trip of dtypes and shapes", "[ckpt][safetensors]") {
  TempDir tmp("roundtrip");
  const std::vector<float> f32 = {1.5f, -2.25f, 3.0f, 0.0f, -0.0f, 1e-30f};
  const std::vector<uint16_t> bf16 = {0x3f80, 0xbf80, 0x4000, 0x0001, 0x7f80, 0xffff};
  const std::vector<uint16_t> f16 = {0x3c00};
  const std::vector<int32_t> i32 = {-1, 0, 2147483647, -2147483647 - 1};
  const std::vector<int64_t> i64 = {int64_t(1) << 40, -3};
  const std::vector<uint16_t> u16 = {0, 65535, 17, 4};
  const std::vector<uint8_t> u8 = {0, 255, 7};  // odd length: later tensors start unaligned
  const float scalar = 42.5f;

  const std::vector<StTensorView> in = {
      {"layers.0.w", StDType::F32, {2, 3}, f32.data()},
      {"u8", StDType::U8, {3}, u8.data()},
      {"bf", StDType::BF16, {3, 1, 2}, bf16.data()},
      {"scalar", StDType::F32, {}, &scalar},
      {"empty", StDType::F32, {0, 4}, nullptr},
      {"half", StDType::F16, {1}, f16.data()},
      {"ids", StDType::I32, {4}, i32.data()},
      {"big", StDType::I64, {2}, i64.data()},
      {"u16", StDType::U16, {2, 2}, u16.data()},
  };
  const std::string path = tmp.file("model.safetensors");
  m6::write_safetensors(path, in, {});

  SafetensorsFile f(path);
  CHECK(f.path() == path);
  CHECK(f.metadata().empty());
  std::vector<std::string> want_names;
  for (const auto& t : in) want_names.push_back(t.name);
  CHECK(f.names() == want_names);
  for (const auto& t : in) {
    INFO("tensor " << t.name);
    REQUIRE(f.has(t.name));
    const StTensorView& v = f.get(t.name);
    CHECK(v.name == t.name);
    CHECK(v.dtype == t.dtype);
    CHECK(v.shape == t.shape);
    if (t.data != nullptr) CHECK(view_bytes(v) == view_bytes(t));
  }
  CHECK(f.get("scalar").shape.empty());
  float got = 0;  // copied: after the odd-length u8 tensor the view is unaligned
  std::memcpy(&got, f.get("scalar").data, sizeof got);
  CHECK(got == 42.5f);
  CHECK(view_bytes(f.get("empty")).empty());
  CHECK_FALSE(f.has("missing"));

  // The layout itself: padded header, keys in the given order, no metadata
  // key, contiguous offsets that cover the data.
  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(static_cast<unsigned char>(bytes[i])) << (8 * i);
  CHECK(n % 8 == 0);
  const auto header = nlohmann::ordered_json::parse(bytes.substr(8, n));
  CHECK_FALSE(header.contains("__metadata__"));
  std::vector<std::string> keys;
  uint64_t expect_begin = 0;
  for (const auto& item : header.items()) {
    keys.push_back(item.key());
    CHECK(item.value()["data_offsets"][0].get<uint64_t>() == expect_begin);
    expect_begin = item.value()["data_offsets"][1].get<uint64_t>();
  }
  CHECK(keys == want_names);
  CHECK(8 + n + expect_begin == bytes.size());
  CHECK(header["bf"]["dtype"] == "BF16");
  CHECK(header["scalar"]["shape"] == nlohmann::json::array());
}

TEST_CASE("safetensors metadata round trip", "[ckpt][safetensors]") {
  TempDir tmp("metadata");
  const std::vector<float> w = {1, 2};
  const std::map<std::string, std::string> md = {
      {"config", R"({"model": {"d_model": 16, "moe": {"router": "topk"}}})"},
      {"format", "pt"},
      {"empty", ""},
      {"unicode", "\xc3\xa9t\xc3\xa9 \"quoted\"\n"}};
  const std::string path = tmp.file("m.safetensors");
  m6::write_safetensors(path, {{"w", StDType::F32, {2}, w.data()}}, md);
  SafetensorsFile f(path);
  CHECK(f.metadata() == md);
  CHECK(f.names() == std::vector<std::string>{"w"});

  // A file with only metadata and no tensors is valid too.
  const std::string path2 = tmp.file("only_md.safetensors");
  m6::write_safetensors(path2, {}, {{"k", "v"}});
  SafetensorsFile g(path2);
  CHECK(g.names().empty());
  CHECK(g.metadata().at("k") == "v");
}

TEST_CASE("safetensors reads a file laid out by Python struct/json", "[ckpt][safetensors]") {
  TempDir tmp("python");
  // As `struct.pack('<Q', len(h)) + h + data` with h = json.dumps(...): ", "
  // and ": " separators, no padding (the header length is odd), metadata in
  // the middle, the header order unlike the data order, and an empty tensor
  // listed after the tensor that starts at the same offset.
  const std::string header =
      R"({"ids": {"dtype": "I64", "shape": [3], "data_offsets": [16, 40]}, )"
      R"("none": {"dtype": "U8", "shape": [0, 3], "data_offsets": [16, 16]}, )"
      R"("__metadata__": {"format": "pt", "config": "{\"a\": 12}"}, )"
      R"("w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}})";
  REQUIRE(header.size() % 8 != 0);
  const std::string data = raw(std::vector<float>{0.5f, -1.0f, 2.0f, 8.0f}) +
                           raw(std::vector<int64_t>{7, -9, int64_t(1) << 33});
  const std::string path = tmp.file("py.safetensors");
  write_bytes(path, st_bytes(header, data));

  SafetensorsFile f(path);
  // File (data) order; the empty tensor at offset 16 sorts before "ids" there.
  CHECK(f.names() == std::vector<std::string>{"w", "none", "ids"});
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.metadata().at("config") == R"({"a": 12})");
  const auto& w = f.get("w");
  CHECK(w.dtype == StDType::F32);
  CHECK(w.shape == std::vector<int64_t>{2, 2});
  // The reader aligns the data area even when the writer did not pad.
  CHECK(reinterpret_cast<uintptr_t>(w.data) % 8 == 0);
  const float* wf = static_cast<const float*>(w.data);
  CHECK(wf[0] == 0.5f);
  CHECK(wf[1] == -1.0f);
  CHECK(wf[3] == 8.0f);
  const auto& ids = f.get("ids");
  CHECK(f.get("none").shape == std::vector<int64_t>{0, 3});
  CHECK(ids.dtype == StDType::I64);
  int64_t id[3];
  std::memcpy(id, ids.data, sizeof id);
  CHECK(id[0] == 7);
  CHECK(id[1] == -9);
  CHECK(id[2] == (int64_t(1) << 33));
}

TEST_CASE("safetensors reader refuses corrupt files", "[ckpt][safetensors]") {
  TempDir tmp("corrupt");
  const std::string good = st_bytes(kGoodHeader, kGoodData);
  {  // the baseline really is valid, so every failure below is the corruption's
    write_bytes(tmp.file("good"), good);
    SafetensorsFile f(tmp.file("good"));
    CHECK(f.names() == std::vector<std::string>{"a", "b"});
  }

  SECTION("truncated data") {
    expect_corrupt(tmp, "truncated", good.substr(0, good.size() - 3),
                   "data_offsets [16,28] exceed the data size 25");
  }
  SECTION("truncated inside the header") {
    expect_corrupt(tmp, "trunc_header", good.substr(0, 20), "exceeds file size 20");
  }
  SECTION("shorter than the length field") {
    expect_corrupt(tmp, "tiny", good.substr(0, 5), "file size 5 is smaller than the 8-byte header length");
  }
  SECTION("empty file") { expect_corrupt(tmp, "empty", "", "file size 0"); }
  SECTION("header length too large") {
    std::string bad = good;
    const uint64_t n = 9999999;
    for (int i = 0; i < 8; ++i) bad[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    expect_corrupt(tmp, "hlen", bad, "header length 9999999 exceeds file size " + std::to_string(good.size()));
  }
  SECTION("header length with the top bit set") {
    std::string bad = good;
    bad[7] = static_cast<char>(0x80);
    expect_corrupt(tmp, "hlen_huge", bad, "exceeds file size");
  }
  SECTION("bad JSON") {
    std::string h = kGoodHeader;
    h[h.size() - 1] = ',';  // drop the closing brace
    expect_corrupt(tmp, "badjson", st_bytes(h, kGoodData), "header is not valid JSON");
  }
  SECTION("header is not an object") {
    expect_corrupt(tmp, "array", st_bytes("[1, 2]", ""), "expected an object");
  }
  SECTION("overlapping offsets") {
    const std::string h =
        R"({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, )"
        R"("b": {"dtype": "I32", "shape": [3], "data_offsets": [12, 24]}})";
    expect_corrupt(tmp, "overlap", st_bytes(h, kGoodData.substr(0, 24)), "overlap tensor 'a'");
  }
  SECTION("gap between tensors") {
    const std::string h =
        R"({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, )"
        R"("b": {"dtype": "I32", "shape": [2], "data_offsets": [20, 28]}})";
    expect_corrupt(tmp, "gap", st_bytes(h, kGoodData), "gap of 4 bytes in the data before tensor 'b'");
  }
  SECTION("gap at the start") {
    const std::string h = R"({"b": {"dtype": "I32", "shape": [3], "data_offsets": [16, 28]}})";
    expect_corrupt(tmp, "gap0", st_bytes(h, kGoodData), "gap of 16 bytes");
  }
  SECTION("trailing bytes after the last tensor") {
    expect_corrupt(tmp, "trailing", st_bytes(kGoodHeader, kGoodData + "xyz"),
                   "tensors cover 28 bytes but the data area holds 31 bytes");
  }
  SECTION("shape and size mismatch") {
    const std::string h =
        R"({"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}, )"
        R"("b": {"dtype": "I32", "shape": [4], "data_offsets": [12, 28]}})";
    expect_corrupt(tmp, "mismatch", st_bytes(h, kGoodData),
                   "tensor 'x' data_offsets [0,12] do not match shape [2,2] x F32 = 16 bytes");
  }
  SECTION("unknown dtype") {
    std::string h = kGoodHeader;
    h.replace(h.find("\"F32\""), 5, "\"F8\"");
    expect_corrupt(tmp, "dtype", st_bytes(h, kGoodData), "unknown dtype 'F8'");
  }
  SECTION("negative dimension") {
    const std::string h = R"({"a": {"dtype": "F32", "shape": [-2, 2], "data_offsets": [0, 16]}})";
    expect_corrupt(tmp, "negdim", st_bytes(h, kGoodData.substr(0, 16)), "must hold non-negative integers");
  }
  SECTION("offsets end before they begin") {
    const std::string h = R"({"a": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}})";
    expect_corrupt(tmp, "backwards", st_bytes(h, "abcd"), "end before they begin");
  }
  SECTION("missing key") {
    const std::string h = R"({"a": {"dtype": "F32", "shape": [4]}})";
    expect_corrupt(tmp, "nokey", st_bytes(h, kGoodData.substr(0, 16)), "needs the keys");
  }
  SECTION("unknown key") {
    const std::string h = R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16], "x": 1}})";
    expect_corrupt(tmp, "xkey", st_bytes(h, kGoodData.substr(0, 16)), "unknown key 'x'");
  }
  SECTION("duplicate name in the header") {
    const std::string h =
        R"({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, )"
        R"("a": {"dtype": "I32", "shape": [3], "data_offsets": [16, 28]}})";
    expect_corrupt(tmp, "dup", st_bytes(h, kGoodData), "duplicate tensor name 'a'");
  }
  SECTION("metadata value that is not a string") {
    const std::string h = R"({"__metadata__": {"step": 3}})";
    expect_corrupt(tmp, "mdval", st_bytes(h, ""), "__metadata__ value of 'step'");
  }
  SECTION("missing file") {
    const std::string path = tmp.file("does_not_exist");
    try {
      SafetensorsFile f(path);
      FAIL("no error for a missing file");
    } catch (const CheckpointError& e) {
      CHECK(std::string(e.what()).rfind(path + ": cannot open", 0) == 0);
    }
  }
}

TEST_CASE("safetensors get of a missing tensor names the file", "[ckpt][safetensors]") {
  TempDir tmp("get");
  const std::string path = tmp.file("g");
  write_bytes(path, st_bytes(kGoodHeader, kGoodData));
  SafetensorsFile f(path);
  try {
    f.get("nope");
    FAIL("no error");
  } catch (const CheckpointError& e) {
    const std::string msg = e.what();
    CHECK(msg.rfind(path + ": ", 0) == 0);
    CHECK(msg.find("'nope'") != std::string::npos);
  }
}

TEST_CASE("safetensors writer refuses bad input and writes atomically", "[ckpt][safetensors]") {
  TempDir tmp("writer");
  const std::vector<float> w = {1, 2, 3, 4};
  const std::string path = tmp.file("out.safetensors");
  m6::write_safetensors(path, {{"keep", StDType::F32, {4}, w.data()}}, {});
  const std::string before = read_bytes(path);

  auto expect_write_error = [&](const std::vector<StTensorView>& ts, const std::string& needle) {
    try {
      m6::write_safetensors(path, ts, {});
      FAIL("no error (expected '" << needle << "')");
    } catch (const CheckpointError& e) {
      const std::string msg = e.what();
      INFO("message: " << msg);
      CHECK(msg.rfind(path + ": ", 0) == 0);
      CHECK(msg.find(needle) != std::string::npos);
    }
    // The old file is untouched and no temporary is left behind.
    CHECK(read_bytes(path) == before);
    CHECK(std::distance(fs::directory_iterator(tmp.dir), fs::directory_iterator()) == 1);
  };
  expect_write_error({{"x", StDType::F32, {2}, w.data()}, {"x", StDType::F32, {2}, w.data()}},
                     "duplicate tensor name 'x'");
  expect_write_error({{"__metadata__", StDType::F32, {2}, w.data()}}, "reserved");
  expect_write_error({{"neg", StDType::F32, {2, -1}, w.data()}}, "negative dimension -1");
  expect_write_error({{"null", StDType::F32, {2}, nullptr}}, "no data");
  expect_write_error({{"", StDType::F32, {2}, w.data()}}, "empty name");
  expect_write_error({{"bad\xff", StDType::F32, {2}, w.data()}}, "cannot encode the header");

  // A successful write replaces the file as a whole.
  m6::write_safetensors(path, {{"new", StDType::F32, {2}, w.data()}}, {{"k", "v"}});
  SafetensorsFile f(path);
  CHECK(f.names() == std::vector<std::string>{"new"});
  CHECK(std::distance(fs::directory_iterator(tmp.dir), fs::directory_iterator()) == 1);

  // A directory that does not exist is a CheckpointError too, naming the path.
  const std::string nodir = tmp.file("no/such/dir/x.safetensors");
  try {
    m6::write_safetensors(nodir, {{"a", StDType::F32, {1}, w.data()}}, {});
    FAIL("no error");
  } catch (const CheckpointError& e) {
    CHECK(std::string(e.what()).rfind(nodir + ": ", 0) == 0);
  }
}
