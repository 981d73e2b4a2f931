// Token shards: write/open/read round trips and every way a shard can be bad.
// Each bad shard must be a DataError that names the file and says what is wrong.
#include <stdlib.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/data/dataset.h"
#include "core/util/error.h"
#include "data_test_util.h"

namespace fs = std::filesystem;
using namespace m6;

namespace {

// A fresh directory under $TMPDIR, removed with its contents at scope exit.
struct TempDir : test::TempDir {
  TempDir() : test::TempDir("m6_shard") {}
};

// Raw shard bytes with any header and payload, for corruptions write_shard refuses to make.
void write_raw(const std::string& path, int32_t magic, int32_t version, int32_t count,
               const std::vector<uint16_t>& tokens, size_t extra_bytes = 0) {
  std::vector<int32_t> header(kShardHeaderInts, 0);
  header[0] = magic;
  header[1] = version;
  header[2] = count;
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(header.data()), header.size() * 4);
  out.write(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
  for (size_t i = 0; i < extra_bytes; ++i) out.put('x');
}

std::vector<uint16_t> iota_tokens(int n, int first, int mod) {
  std::vector<uint16_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = uint16_t((first + i) % mod);
  return t;
}

// The message of the DataError `f` throws; fails the test on anything else.
template <class F>
std::string data_error_of(F&& f) {
  try {
    f();
  } catch (const DataError& e) {
    CHECK(e.code() == ExitCode::Data);
    return e.what();
  } catch (const std::exception& e) {
    FAIL("expected DataError, got another exception: " << e.what());
  }
  FAIL("expected DataError, nothing was thrown");
  return {};
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

}  // namespace

TEST_CASE("write_shard writes the llm.c header then uint16 tokens", "[data]") {
  TempDir d;
  const std::string p = d.file("s.bin");
  const std::vector<uint16_t> tok = {0, 1, 255, 256, 65535, 7};
  write_shard(p, tok);
  REQUIRE(fs::file_size(p) == 1024 + 2 * tok.size());
  std::ifstream in(p, std::ios::binary);
  std::vector<int32_t> header(256);
  in.read(reinterpret_cast<char*>(header.data()), 1024);
  CHECK(header[0] == 20240520);
  CHECK(header[1] == 1);
  CHECK(header[2] == 6);
  for (int i = 3; i < 256; ++i) REQUIRE(header[i] == 0);
  std::vector<uint16_t> back(tok.size());
  in.read(reinterpret_cast<char*>(back.data()), back.size() * 2);
  CHECK(back == tok);
  // Atomic write: no temporary file is left next to the shard.
  CHECK(std::distance(fs::directory_iterator(d.path), fs::directory_iterator()) == 1);
}

TEST_CASE("TokenDataset concatenates sorted shards and reads across boundaries", "[data]") {
  TempDir d;
  // Written out of order: the glob is sorted, so b follows a.
  write_shard(d.file("part_b.bin"), iota_tokens(5, 100, 65536));  // 100..104
  write_shard(d.file("part_a.bin"), iota_tokens(7, 0, 65536));    // 0..6
  write_shard(d.file("part_c.bin"), {});                          // empty shard: allowed
  write_shard(d.file("part_d.bin"), {9});
  TokenDataset ds = TokenDataset::open(d.file("part_*.bin"), 65536, 4);
  REQUIRE(ds.size() == 13);
  REQUIRE(ds.files().size() == 4);
  CHECK(ds.files()[0] == d.file("part_a.bin"));
  CHECK(ds.files()[3] == d.file("part_d.bin"));

  std::vector<int32_t> all(13, -1);
  ds.read(0, 13, all.data());
  CHECK(all == std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 100, 101, 102, 103, 104, 9});

  std::vector<int32_t> w(4, -1);  // spans a|b
  ds.read(5, 4, w.data());
  CHECK(w == std::vector<int32_t>{5, 6, 100, 101});
  std::vector<int32_t> w2(2, -1);  // spans b|c(empty)|d
  ds.read(11, 2, w2.data());
  CHECK(w2 == std::vector<int32_t>{104, 9});
  std::vector<int32_t> one(1, -1);
  ds.read(7, 1, one.data());
  CHECK(one[0] == 100);

  // Out of range is a bug in the caller: an internal Error, not a DataError.
  std::vector<int32_t> big(20);
  for (auto [pos, n] : std::vector<std::pair<int64_t, int64_t>>{{10, 4}, {-1, 2}, {0, 14}}) {
    try {
      ds.read(pos, n, big.data());
      FAIL("read(" << pos << ", " << n << ") did not throw");
    } catch (const Error& e) {
      CHECK(e.code() == ExitCode::Internal);
    }
  }

  // Moving keeps the mapping valid.
  TokenDataset moved = std::move(ds);
  moved.read(6, 2, w.data());
  CHECK(w[0] == 6);
  CHECK(w[1] == 100);
}

TEST_CASE("TokenDataset accepts exactly seq_len + 1 tokens and tokens up to vocab - 1", "[data]") {
  TempDir d;
  write_shard(d.file("s.bin"), iota_tokens(9, 0, 65536));  // 0..8
  TokenDataset ds = TokenDataset::open(d.file("s.bin"), 9, 8);
  CHECK(ds.size() == 9);
}

TEST_CASE("bad shards are DataErrors naming the file and the reason", "[data]") {
  TempDir d;
  const std::string p = d.file("bad.bin");
  const auto good = iota_tokens(64, 0, 256);

  SECTION("wrong magic") {
    write_raw(p, 12345, 1, 64, good);
    const std::string m = data_error_of([&] { TokenDataset::open(p, 256, 8); });
    CHECK(starts_with(m, p));
    CHECK_THAT(m, Catch::Contains("magic") && Catch::Contains("found 12345") &&
                      Catch::Contains("expected 20240520"));
  }
  SECTION("wrong version") {
    write_raw(p, kShardMagic, 3, 64, good);
    const std::string m = data_error_of([&] { TokenDataset::open(p, 256, 8); });
    CHECK(starts_with(m, p));
    CHECK_THAT(m, Catch::Contains("version") && Catch::Contains("found 3") &&
                      Catch::Contains("supported 1") && Catch::Contains("and 2"));
  }
  SECTION("truncated data") {
    write_raw(p, kShardMagic, 1, 100, good);  // header says 100, file holds 64
    const std::string m = data_error_of([&] { TokenDataset::open(p, 256, 8); });
    CHECK(starts_with(m, p));
    CHECK_THAT(m, Catch::Contains("truncated") && Catch::Contains(std::to_string(1024 + 2 * 64)) &&
                      Catch::Contains(std::to_string(1024 + 2 * 100)));
  }
  SECTION("extra bytes after the data") {
    write_raw(p, kShardMagic, 1, 64, good, 3);
    const std::string m = data_error_of([&] { TokenDataset::open(p, 256, 8); });
    CHECK(starts_with(m, p));
    CHECK_THAT(m, Catch::Contains("extra bytes") && Catch::Contains(std::to_string(1024 + 128 + 3)) &&
                      Catch::Contains(std::to_string(1024 + 128)));
  }
  SECTION("negative token count") {
    write_raw(p, kShardMagic, 1, -5, good);
    const std::string m = data_error_of([&] { TokenDataset::open(p, 256, 8); });
    CHECK(starts_with(m, p));
    CHECK_THAT(m, Catch::Contains("negative") && Catch::Contains("-5"));
  }
  SECTION("header shorter than 1024 bytes") {
    std::ofstream(p, std::ios::binary) << std::string(100, '\0');
    const std::string m = data_error_of([&] { TokenDataset::open(p, 256, 8); });
    CHECK(starts_with(m, p));
    CHECK_THAT(m, Catch::Contains("100 bytes") && Catch::Contains("1024-byte"));
  }
  SECTION("empty file") {
    std::ofstream(p, std::ios::binary).flush();
    const std::string m = data_error_of([&] { TokenDataset::open(p, 256, 8); });
    CHECK(starts_with(m, p));
    CHECK_THAT(m, Catch::Contains("0 bytes") && Catch::Contains("1024-byte"));
  }
  SECTION("token >= vocab: the first offending index and value") {
    auto tok = good;
    tok[7] = 300;
    tok[9] = 999;
    write_shard(p, tok);
    const std::string m = data_error_of([&] { TokenDataset::open(p, 256, 8); });
    CHECK(starts_with(m, p));
    CHECK_THAT(m, Catch::Contains("index 7") && Catch::Contains("is 300") &&
                      Catch::Contains("vocab size 256"));
  }
  SECTION("token == vocab deep in a large shard") {
    // Past the first scan block (65536 tokens), in the middle of a later one.
    std::vector<uint16_t> tok(200000, 3);
    tok[150001] = 50;
    write_shard(p, tok);
    const std::string m = data_error_of([&] { TokenDataset::open(p, 50, 8); });
    CHECK(starts_with(m, p));
    CHECK_THAT(m, Catch::Contains("index 150001") && Catch::Contains("is 50") &&
                      Catch::Contains("vocab size 50"));
    CHECK(TokenDataset::open(p, 51, 8).size() == 200000);
  }
  SECTION("too few tokens for one sequence, one file") {
    write_shard(p, iota_tokens(8, 0, 256));
    const std::string m = data_error_of([&] { TokenDataset::open(p, 256, 8); });
    CHECK(starts_with(m, p));
    CHECK_THAT(m, Catch::Contains("too few tokens") && Catch::Contains("8 tokens") &&
                      Catch::Contains("needs 9"));
  }
  SECTION("too few tokens over several files names the pattern and the files") {
    write_shard(d.file("few_0.bin"), iota_tokens(5, 0, 256));
    write_shard(d.file("few_1.bin"), iota_tokens(5, 0, 256));
    const std::string pattern = d.file("few_*.bin");
    const std::string m = data_error_of([&] { TokenDataset::open(pattern, 256, 10); });
    CHECK(starts_with(m, pattern));
    CHECK_THAT(m, Catch::Contains("few_0.bin") && Catch::Contains("few_1.bin") &&
                      Catch::Contains("10 tokens") && Catch::Contains("needs 11"));
  }
  SECTION("no file matches the glob") {
    const std::string pattern = d.file("nothing_*.bin");
    const std::string m = data_error_of([&] { TokenDataset::open(pattern, 256, 8); });
    CHECK(starts_with(m, pattern));
    CHECK_THAT(m, Catch::Contains("no file matches") &&
                      Catch::Contains("m6train data build --input FILE... --output DIR"));
  }
  SECTION("a bad shard after good ones is the one named") {
    write_shard(d.file("mix_0.bin"), good);
    write_raw(d.file("mix_1.bin"), kShardMagic, 7, 64, good);
    const std::string m = data_error_of([&] { TokenDataset::open(d.file("mix_*.bin"), 256, 8); });
    CHECK(starts_with(m, d.file("mix_1.bin")));
    CHECK_THAT(m, Catch::Contains("found 7"));
  }
  SECTION("a directory matched by the glob") {
    fs::create_directory(d.file("dir.bin"));
    const std::string m = data_error_of([&] { TokenDataset::open(d.file("dir.bin"), 256, 8); });
    CHECK(starts_with(m, d.file("dir.bin")));
    CHECK_THAT(m, Catch::Contains("not a regular file"));
  }
}
