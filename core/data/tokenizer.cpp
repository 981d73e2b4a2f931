// make_tokenizer: parses --tokenizer SPEC; the byte-level tokenizer.
#include <cstdlib>

#include "core/data/tokenizer.h"
#include "core/data/tokenizer_impl.h"
#include "core/util/error.h"

namespace m6 {

namespace {

class ByteTokenizer final : public Tokenizer {
 public:
  std::string name() const override { return "bytes"; }
  int vocab_size() const override { return 256; }
  void encode(std::string_view text, std::vector<uint32_t>& out) const override {
    for (const char c : text) out.push_back(static_cast<uint8_t>(c));
  }
  std::string decode(const std::vector<uint32_t>& ids) const override {
    std::string s;
    s.reserve(ids.size());
    for (const uint32_t id : ids) {
      if (id > 255)
        throw DataError(fmt("token id ", id, " is out of range for the byte tokenizer (vocab 256)"));
      s.push_back(static_cast<char>(id));
    }
    return s;
  }
  size_t split_point(std::string_view text) const override { return text.size(); }
};

}  // namespace

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& spec) {
  if (spec == "bytes") return std::make_unique<ByteTokenizer>();
  if (spec == "gpt2") {
    const char* dir = std::getenv("M6_GPT2_DIR");
    if (dir == nullptr || *dir == '\0')
      throw ConfigError(
          "--tokenizer gpt2: no vocabulary directory; use --tokenizer gpt2:DIR or set M6_GPT2_DIR "
          "to a directory holding GPT-2's encoder.json and vocab.bpe (scripts/gpt2-vocab.sh DIR "
          "puts them there)");
    return detail::make_gpt2_tokenizer(dir);
  }
  if (spec.starts_with("gpt2:") && spec.size() > 5) return detail::make_gpt2_tokenizer(spec.substr(5));
  if (spec.starts_with("spm:") && spec.size() > 4) return detail::make_spm_tokenizer(spec.substr(4));
  throw ConfigError(fmt("--tokenizer '", spec,
                        "' is not a tokenizer; use bytes, gpt2, gpt2:DIR or spm:MODEL_FILE"));
}

}  // namespace m6
