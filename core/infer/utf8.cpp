#include "core/infer/utf8.h"

namespace m6 {

void Utf8Sanitizer::feed(uint8_t b, std::string& out) {
  if (need_ > 0) {
    if (b >= lo_ && b <= hi_) {
      pending_.push_back(static_cast<char>(b));
      lo_ = 0x80, hi_ = 0xBF;
      if (--need_ == 0) {
        out += pending_;
        pending_.clear();
      }
      return;
    }
    // The open sequence is a maximal invalid subpart; b starts afresh.
    out += kReplacementChar;
    pending_.clear();
    need_ = 0;
  }
  lo_ = 0x80, hi_ = 0xBF;
  if (b < 0x80) {
    out.push_back(static_cast<char>(b));
    return;
  }
  if (b >= 0xC2 && b <= 0xDF) {
    need_ = 1;
  } else if (b >= 0xE0 && b <= 0xEF) {
    need_ = 2;
    if (b == 0xE0) lo_ = 0xA0;  // no overlong forms
    if (b == 0xED) hi_ = 0x9F;  // no surrogates
  } else if (b >= 0xF0 && b <= 0xF4) {
    need_ = 3;
    if (b == 0xF0) lo_ = 0x90;  // no overlong forms
    if (b == 0xF4) hi_ = 0x8F;  // nothing above U+10FFFF
  } else {
    out += kReplacementChar;  // 0x80..0xC1 and 0xF5..0xFF never start a sequence
    return;
  }
  pending_.assign(1, static_cast<char>(b));
}

void Utf8Sanitizer::finish(std::string& out) {
  if (need_ > 0) out += kReplacementChar;
  pending_.clear();
  need_ = 0;
  lo_ = 0x80, hi_ = 0xBF;
}

std::string sanitize_utf8(std::string_view bytes) {
  Utf8Sanitizer s;
  std::string out;
  for (char c : bytes) s.feed(static_cast<uint8_t>(c), out);
  s.finish(out);
  return out;
}

size_t invalid_utf8_offset(std::string_view bytes) {
  // Valid input passes through unchanged; the first difference is the first bad byte.
  Utf8Sanitizer s;
  std::string out;
  size_t start = 0;  // first byte of the sequence being read
  for (size_t i = 0; i < bytes.size(); ++i) {
    const size_t before = out.size();
    s.feed(static_cast<uint8_t>(bytes[i]), out);
    if (out.compare(before, std::string::npos, bytes.substr(start, out.size() - before)) != 0)
      return start;
    if (out.size() != before) start += out.size() - before;
  }
  s.finish(out);
  return out.size() == bytes.size() ? std::string_view::npos : start;
}

}  // namespace m6
