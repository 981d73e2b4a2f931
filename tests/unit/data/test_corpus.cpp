// `data build`: byte-level tokenisation, the per-file train/val split, shard
// naming and sizes, and the errors for bad arguments and bad inputs.
#include <stdlib.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "core/data/dataset.h"
#include "core/util/error.h"
#include "data_test_util.h"

namespace fs = std::filesystem;
using namespace m6;

namespace m6::detail {
// Defined in core/data/corpus.cpp: build_corpus with a smaller shard limit.
CorpusSummary build_corpus_sharded(const std::vector<std::string>& inputs,
                                   const std::string& output_dir, double val_fraction,
                                   int64_t max_shard_tokens);
}  // namespace m6::detail

namespace {

struct TempDir : test::TempDir {
  TempDir() : test::TempDir("m6_corpus") {}
};

void write_text(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// The whole token stream of a glob, as bytes.
std::string stream_of(const std::string& glob) {
  TokenDataset ds = TokenDataset::open(glob, 256, 1);
  std::vector<int32_t> tok(size_t(ds.size()));
  ds.read(0, ds.size(), tok.data());
  std::string s;
  for (int32_t t : tok) s.push_back(char(uint8_t(t)));
  return s;
}

const std::string kChinese =
    "六月的风吹过麦田，模型在千卡之上学习语言。混合专家：每个词只唤醒少数专家。\n"
    "M6 是一个多模态预训练模型 —— emoji too: 🚀✨\n";
const std::string kEnglish =
    "The quick brown fox jumps over the lazy dog.\nPack my box with five dozen liquor jugs.\n";

}  // namespace

TEST_CASE("build_corpus splits each file's tail into val and keeps bytes exactly", "[data]") {
  TempDir d;
  const std::string a = d.file("a.txt"), b = d.file("b.txt"), e = d.file("empty.txt");
  write_text(a, kChinese);
  write_text(b, kEnglish);
  write_text(e, "");
  const std::string out = d.file("corpus");  // created by build_corpus
  const double vf = 0.1;
  CorpusSummary s = build_corpus({a, e, b}, out, vf);

  const size_t va = size_t(std::floor(vf * double(kChinese.size())));
  const size_t vb = size_t(std::floor(vf * double(kEnglish.size())));
  REQUIRE(va > 0);
  REQUIRE(vb > 0);
  CHECK(s.train_tokens == int64_t(kChinese.size() - va + kEnglish.size() - vb));
  CHECK(s.val_tokens == int64_t(va + vb));
  REQUIRE(s.train_files == std::vector<std::string>{(fs::path(out) / "train_000000.bin").string()});
  REQUIRE(s.val_files == std::vector<std::string>{(fs::path(out) / "val_000000.bin").string()});
  CHECK(fs::file_size(s.train_files[0]) == uintmax_t(1024 + 2 * s.train_tokens));
  CHECK(fs::file_size(s.val_files[0]) == uintmax_t(1024 + 2 * s.val_tokens));

  // Heads to train, tails to val, in input order; the UTF-8 survives byte for byte.
  const std::string train = stream_of(out + "/train_*.bin");
  const std::string val = stream_of(out + "/val_*.bin");
  CHECK(train == kChinese.substr(0, kChinese.size() - va) + kEnglish.substr(0, kEnglish.size() - vb));
  CHECK(val == kChinese.substr(kChinese.size() - va) + kEnglish.substr(kEnglish.size() - vb));
  CHECK(train + val != kChinese + kEnglish);  // the split really interleaves per file
  const std::string whole_a = train.substr(0, kChinese.size() - va) + val.substr(0, va);
  CHECK(whole_a == kChinese);
}

TEST_CASE("build_corpus writes shards of at most the limit, named in order", "[data]") {
  TempDir d;
  const std::string a = d.file("a.txt"), b = d.file("b.txt");
  write_text(a, kChinese);
  write_text(b, kEnglish);
  const std::string out = d.file("out");
  const int64_t total = int64_t(kChinese.size() + kEnglish.size());

  CorpusSummary s = detail::build_corpus_sharded({a, b}, out, 0.25, 50);
  const int64_t va = int64_t(std::floor(0.25 * double(kChinese.size())));
  const int64_t vb = int64_t(std::floor(0.25 * double(kEnglish.size())));
  CHECK(s.val_tokens == va + vb);
  CHECK(s.train_tokens == total - va - vb);
  REQUIRE(s.train_files.size() == size_t((s.train_tokens + 49) / 50));
  REQUIRE(s.val_files.size() == size_t((s.val_tokens + 49) / 50));
  for (size_t i = 0; i < s.train_files.size(); ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "train_%06zu.bin", i);
    CHECK(fs::path(s.train_files[i]).filename() == name);
    const int64_t n = std::min<int64_t>(50, s.train_tokens - int64_t(i) * 50);
    CHECK(fs::file_size(s.train_files[i]) == uintmax_t(1024 + 2 * n));
  }
  CHECK(stream_of(out + "/train_*.bin") + stream_of(out + "/val_*.bin") ==
        kChinese.substr(0, kChinese.size() - va) + kEnglish.substr(0, kEnglish.size() - vb) +
            kChinese.substr(kChinese.size() - va) + kEnglish.substr(kEnglish.size() - vb));

  // Rebuilding into the same directory with fewer shards removes the stale
  // ones, so the train_*.bin glob sees only the new corpus.
  const size_t old_count = s.train_files.size();
  REQUIRE(old_count > 2);
  CorpusSummary s2 = detail::build_corpus_sharded({a, b}, out, 0.0, 1000);
  CHECK(s2.train_files.size() == 1);
  CHECK(s2.val_files.empty());
  CHECK(s2.val_tokens == 0);
  CHECK(s2.train_tokens == total);
  CHECK_FALSE(fs::exists(out + "/train_000001.bin"));
  CHECK_FALSE(fs::exists(out + "/val_000000.bin"));
  CHECK(stream_of(out + "/train_*.bin") == kChinese + kEnglish);
}

TEST_CASE("build_corpus accepts val_fraction 0.5 and rejects values outside [0, 0.5]", "[data]") {
  TempDir d;
  const std::string a = d.file("a.txt");
  write_text(a, "abcde");  // 5 bytes: floor(0.5 * 5) = 2 to val
  CorpusSummary s = build_corpus({a}, d.file("half"), 0.5);
  CHECK(s.train_tokens == 3);
  CHECK(s.val_tokens == 2);

  for (double bad : {-0.1, 0.51, 1.0, std::numeric_limits<double>::quiet_NaN()}) {
    try {
      build_corpus({a}, d.file("bad"), bad);
      FAIL("val_fraction " << bad << " was accepted");
    } catch (const ConfigError& e) {
      CHECK(e.code() == ExitCode::Usage);
      CHECK_THAT(std::string(e.what()), Catch::Contains("[0, 0.5]") &&
                                            Catch::Contains("val-fraction"));
    }
  }
  try {
    build_corpus({a}, d.file("bad"), 0.75);
    FAIL("0.75 accepted");
  } catch (const ConfigError& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("0.75"));
  }
  CHECK_FALSE(fs::exists(d.file("bad")));
}

TEST_CASE("build_corpus: a missing input or only empty inputs are DataErrors", "[data]") {
  TempDir d;
  const std::string a = d.file("a.txt"), missing = d.file("no_such_file.txt");
  write_text(a, kEnglish);
  const std::string out = d.file("out");
  try {
    build_corpus({a, missing}, out, 0.1);
    FAIL("a missing input was accepted");
  } catch (const DataError& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains(missing));
  }
  // Inputs are checked before anything is written.
  CHECK_FALSE(fs::exists(out + "/train_000000.bin"));

  const std::string e1 = d.file("e1.txt"), e2 = d.file("e2.txt");
  write_text(e1, "");
  write_text(e2, "");
  try {
    build_corpus({e1, e2}, out, 0.1);
    FAIL("only empty inputs were accepted");
  } catch (const DataError& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("empty") && Catch::Contains(e1));
  }
}
