// Tokenizers of `m6train data build --tokenizer SPEC`:
//   bytes        each UTF-8 byte is a token (V = 256)
//   gpt2[:DIR]   GPT-2's byte-level BPE, written here (the pre-tokenisation
//                pattern, the byte-to-unicode alphabet, the merges), with the
//                vocabulary and merges read from DIR: encoder.json + vocab.bpe
//                (OpenAI's names) or vocab.json + merges.txt (Hugging Face's).
//                Bare `gpt2` reads DIR from the environment variable M6_GPT2_DIR.
//   spm:MODEL    a SentencePiece model file, through the sentencepiece library
// A bad spec is a ConfigError (exit 2); a missing, unreadable or corrupt
// vocabulary or model file is a DataError (exit 3) naming the file.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace m6 {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // "bytes", "gpt2 (DIR)", "spm:MODEL": for messages.
  virtual std::string name() const = 0;
  // Token ids are in [0, vocab_size()).
  virtual int vocab_size() const = 0;
  // Appends the tokens of `text` to `out`. Any bytes are accepted (invalid
  // UTF-8 included); not thread-safe (the BPE keeps a cache).
  virtual void encode(std::string_view text, std::vector<uint32_t>& out) const = 0;
  virtual std::string decode(const std::vector<uint32_t>& ids) const = 0;
  // The largest p <= text.size() such that encoding text[0, p) and text[p, end)
  // separately gives the tokens of the whole text (0 if there is none), so
  // that a corpus can be tokenised in pieces of bounded size.
  virtual size_t split_point(std::string_view text) const = 0;
};

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& spec);

// GPT-2's pre-tokenisation: the byte ranges [begin, end) of `text` matched, in
// order, by the pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (letters, numbers and white space by Unicode's properties). A byte that is
// not part of valid UTF-8 counts as one character that is neither.
std::vector<std::pair<size_t, size_t>> gpt2_pretokenize(std::string_view text);

// GPT-2's byte-to-unicode alphabet: the code point that stands for byte b in
// encoder.json and vocab.bpe.
uint32_t gpt2_byte_to_unicode(uint8_t b);

}  // namespace m6
