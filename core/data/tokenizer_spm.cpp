// SentencePiece models (Kudo and Richardson 2018) through the sentencepiece
// library: unigram and BPE models trained by spm_train. Text is encoded one
// line at a time (newlines themselves produce no token).
#include <sentencepiece_processor.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "core/data/tokenizer.h"
#include "core/data/tokenizer_impl.h"
#include "core/util/error.h"
#include "core/util/fs.h"

namespace m6 {

namespace {

class SpmTokenizer final : public Tokenizer {
 public:
  explicit SpmTokenizer(const std::string& path) : path_(path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
      throw DataError(fmt(path, ": cannot read SentencePiece model: ", std::strerror(errno)));
    if (!S_ISREG(st.st_mode)) throw DataError(fmt(path, ": not a regular file (a SentencePiece "
                                                  "model is expected)"));
    // Parse from memory: the library's own reader would also accept a path
    // it cannot open and say less about why.
    const std::string bytes = read_file(path);
    const auto status = sp_.LoadFromSerializedProto(bytes);
    if (!status.ok())
      throw DataError(fmt(path, ": not a valid SentencePiece model (", status.ToString(), ")"));
    if (sp_.GetPieceSize() <= 0) throw DataError(fmt(path, ": SentencePiece model has no pieces"));
  }
  std::string name() const override { return "spm:" + path_; }
  int vocab_size() const override { return sp_.GetPieceSize(); }
  // Line by line, as spm_encode does: SentencePiece models sentences, and
  // its normalisation turns a newline into a word boundary anyway.
  void encode(std::string_view text, std::vector<uint32_t>& out) const override {
    std::vector<int> ids;
    while (!text.empty()) {
      const size_t nl = text.find('\n');
      const std::string_view line = text.substr(0, nl);
      text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
      const auto status = sp_.Encode(absl::string_view(line.data(), line.size()), &ids);
      if (!status.ok())
        throw DataError(fmt(path_, ": SentencePiece failed to encode text: ", status.ToString()));
      for (const int id : ids) out.push_back(static_cast<uint32_t>(id));
    }
  }
  std::string decode(const std::vector<uint32_t>& ids) const override {
    std::vector<int> v;
    for (const uint32_t id : ids) {
      if (id >= uint32_t(sp_.GetPieceSize()))
        throw DataError(fmt("token id ", id, " is out of range for ", name(), " (vocab size ",
                            sp_.GetPieceSize(), ")"));
      v.push_back(static_cast<int>(id));
    }
    std::string s;
    const auto status = sp_.Decode(v, &s);
    if (!status.ok()) throw DataError(fmt(path_, ": SentencePiece failed to decode: ",
                                          status.ToString()));
    return s;
  }
  size_t split_point(std::string_view text) const override {
    const size_t nl = text.rfind('\n');
    return nl == std::string_view::npos ? 0 : nl + 1;
  }

 private:
  std::string path_;
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace

namespace detail {
std::unique_ptr<Tokenizer> make_spm_tokenizer(const std::string& path) {
  return std::make_unique<SpmTokenizer>(path);
}
}  // namespace detail

}  // namespace m6
