// `m6train data build`: turns text files into token shards with a tokenizer
// (by default byte-level: each UTF-8 byte is one token, V = 256). The tail of
// every input file goes to the validation split, so each source contributes
// to both and the val split never overlaps the train split. Text is read in
// blocks and tokenised up to the tokenizer's split point, so memory stays
// bounded and the tokens equal those of the whole text at once.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <regex>

#include "core/data/dataset.h"
#include "core/data/tokenizer.h"
#include "core/util/error.h"
#include "core/util/fs.h"
#include "core/util/log.h"

namespace m6 {
namespace detail {
// Exposed for tests only (declared there): build_corpus with a smaller shard
// limit so shard splitting can be tested without 100M-token inputs.
CorpusSummary build_corpus_sharded(const std::vector<std::string>& inputs,
                                   const std::string& output_dir, double val_fraction,
                                   int64_t max_shard_tokens);
CorpusSummary build_corpus_sharded(const std::vector<std::string>& inputs,
                                   const std::string& output_dir, double val_fraction,
                                   int64_t max_shard_tokens, const Tokenizer& tokenizer);
}  // namespace detail

namespace {

constexpr int64_t kMaxShardTokens = 100'000'000;  // 200 MB of uint16 per shard

// Collects the tokens of one split and writes a shard whenever it has
// max_tokens of them: <dir>/<prefix>_000000.bin, _000001.bin, ...
class ShardSink {
 public:
  ShardSink(std::string dir, std::string prefix, int64_t max_tokens, int vocab)
      : dir_(std::move(dir)), prefix_(std::move(prefix)), max_(max_tokens), vocab_(vocab) {}

  void append(const uint32_t* tokens, int64_t n) {
    while (n > 0) {
      const int64_t take = std::min(n, max_ - int64_t(buf_.size()));
      buf_.insert(buf_.end(), tokens, tokens + take);
      tokens += take;
      n -= take;
      total_ += take;
      if (int64_t(buf_.size()) == max_) flush();
    }
  }
  void finish() {
    if (!buf_.empty()) flush();
  }
  int64_t total() const { return total_; }
  const std::vector<std::string>& files() const { return files_; }

 private:
  void flush() {
    char name[64];
    std::snprintf(name, sizeof(name), "%s_%06zu.bin", prefix_.c_str(), files_.size());
    const std::string path = (std::filesystem::path(dir_) / name).string();
    write_shard(path, buf_, vocab_);
    log_info(fmt("wrote ", path, " (", buf_.size(), " tokens)"));
    files_.push_back(path);
    buf_.clear();
  }

  std::string dir_, prefix_;
  int64_t max_;
  int vocab_;
  std::vector<uint32_t> buf_;
  std::vector<std::string> files_;
  int64_t total_ = 0;
};

struct InputFile {
  std::string path;
  int fd = -1;
  int64_t bytes = 0;
};

// Opens every input before anything is written, so a typo in the last input
// does not leave a half-built corpus.
std::vector<InputFile> open_inputs(const std::vector<std::string>& inputs) {
  std::vector<InputFile> files;
  auto close_all = [&files] {
    for (InputFile& f : files) ::close(f.fd);
  };
  for (const std::string& p : inputs) {
    InputFile f{p, ::open(p.c_str(), O_RDONLY | O_CLOEXEC), 0};
    if (f.fd < 0) {
      const int e = errno;
      close_all();
      throw DataError(fmt(p, ": cannot read input file: ", std::strerror(e)));
    }
    struct stat st {};
    if (::fstat(f.fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(f.fd);
      close_all();
      throw DataError(fmt(p, ": input is not a regular file"));
    }
    f.bytes = st.st_size;
    files.push_back(f);
  }
  return files;
}

// Reads exactly n bytes of f into out. A short read means the file changed or
// failed under us: better to stop than to build a silently different corpus.
void read_exact(InputFile& f, char* out, int64_t n) {
  while (n > 0) {
    const ssize_t got = ::read(f.fd, out, size_t(std::min<int64_t>(n, int64_t(1) << 30)));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw DataError(fmt(f.path, ": read failed: ", std::strerror(errno)));
    if (got == 0)
      throw DataError(fmt(f.path, ": file ended early (it was ", f.bytes,
                          " bytes when opened; did it change while reading?)"));
    out += got;
    n -= got;
  }
}

// Tokenises the next `n` bytes of f as one text into sink: read in blocks,
// each encoded up to the tokenizer's split point, the rest carried over.
void tokenize_bytes(InputFile& f, int64_t n, const Tokenizer& tok, std::string& text,
                    std::vector<uint32_t>& ids, ShardSink& sink) {
  constexpr int64_t kBlock = int64_t(1) << 20;
  text.clear();
  while (n > 0 || !text.empty()) {
    const int64_t take = std::min(n, kBlock);
    const size_t old = text.size();
    text.resize(old + size_t(take));
    read_exact(f, text.data() + old, take);
    n -= take;
    // The whole rest at the end; otherwise up to the split point, unless
    // there is none yet (then read on: one more block, same question).
    const size_t cut = n == 0 ? text.size() : tok.split_point(text);
    if (cut == 0) continue;
    ids.clear();
    tok.encode(std::string_view(text).substr(0, cut), ids);
    sink.append(ids.data(), int64_t(ids.size()));
    text.erase(0, cut);
  }
}

// The first byte of the val split of a file of `bytes` bytes: floor(fraction *
// bytes) from the end, moved back to the start of a UTF-8 character when the
// tokenizer reads characters.
int64_t val_start(InputFile& f, double val_fraction, bool byte_level) {
  int64_t start = f.bytes - static_cast<int64_t>(std::floor(val_fraction * double(f.bytes)));
  if (byte_level || start >= f.bytes || start == 0) return start;
  unsigned char b[4];
  const int64_t from = std::max<int64_t>(0, start - 3);
  const ssize_t got = ::pread(f.fd, b, size_t(start - from + 1), from);
  if (got != start - from + 1) return start;
  // Back over continuation bytes (10xxxxxx), at most 3.
  int64_t i = start - from;
  while (i > 0 && (b[i] & 0xC0) == 0x80) --i;
  return from + i;
}

// Removes shards of our naming scheme left by an earlier, larger build in the
// same directory: the training glob (train_*.bin) would otherwise pick them up.
void remove_stale_shards(const std::string& dir, const std::string& prefix, size_t keep) {
  const std::regex re(prefix + R"(_(\d{6})\.bin)");
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    std::smatch m;
    if (!std::regex_match(name, m, re) || std::stoul(m[1].str()) < keep) continue;
    std::filesystem::remove(e.path(), ec);
    log_info(fmt("removed stale shard ", e.path().string()));
  }
}

}  // namespace

namespace detail {

CorpusSummary build_corpus_sharded(const std::vector<std::string>& inputs,
                                   const std::string& output_dir, double val_fraction,
                                   int64_t max_shard_tokens) {
  return build_corpus_sharded(inputs, output_dir, val_fraction, max_shard_tokens,
                              *make_tokenizer("bytes"));
}

CorpusSummary build_corpus_sharded(const std::vector<std::string>& inputs,
                                   const std::string& output_dir, double val_fraction,
                                   int64_t max_shard_tokens, const Tokenizer& tokenizer) {
  M6_CHECK(max_shard_tokens > 0 && max_shard_tokens <= INT32_MAX, max_shard_tokens);
  if (!(val_fraction >= 0.0 && val_fraction <= 0.5))  // also rejects NaN
    throw ConfigError(fmt("--val-fraction (", val_fraction, ") must be in [0, 0.5]"));
  if (inputs.empty()) throw ConfigError("data build: no --input file given");

  std::vector<InputFile> files = open_inputs(inputs);
  struct Closer {
    std::vector<InputFile>& f;
    ~Closer() {
      for (InputFile& x : f) ::close(x.fd);
    }
  } closer{files};

  int64_t all_bytes = 0;
  for (const InputFile& f : files) all_bytes += f.bytes;
  if (all_bytes == 0)
    throw DataError(fmt(inputs.size() == 1 ? inputs[0] : fmt("all ", inputs.size(), " inputs (",
                                                              inputs[0], ", ...)"),
                        ": input is empty; there is nothing to tokenize"));

  make_dirs(output_dir);
  const int vocab = tokenizer.vocab_size();
  const bool byte_level = tokenizer.name() == "bytes";
  ShardSink train(output_dir, "train", max_shard_tokens, vocab);
  ShardSink val(output_dir, "val", max_shard_tokens, vocab);
  std::string text;
  std::vector<uint32_t> ids;
  for (InputFile& f : files) {
    // Empty files contribute nothing to either split.
    const int64_t v = val_start(f, val_fraction, byte_level);
    tokenize_bytes(f, v, tokenizer, text, ids, train);
    tokenize_bytes(f, f.bytes - v, tokenizer, text, ids, val);
  }
  train.finish();
  val.finish();
  remove_stale_shards(output_dir, "train", train.files().size());
  remove_stale_shards(output_dir, "val", val.files().size());

  CorpusSummary s;
  s.train_tokens = train.total();
  s.val_tokens = val.total();
  s.train_files = train.files();
  s.val_files = val.files();
  s.vocab = vocab;
  return s;
}

}  // namespace detail

CorpusSummary build_corpus(const std::vector<std::string>& inputs, const std::string& output_dir,
                           double val_fraction) {
  return detail::build_corpus_sharded(inputs, output_dir, val_fraction, kMaxShardTokens);
}

CorpusSummary build_corpus(const std::vector<std::string>& inputs, const std::string& output_dir,
                           double val_fraction, const Tokenizer& tokenizer) {
  return detail::build_corpus_sharded(inputs, output_dir, val_fraction, kMaxShardTokens,
                                      tokenizer);
}

}  // namespace m6
