// Sampling (greedy, top-k, temperature, seeds) and the UTF-8 sanitizer that
// prints byte tokens.
#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "core/infer/generate.h"
#include "core/infer/utf8.h"

using m6::SampleOptions;
using m6::SampleRng;

TEST_CASE("greedy picks the largest logit, ties to the lower index", "[infer]") {
  const std::vector<float> l = {0.5f, 2.0f, -1.0f, 2.0f};
  SampleOptions o;
  o.temperature = 0;
  SampleRng rng(1);
  CHECK(m6::sample_token(l.data(), 4, o, rng) == 1);
  o.temperature = 5.0;
  o.top_k = 1;  // top-1 is greedy at any temperature
  for (int i = 0; i < 20; ++i) CHECK(m6::sample_token(l.data(), 4, o, rng) == 1);
}

TEST_CASE("sampling follows softmax(logits / T) within the top k", "[infer]") {
  const std::vector<float> l = {1.0f, 0.0f, 2.0f, -0.5f, 1.5f};
  for (double temp : {1.0, 0.5}) {
    for (int k : {0, 3}) {
      CAPTURE(temp, k);
      SampleOptions o;
      o.temperature = temp;
      o.top_k = k;
      SampleRng rng(42);
      const int n = 40000;
      std::vector<int> count(5, 0);
      for (int i = 0; i < n; ++i) ++count[m6::sample_token(l.data(), 5, o, rng)];
      // Expected: softmax over the allowed tokens (top 3 = indices 2, 4, 0).
      std::vector<double> p(5, 0.0);
      double z = 0;
      for (int v = 0; v < 5; ++v) {
        const bool allowed = k == 0 || v == 2 || v == 4 || v == 0;
        if (allowed) z += p[v] = std::exp(l[v] / temp);
      }
      for (int v = 0; v < 5; ++v) {
        CAPTURE(v);
        CHECK(double(count[v]) / n == Approx(p[v] / z).margin(0.01));
        if (p[v] == 0) CHECK(count[v] == 0);
      }
    }
  }
}

TEST_CASE("a seed gives the same draws, another seed others", "[infer]") {
  SampleRng a(7), b(7), c(8);
  bool differ = false;
  for (int i = 0; i < 100; ++i) {
    const double x = a.uniform();
    CHECK(x == b.uniform());
    CHECK((x >= 0.0 && x < 1.0));
    differ |= x != c.uniform();
  }
  CHECK(differ);
}

TEST_CASE("valid UTF-8 passes through the sanitizer unchanged", "[infer]") {
  const std::string s = "plain ASCII\n\xC3\xA9t\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x98\x80 \xEF\xBF\xBD";
  CHECK(m6::sanitize_utf8(s) == s);
  CHECK(m6::invalid_utf8_offset(s) == std::string::npos);
  CHECK(m6::invalid_utf8_offset("") == std::string::npos);
}

TEST_CASE("invalid UTF-8 is replaced by U+FFFD per maximal subpart", "[infer]") {
  const std::string R = "\xEF\xBF\xBD";
  CHECK(m6::sanitize_utf8("a\xFF" "b") == "a" + R + "b");
  CHECK(m6::sanitize_utf8("\xE2\x82") == R);                  // cut short at the end
  CHECK(m6::sanitize_utf8("\xE2\x82" "a") == R + "a");         // cut short by ASCII
  CHECK(m6::sanitize_utf8("\xC0\xAF") == R + R);               // overlong: C0 never starts one
  CHECK(m6::sanitize_utf8("\xED\xA0\x80") == R + R + R);       // surrogate
  CHECK(m6::sanitize_utf8("\xF4\x90\x80\x80") == R + R + R + R);  // above U+10FFFF
  CHECK(m6::sanitize_utf8("\x80\xC3\xA9") == R + "\xC3\xA9");  // stray continuation
  CHECK(m6::sanitize_utf8("\xE4\xB8\xE4\xB8\xAD") == R + "\xE4\xB8\xAD");
  // Streaming gives the same text as the whole string.
  m6::Utf8Sanitizer s;
  std::string out;
  for (char c : std::string("x\xE4\xB8\xAD\xFFy\xF0\x9F")) s.feed(static_cast<uint8_t>(c), out);
  s.finish(out);
  CHECK(out == "x\xE4\xB8\xAD" + R + "y" + R);

  CHECK(m6::invalid_utf8_offset("ab\xFF") == 2);
  CHECK(m6::invalid_utf8_offset("\xC3\xA9\xE2\x82") == 2);
  CHECK(m6::invalid_utf8_offset("\xC3\xA9\xE2\x82z") == 2);
  CHECK(m6::invalid_utf8_offset("\xED\xA0\x80") == 0);
}
