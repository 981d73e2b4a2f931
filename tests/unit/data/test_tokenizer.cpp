// Tokenizers: GPT-2's pre-tokenisation pattern on hand-checked cases, the
// byte alphabet, the split point used to tokenise a corpus in pieces, and the
// version-2 (uint32) shards with the vocabulary size in the header. The BPE
// itself is checked against tiktoken in tests/cli/tokenizer_gpt2.sh.
#include <stdlib.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/data/dataset.h"
#include "core/data/tokenizer.h"
#include "core/data/tokenizer_impl.h"
#include "core/util/error.h"
#include "data_test_util.h"

namespace fs = std::filesystem;
using namespace m6;

namespace {

std::vector<std::string> pieces(const std::string& s) {
  std::vector<std::string> out;
  for (const auto& [b, e] : gpt2_pretokenize(s)) out.push_back(s.substr(b, e - b));
  return out;
}

using V = std::vector<std::string>;

struct TempDir : test::TempDir {
  TempDir() : test::TempDir("m6_tok") {}
};

}  // namespace

TEST_CASE("gpt2_pretokenize follows GPT-2's pattern", "[data][tokenizer]") {
  CHECK(pieces("Hello world") == V{"Hello", " world"});
  CHECK(pieces("I'm you're he'll it's") == V{"I", "'m", " you", "'re", " he", "'ll", " it", "'s"});
  // Contractions are lower case only; otherwise the quote is punctuation.
  CHECK(pieces("IT'S") == V{"IT", "'", "S"});
  CHECK(pieces("a  b") == V{"a", " ", " b"});        // \s+(?!\S) leaves the last space
  CHECK(pieces("a   b") == V{"a", "  ", " b"});
  CHECK(pieces("a\n\nb") == V{"a", "\n", "\n", "b"});  // '\n' is not ' ': no " ?" prefix
  CHECK(pieces("a \n b") == V{"a", " \n", " b"});
  CHECK(pieces("end   ") == V{"end", "   "});        // trailing white space: one piece
  CHECK(pieces("x\t\ty") == V{"x", "\t", "\t", "y"});
  CHECK(pieces("abc123 456") == V{"abc", "123", " 456"});
  CHECK(pieces("Hi!!! ...") == V{"Hi", "!!!", " ..."});
  CHECK(pieces("\"'s\"") == V{"\"'", "s", "\""});      // a run of punctuation swallows the quote
  // Unicode: letters, numbers (superscript two is No), spaces (U+3000, U+00A0).
  CHECK(pieces("caf\xc3\xa9 \xce\xb1\xce\xb2") == V{"caf\xc3\xa9", " \xce\xb1\xce\xb2"});
  CHECK(pieces("x\xc2\xb2") == V{"x", "\xc2\xb2"});
  CHECK(pieces("a\xe3\x80\x80" "b") == V{"a", "\xe3\x80\x80", "b"});
  CHECK(pieces("\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c") == V{"\xe4\xbd\xa0\xe5\xa5\xbd", "\xef\xbc\x8c"});
  // A combining mark (U+0301, Mn) is neither letter nor number.
  CHECK(pieces("e\xcc\x81x") == V{"e", "\xcc\x81", "x"});
  // Invalid UTF-8: each bad byte is one "other" character; nothing is lost.
  CHECK(pieces("a\xff\xfe" "b") == V{"a", "\xff\xfe", "b"});
  CHECK(pieces("") == V{});
}

TEST_CASE("gpt2_pretokenize covers every byte exactly once", "[data][tokenizer]") {
  std::mt19937 rng(12);
  const std::string alphabet[] = {"a", "Z", "7", " ", "  ", "\n", "\t", "'", "s", "'ll", "!",
                                  "\xc3\xa9", "\xe4\xbd\xa0", "\xe3\x80\x80", "\xff", "\xcc\x81"};
  for (int trial = 0; trial < 200; ++trial) {
    std::string s;
    const int n = int(rng() % 40);
    for (int i = 0; i < n; ++i) s += alphabet[rng() % std::size(alphabet)];
    size_t at = 0;
    for (const auto& [b, e] : gpt2_pretokenize(s)) {
      REQUIRE(b == at);
      REQUIRE(e > b);
      at = e;
    }
    REQUIRE(at == s.size());
  }
}

TEST_CASE("line_split_point splits where the pieces of the whole text split", "[data][tokenizer]") {
  CHECK(detail::line_split_point("no newline") == 0);
  CHECK(detail::line_split_point("a\nb") == 2);
  CHECK(detail::line_split_point("a \nb") == 0);  // " \n" is one piece with the space
  CHECK(detail::line_split_point("a\n b") == 0);
  CHECK(detail::line_split_point("a\nb\n\nc\nd") == 7);
  std::mt19937 rng(34);
  const std::string alphabet[] = {"ab", "Q", "9", " ", "\n", "\n\n", "\t", "'s", ".", "\xe4\xbd\xa0",
                                  "\xe3\x80\x80", "\xc2\xa0"};
  int split = 0;
  for (int trial = 0; trial < 500; ++trial) {
    std::string s;
    const int n = 1 + int(rng() % 30);
    for (int i = 0; i < n; ++i) s += alphabet[rng() % std::size(alphabet)];
    const size_t p = detail::line_split_point(s);
    if (p == 0) continue;
    ++split;
    std::vector<std::string> parts = pieces(s.substr(0, p)), rest = pieces(s.substr(p));
    parts.insert(parts.end(), rest.begin(), rest.end());
    REQUIRE(parts == pieces(s));
  }
  CHECK(split > 50);
}

TEST_CASE("GPT-2's byte alphabet", "[data][tokenizer]") {
  CHECK(gpt2_byte_to_unicode('!') == '!');
  CHECK(gpt2_byte_to_unicode('~') == '~');
  CHECK(gpt2_byte_to_unicode(0) == 256);
  CHECK(gpt2_byte_to_unicode(' ') == 0x120);   // 'Ġ'
  CHECK(gpt2_byte_to_unicode('\n') == 0x10A);  // 'Ċ'
  CHECK(gpt2_byte_to_unicode(0xAD) == 0x143);  // soft hyphen, the last mapped byte
  CHECK(gpt2_byte_to_unicode(0xFF) == 0xFF);
}

TEST_CASE("the byte tokenizer round-trips any bytes", "[data][tokenizer]") {
  const auto t = make_tokenizer("bytes");
  CHECK(t->vocab_size() == 256);
  const std::string s("a\0\xff\n", 4);
  std::vector<uint32_t> ids;
  t->encode(s, ids);
  CHECK(ids == std::vector<uint32_t>{'a', 0, 255, '\n'});
  CHECK(t->decode(ids) == s);
  CHECK_THROWS_AS(make_tokenizer("gpt3"), ConfigError);
}

TEST_CASE("shards record the vocabulary; version 2 holds uint32 tokens", "[data][tokenizer]") {
  TempDir d;
  // Version 1 for V <= 65536, vocabulary in header[3].
  const std::vector<uint32_t> small = {0, 65535, 7, 300, 1, 2, 3, 4, 5, 6};
  write_shard(d.file("v1.bin"), small, 65536);
  std::vector<int32_t> h(256);
  std::ifstream(d.file("v1.bin"), std::ios::binary).read(reinterpret_cast<char*>(h.data()), 1024);
  CHECK(h[1] == 1);
  CHECK(h[2] == 10);
  CHECK(h[3] == 65536);
  CHECK(fs::file_size(d.file("v1.bin")) == 1024 + 2 * small.size());

  const std::vector<uint32_t> wide = {0, 65536, 99999, 123456, 70000, 1, 2, 3, 4, 5};
  write_shard(d.file("v2.bin"), wide, 200000);
  std::ifstream(d.file("v2.bin"), std::ios::binary).read(reinterpret_cast<char*>(h.data()), 1024);
  CHECK(h[1] == 2);
  CHECK(h[3] == 200000);
  CHECK(fs::file_size(d.file("v2.bin")) == 1024 + 4 * wide.size());
  TokenDataset ds = TokenDataset::open(d.file("v2.bin"), 200000, 4);
  CHECK(ds.shard_vocab() == 200000);
  std::vector<int32_t> back(wide.size());
  ds.read(0, int64_t(wide.size()), back.data());
  CHECK(std::vector<uint32_t>(back.begin(), back.end()) == wide);

  // The model's vocabulary must match (or pad it to the next multiple of 128).
  CHECK(vocab_compatible(50257, 50257));
  CHECK(vocab_compatible(50257, 50304));
  CHECK_FALSE(vocab_compatible(50257, 50305));
  CHECK_FALSE(vocab_compatible(50257, 50256));
  CHECK(vocab_compatible(256, 256));
  CHECK_FALSE(vocab_compatible(256, 257));
  try {
    TokenDataset::open(d.file("v2.bin"), 150000, 4);
    FAIL("expected a DataError");
  } catch (const DataError& e) {
    CHECK_THAT(e.what(), Catch::Contains(d.file("v2.bin")) &&
                             Catch::Contains("shard vocabulary size 200000") &&
                             Catch::Contains("model.vocab_size 150000"));
  }
  // A uint16 shard cannot claim more than 65536 tokens.
  std::vector<int32_t> bad(256, 0);
  bad[0] = kShardMagic, bad[1] = 1, bad[2] = 0, bad[3] = 70000;
  std::ofstream(d.file("bad.bin"), std::ios::binary)
      .write(reinterpret_cast<const char*>(bad.data()), 1024);
  CHECK_THROWS_WITH(TokenDataset::open(d.file("bad.bin"), 70000, 1),
                    Catch::Contains("vocabulary size 70000 is invalid for version 1"));
}
