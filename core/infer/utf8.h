// Byte tokens to text: a byte-level model emits single bytes, which need not
// form valid UTF-8 (a sequence cut short, a stray continuation byte).
// Utf8Sanitizer passes valid sequences through and replaces each maximal
// invalid subpart by U+FFFD (the Unicode "substitution of maximal subparts"
// practice), byte by byte, so samples can be printed as they are generated.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace m6 {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

class Utf8Sanitizer {
 public:
  // Appends to `out` what `byte` completes (nothing while a sequence is open).
  void feed(uint8_t byte, std::string& out);
  // Ends the stream: an open sequence becomes U+FFFD.
  void finish(std::string& out);

 private:
  std::string pending_;
  int need_ = 0;                  // continuation bytes still expected
  uint8_t lo_ = 0x80, hi_ = 0xBF;  // allowed range of the next continuation byte
};

// The whole string, sanitized.
std::string sanitize_utf8(std::string_view bytes);

// Offset of the first byte that is not part of valid UTF-8, or npos.
size_t invalid_utf8_offset(std::string_view bytes);

}  // namespace m6
