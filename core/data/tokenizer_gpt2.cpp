// GPT-2's byte-level BPE (Radford et al. 2019, the encoder.py of OpenAI's
// gpt-2 repository), written from its definition: text is split into pieces by
// GPT-2's pattern, each piece's UTF-8 bytes start as one token per byte, and
// the adjacent pair that comes first in the merge list is merged (every
// occurrence, left to right) until no pair of the list is left.
#include <unicode/uchar.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "core/data/tokenizer.h"
#include "core/data/tokenizer_impl.h"
#include "core/util/error.h"
#include "core/util/fs.h"

namespace m6 {

namespace {

// ---- characters ------------------------------------------------------------------

enum class Cls : uint8_t { Letter, Number, Space, Other };

struct Char {
  uint32_t cp;  // meaningful only when valid
  uint8_t len;  // bytes
  Cls cls;
};

Cls classify(uint32_t cp) {
  if (cp < 128) {
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return Cls::Letter;
    if (cp >= '0' && cp <= '9') return Cls::Number;
    if (cp == ' ' || (cp >= 9 && cp <= 13)) return Cls::Space;
    return Cls::Other;
  }
  if (u_hasBinaryProperty(static_cast<UChar32>(cp), UCHAR_WHITE_SPACE)) return Cls::Space;
  switch (u_charType(static_cast<UChar32>(cp))) {
    case U_UPPERCASE_LETTER:
    case U_LOWERCASE_LETTER:
    case U_TITLECASE_LETTER:
    case U_MODIFIER_LETTER:
    case U_OTHER_LETTER:
      return Cls::Letter;
    case U_DECIMAL_DIGIT_NUMBER:
    case U_LETTER_NUMBER:
    case U_OTHER_NUMBER:
      return Cls::Number;
    default:
      return Cls::Other;
  }
}

// Decodes the character at text[i] (i < size). Invalid UTF-8 (a stray
// continuation byte, a truncated or overlong sequence, a surrogate, a value
// past U+10FFFF) is one byte of class Other.
Char char_at(std::string_view s, size_t i) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  if (b0 < 0x80) return {b0, 1, classify(b0)};
  int n;
  uint32_t cp, min;
  if ((b0 & 0xE0) == 0xC0) {
    n = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    n = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    n = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return {0, 1, Cls::Other};
  }
  if (i + n > s.size()) return {0, 1, Cls::Other};
  for (int k = 1; k < n; ++k) {
    const auto b = static_cast<uint8_t>(s[i + k]);
    if ((b & 0xC0) != 0x80) return {0, 1, Cls::Other};
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return {0, 1, Cls::Other};
  return {cp, static_cast<uint8_t>(n), classify(cp)};
}

bool is_contraction(std::string_view s, size_t i, size_t* len) {
  if (s[i] != '\'' || i + 1 >= s.size()) return false;
  const char c = s[i + 1];
  if (c == 's' || c == 't' || c == 'm' || c == 'd') {
    *len = 2;
    return true;
  }
  if (i + 2 < s.size()) {
    const std::string_view two = s.substr(i + 1, 2);
    if (two == "re" || two == "ve" || two == "ll") {
      *len = 3;
      return true;
    }
  }
  return false;
}

// ---- the byte alphabet -------------------------------------------------------------

// bytes_to_unicode() of encoder.py: the printable bytes stand for themselves,
// the other 68 are mapped, in byte order, to U+0100, U+0101, ...
struct ByteAlphabet {
  uint32_t to_cp[256];
  std::unordered_map<uint32_t, uint8_t> to_byte;
  ByteAlphabet() {
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_cp[b] = printable ? uint32_t(b) : next++;
      to_byte[to_cp[b]] = static_cast<uint8_t>(b);
    }
  }
};

const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

// A token of encoder.json / vocab.bpe, written in the byte alphabet, as the raw
// bytes it stands for. Returns false if a character is outside the alphabet.
bool unicode_to_bytes(std::string_view tok, std::string* out) {
  out->clear();
  const ByteAlphabet& a = alphabet();
  for (size_t i = 0; i < tok.size();) {
    const Char c = char_at(tok, i);
    if (c.len == 1 && static_cast<uint8_t>(tok[i]) >= 0x80) return false;  // invalid UTF-8
    const auto it = a.to_byte.find(c.cp);
    if (it == a.to_byte.end()) return false;
    out->push_back(static_cast<char>(it->second));
    i += c.len;
  }
  return !out->empty();
}

std::string cp_name(std::string_view tok) {
  std::string s;
  for (size_t i = 0; i < tok.size();) {
    const Char c = char_at(tok, i);
    const auto it = alphabet().to_byte.find(c.cp);
    if (c.len > 1 && it == alphabet().to_byte.end()) {
      char buf[16];
      std::snprintf(buf, sizeof(buf), "U+%04X", c.cp);
      return buf;
    }
    i += c.len;
  }
  return "an invalid UTF-8 byte";
}

// ---- the BPE -------------------------------------------------------------------------

class Gpt2Tokenizer final : public Tokenizer {
 public:
  Gpt2Tokenizer(const std::string& dir);

  std::string name() const override { return "gpt2 (" + dir_ + ")"; }
  int vocab_size() const override { return static_cast<int>(id_to_bytes_.size()); }
  void encode(std::string_view text, std::vector<uint32_t>& out) const override;
  std::string decode(const std::vector<uint32_t>& ids) const override;
  size_t split_point(std::string_view text) const override { return detail::line_split_point(text); }

 private:
  void load_vocab(const std::string& path);
  void load_merges(const std::string& path);
  void bpe(std::string_view piece, std::vector<uint32_t>& out) const;

  static uint64_t key(uint32_t a, uint32_t b) { return (uint64_t(a) << 32) | b; }

  std::string dir_;
  std::vector<std::string> id_to_bytes_;
  std::unordered_map<std::string, uint32_t> bytes_to_id_;
  uint32_t byte_id_[256];
  struct Merge {
    uint32_t rank, id;
  };
  std::unordered_map<uint64_t, Merge> merges_;
  mutable std::unordered_map<std::string, std::vector<uint32_t>> cache_;
};

std::string pick(const std::string& dir, const char* a, const char* b) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(fs::path(dir) / a, ec)) return (fs::path(dir) / a).string();
  if (fs::exists(fs::path(dir) / b, ec)) return (fs::path(dir) / b).string();
  return {};
}

Gpt2Tokenizer::Gpt2Tokenizer(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    throw DataError(fmt(dir, ": GPT-2 vocabulary directory does not exist (it must hold "
                             "encoder.json and vocab.bpe, or vocab.json and merges.txt)"));
  const std::string vocab = pick(dir, "encoder.json", "vocab.json");
  const std::string merges = pick(dir, "vocab.bpe", "merges.txt");
  if (vocab.empty())
    throw DataError(fmt(dir, ": no GPT-2 vocabulary here (expected encoder.json or vocab.json)"));
  if (merges.empty())
    throw DataError(fmt(dir, ": no GPT-2 merge list here (expected vocab.bpe or merges.txt)"));
  load_vocab(vocab);
  load_merges(merges);
}

void Gpt2Tokenizer::load_vocab(const std::string& path) {
  const std::string text = read_file(path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw DataError(fmt(path, ": not a valid GPT-2 vocabulary (JSON parse error: ", e.what(), ")"));
  }
  if (!j.is_object() || j.empty())
    throw DataError(fmt(path, ": not a GPT-2 vocabulary (expected a JSON object of token: id)"));
  constexpr int64_t kMaxVocab = int64_t(1) << 24;
  std::vector<std::string> by_id;
  std::string bytes;
  for (const auto& [tok, val] : j.items()) {
    if (!val.is_number_integer() || val.get<int64_t>() < 0 || val.get<int64_t>() >= kMaxVocab)
      throw DataError(fmt(path, ": token \"", tok, "\" has id ", val.dump(),
                          "; ids must be whole numbers in [0, ", kMaxVocab, ")"));
    const auto id = static_cast<size_t>(val.get<int64_t>());
    if (!unicode_to_bytes(tok, &bytes))
      throw DataError(fmt(path, ": token \"", tok, "\" (id ", id, ") contains ", cp_name(tok),
                          ", which is not in GPT-2's byte alphabet (is this a GPT-2 vocabulary?)"));
    if (id >= by_id.size()) by_id.resize(id + 1);
    if (!by_id[id].empty())
      throw DataError(fmt(path, ": id ", id, " is given to two tokens"));
    by_id[id] = bytes;
    if (!bytes_to_id_.emplace(bytes, static_cast<uint32_t>(id)).second)
      throw DataError(fmt(path, ": token \"", tok, "\" appears twice"));
  }
  for (size_t id = 0; id < by_id.size(); ++id)
    if (by_id[id].empty())
      throw DataError(fmt(path, ": no token has id ", id, " (ids must be 0.. ", by_id.size() - 1,
                          " without gaps)"));
  for (int b = 0; b < 256; ++b) {
    const auto it = bytes_to_id_.find(std::string(1, static_cast<char>(b)));
    if (it == bytes_to_id_.end())
      throw DataError(fmt(path, ": byte ", b, " has no token (a byte-level vocabulary has all 256)"));
    byte_id_[b] = it->second;
  }
  id_to_bytes_ = std::move(by_id);
}

void Gpt2Tokenizer::load_merges(const std::string& path) {
  const std::string text = read_file(path);
  size_t pos = 0, line_no = 0;
  uint32_t rank = 0;
  std::string a, b;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && line.starts_with("#version"))) continue;
    const size_t sp = line.find(' ');
    if (sp == std::string_view::npos || sp == 0 || sp + 1 == line.size() ||
        line.find(' ', sp + 1) != std::string_view::npos)
      throw DataError(fmt(path, ":", line_no, ": expected a merge \"A B\" (two tokens and one "
                          "space), found \"", line.substr(0, 80), "\""));
    if (!unicode_to_bytes(line.substr(0, sp), &a) || !unicode_to_bytes(line.substr(sp + 1), &b))
      throw DataError(fmt(path, ":", line_no, ": \"", line.substr(0, 80),
                          "\" has a character outside GPT-2's byte alphabet"));
    const auto ia = bytes_to_id_.find(a), ib = bytes_to_id_.find(b), iab = bytes_to_id_.find(a + b);
    if (ia == bytes_to_id_.end() || ib == bytes_to_id_.end() || iab == bytes_to_id_.end())
      throw DataError(fmt(path, ":", line_no, ": merge \"", line, "\" uses or makes a token that "
                          "the vocabulary does not have (vocabulary and merges from different "
                          "tokenizers?)"));
    merges_.emplace(key(ia->second, ib->second), Merge{rank++, iab->second});
  }
  if (merges_.empty()) throw DataError(fmt(path, ": the merge list is empty"));
}

void Gpt2Tokenizer::bpe(std::string_view piece, std::vector<uint32_t>& out) const {
  if (piece.size() == 1) {
    out.push_back(byte_id_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  std::string k(piece);
  const auto hit = cache_.find(k);
  if (hit != cache_.end()) {
    out.insert(out.end(), hit->second.begin(), hit->second.end());
    return;
  }
  std::vector<uint32_t> w(piece.size()), next;
  for (size_t i = 0; i < piece.size(); ++i) w[i] = byte_id_[static_cast<uint8_t>(piece[i])];
  while (w.size() > 1) {
    uint32_t best = std::numeric_limits<uint32_t>::max();
    Merge m{};
    uint32_t first = 0, second = 0;
    for (size_t i = 0; i + 1 < w.size(); ++i) {
      const auto it = merges_.find(key(w[i], w[i + 1]));
      if (it != merges_.end() && it->second.rank < best) {
        best = it->second.rank;
        m = it->second;
        first = w[i], second = w[i + 1];
      }
    }
    if (best == std::numeric_limits<uint32_t>::max()) break;
    next.clear();
    for (size_t i = 0; i < w.size();) {
      if (i + 1 < w.size() && w[i] == first && w[i + 1] == second) {
        next.push_back(m.id);
        i += 2;
      } else {
        next.push_back(w[i++]);
      }
    }
    w.swap(next);
  }
  out.insert(out.end(), w.begin(), w.end());
  if (cache_.size() > (size_t(1) << 20)) cache_.clear();  // bounded memory on huge corpora
  cache_.emplace(std::move(k), std::move(w));
}

void Gpt2Tokenizer::encode(std::string_view text, std::vector<uint32_t>& out) const {
  for (const auto& [b, e] : gpt2_pretokenize(text)) bpe(text.substr(b, e - b), out);
}

std::string Gpt2Tokenizer::decode(const std::vector<uint32_t>& ids) const {
  std::string s;
  for (const uint32_t id : ids) {
    if (id >= id_to_bytes_.size())
      throw DataError(fmt("token id ", id, " is out of range for ", name(), " (vocab size ",
                          id_to_bytes_.size(), ")"));
    s += id_to_bytes_[id];
  }
  return s;
}

}  // namespace

uint32_t gpt2_byte_to_unicode(uint8_t b) { return alphabet().to_cp[b]; }

std::vector<std::pair<size_t, size_t>> gpt2_pretokenize(std::string_view s) {
  std::vector<std::pair<size_t, size_t>> out;
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    size_t len;
    if (is_contraction(s, i, &len)) {  // 's|'t|'re|'ve|'m|'ll|'d
      out.emplace_back(i, i + len);
      i += len;
      continue;
    }
    const Char c = char_at(s, i);
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': an optional space, then a run of one class.
    size_t j = i;
    Cls cls = c.cls;
    if (s[i] == ' ' && i + 1 < n) {
      const Char d = char_at(s, i + 1);
      if (d.cls != Cls::Space) {
        j = i + 1;
        cls = d.cls;
      }
    }
    if (cls != Cls::Space) {
      size_t k = j;
      while (k < n) {
        const Char d = char_at(s, k);
        if (d.cls != cls) break;
        k += d.len;
      }
      out.emplace_back(i, k);
      i = k;
      continue;
    }
    // A run of white space: '\s+(?!\S)' takes all of it at the end of the
    // text, else all but its last character (which then starts the next
    // piece); a single white-space character before a non-space is '\s+'.
    size_t k = i, last = i;
    while (k < n) {
      const Char d = char_at(s, k);
      if (d.cls != Cls::Space) break;
      last = k;
      k += d.len;
    }
    const size_t end = (k == n || last == i) ? k : last;
    out.emplace_back(i, end);
    i = end;
  }
  return out;
}

namespace detail {

size_t line_split_point(std::string_view s) {
  // After a newline that follows a non-space and precedes an ASCII non-space:
  // no piece of the pattern crosses it, and the newline is a piece of its own
  // both at the end of the first part and in the whole text.
  auto is_ascii_space = [](char c) { return c == ' ' || (c >= 9 && c <= 13); };
  for (size_t p = s.size(); p >= 2; --p) {
    if (p == s.size()) continue;
    if (s[p - 1] == '\n' && !is_ascii_space(s[p - 2]) && static_cast<uint8_t>(s[p]) < 0x80 &&
        !is_ascii_space(s[p])) {
      // s[p-2] must not be white space as a whole character either (e.g. the
      // last byte of U+3000): the character before the newline.
      size_t q = p - 2;
      while (q > 0 && (static_cast<uint8_t>(s[q]) & 0xC0) == 0x80) --q;
      if (char_at(s, q).cls == Cls::Space) continue;
      return p;
    }
  }
  return 0;
}

std::unique_ptr<Tokenizer> make_gpt2_tokenizer(const std::string& dir) {
  return std::make_unique<Gpt2Tokenizer>(dir);
}

}  // namespace detail

}  // namespace m6
