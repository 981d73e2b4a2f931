// Token shards (DESIGN.md section 6): the llm.c format -- 256 little-endian
// int32 (magic, version, token count, vocabulary size or 0, zeros) then count
// uint16 tokens (version 1) or uint32 tokens (version 2) -- and
// the dataset that memory-maps a sorted glob of them as one token stream.
// Everything a training run could trip over later (wrong file, truncated
// copy, tokens from a bigger vocabulary) is checked here once, at open.
#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstring>
#include <limits>

#include "core/data/dataset.h"
#include "core/util/error.h"
#include "core/util/fs.h"

namespace m6 {

// The format is little-endian and tokens are read in place from the mapping.
static_assert(std::endian::native == std::endian::little,
              "token shards are read in place: a big-endian host needs byte swapping");

namespace {

constexpr int64_t kHeaderBytes = kShardHeaderInts * int64_t(sizeof(int32_t));  // 1024

// Index of the first token >= vocab, or -1. Scans in blocks whose maximum the
// compiler vectorises; only a block that holds a bad token is searched again.
template <class T>
int64_t first_token_at_least(const T* tok, int64_t n, int vocab) {
  if (int64_t(vocab) > int64_t(std::numeric_limits<T>::max())) return -1;  // every value fits
  const T limit = static_cast<T>(vocab);
  constexpr int64_t kBlock = 1 << 16;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    T mx = 0;
    for (int64_t i = b; i < e; ++i) mx = std::max(mx, tok[i]);
    if (mx < limit) continue;
    for (int64_t i = b; i < e; ++i)
      if (tok[i] >= limit) return i;
  }
  return -1;
}

std::vector<std::string> expand_glob(const std::string& pattern) {
  glob_t g{};
  const int rc = ::glob(pattern.c_str(), GLOB_ERR, nullptr, &g);
  std::vector<std::string> out;
  if (rc == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
  ::globfree(&g);
  if (rc == GLOB_ABORTED)
    throw DataError(fmt(pattern, ": cannot read a directory while expanding this pattern: ",
                        std::strerror(errno)));
  if (rc == GLOB_NOSPACE) throw Error(fmt(pattern, ": out of memory expanding the pattern"));
  if (rc == GLOB_NOMATCH || out.empty())
    throw DataError(fmt(pattern,
                        ": no file matches this pattern; make token shards with "
                        "`m6train data build --input FILE... --output DIR`"));
  // Byte order, not the locale's collation: the stream order must not depend
  // on the environment of the run.
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

// ---- write_shard ---------------------------------------------------------------

namespace {
template <class T>
void write_shard_as(const std::string& path, const T* tokens, size_t n, int32_t version,
                    int vocab) {
  if (n > static_cast<size_t>(INT32_MAX))
    throw DataError(fmt(path, ": ", n, " tokens do not fit one shard (at most ", INT32_MAX,
                        ", the header's int32 count)"));
  int32_t header[kShardHeaderInts] = {};
  header[0] = kShardMagic;
  header[1] = version;
  header[2] = static_cast<int32_t>(n);
  header[kShardVocabInt] = vocab;
  AtomicFileWriter w(path);
  w.write(header, sizeof(header));
  w.write(tokens, n * sizeof(T));
  w.commit();
}
}  // namespace

void write_shard(const std::string& path, const std::vector<uint16_t>& tokens, int vocab) {
  M6_CHECK(vocab >= 0 && vocab <= 65536, vocab);
  write_shard_as(path, tokens.data(), tokens.size(), kShardVersion, vocab);
}

void write_shard(const std::string& path, const std::vector<uint32_t>& tokens, int vocab) {
  M6_CHECK(vocab > 0, vocab);
  const int64_t bad = first_token_at_least(tokens.data(), int64_t(tokens.size()), vocab);
  M6_CHECK(bad < 0, path, ": token ", tokens[bad], " >= vocab ", vocab);
  if (vocab <= 65536) {
    const std::vector<uint16_t> narrow(tokens.begin(), tokens.end());
    write_shard_as(path, narrow.data(), narrow.size(), kShardVersion, vocab);
  } else {
    write_shard_as(path, tokens.data(), tokens.size(), kShardVersionWide, vocab);
  }
}

bool vocab_compatible(int shard_vocab, int model_vocab) {
  return shard_vocab <= model_vocab && model_vocab <= (shard_vocab + 127) / 128 * 128;
}

// ---- one mapped shard ----------------------------------------------------------

struct TokenDataset::Shard {
  std::string path;
  void* map = nullptr;  // the whole file, read-only
  size_t map_bytes = 0;
  const void* tokens = nullptr;  // [count] uint16 or uint32, at map + 1024
  int width = 2;                 // bytes per token
  int64_t count = 0;
  int vocab = 0;                 // header[3]

  Shard() = default;
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;
  ~Shard() {
    if (map != nullptr) ::munmap(map, map_bytes);
  }

  // Maps `path` and checks header, size and tokens. Throws DataError.
  void open(const std::string& p, int model_vocab) {
    path = p;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      throw DataError(fmt(path, ": cannot open token shard: ", std::strerror(errno)));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int e = errno;
      ::close(fd);
      throw DataError(fmt(path, ": cannot stat token shard: ", std::strerror(e)));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      throw DataError(fmt(path, ": not a regular file (a token shard is expected)"));
    }
    const int64_t file_bytes = st.st_size;
    if (file_bytes < kHeaderBytes) {
      ::close(fd);
      throw DataError(fmt(path, ": file is ", file_bytes, " bytes, shorter than the ",
                          kHeaderBytes, "-byte shard header (", kShardHeaderInts,
                          " int32); not a token shard or truncated"));
    }
    map_bytes = static_cast<size_t>(file_bytes);
    void* m = ::mmap(nullptr, map_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    const int map_errno = errno;
    ::close(fd);  // the mapping keeps the file alive
    if (m == MAP_FAILED)
      throw DataError(fmt(path, ": cannot mmap token shard (", file_bytes,
                          " bytes): ", std::strerror(map_errno)));
    map = m;

    int32_t header[kShardVocabInt + 1];
    std::memcpy(header, map, sizeof(header));
    if (header[0] != kShardMagic)
      throw DataError(fmt(path, ": bad magic number: found ", header[0], ", expected ",
                          kShardMagic, " (not a token shard)"));
    if (header[1] != kShardVersion && header[1] != kShardVersionWide)
      throw DataError(fmt(path, ": unsupported shard version: found ", header[1], ", supported ",
                          kShardVersion, " (uint16 tokens) and ", kShardVersionWide,
                          " (uint32 tokens)"));
    width = header[1] == kShardVersion ? 2 : 4;
    count = header[2];
    if (count < 0)
      throw DataError(fmt(path, ": header token count is negative (", count, ")"));
    vocab = header[kShardVocabInt];
    if (vocab < 0 || (width == 2 && vocab > 65536))
      throw DataError(fmt(path, ": header vocabulary size ", vocab, " is invalid for version ",
                          header[1], " (0 = not recorded, at most 65536 for uint16 tokens)"));
    if (vocab > 0 && !vocab_compatible(vocab, model_vocab))
      throw DataError(fmt(path, ": shard vocabulary size ", vocab,
                          " (from the tokenizer it was built with) does not match model.vocab_size ",
                          model_vocab, "; set model.vocab_size: ", vocab,
                          " or rebuild the shards with the model's tokenizer"));
    const int64_t want_bytes = kHeaderBytes + width * count;
    if (file_bytes != want_bytes)
      throw DataError(fmt(path, ": file size is ", file_bytes, " bytes but the header's count of ",
                          count, " tokens needs ", want_bytes, " (", kHeaderBytes, " + ", width,
                          "*", count, "): ",
                          file_bytes < want_bytes ? "truncated data" : "extra bytes after the data"));
    tokens = static_cast<const char*>(map) + kHeaderBytes;

    ::madvise(map, map_bytes, MADV_SEQUENTIAL);  // a hint for the scan below; failure is harmless
    const int64_t bad =
        width == 2 ? first_token_at_least(static_cast<const uint16_t*>(tokens), count, model_vocab)
                   : first_token_at_least(static_cast<const uint32_t*>(tokens), count, model_vocab);
    if (bad >= 0)
      throw DataError(fmt(path, ": token at index ", bad, " is ", token(bad),
                          ", out of range for vocab size ", model_vocab,
                          " (tokens must be < vocab; was this shard made with another tokenizer?)"));
    ::madvise(map, map_bytes, MADV_RANDOM);  // training reads random windows
  }

  uint32_t token(int64_t i) const {
    return width == 2 ? static_cast<const uint16_t*>(tokens)[i]
                      : static_cast<const uint32_t*>(tokens)[i];
  }
};

// ---- TokenDataset --------------------------------------------------------------

TokenDataset::TokenDataset() = default;
TokenDataset::~TokenDataset() = default;
TokenDataset::TokenDataset(TokenDataset&&) noexcept = default;
TokenDataset& TokenDataset::operator=(TokenDataset&&) noexcept = default;

TokenDataset TokenDataset::open(const std::string& glob, int vocab, int seq_len) {
  M6_CHECK(vocab > 0, "vocab ", vocab);
  M6_CHECK(seq_len > 0, "seq_len ", seq_len);
  TokenDataset ds;
  ds.files_ = expand_glob(glob);
  for (const std::string& f : ds.files_) {
    auto s = std::make_unique<Shard>();
    s->open(f, vocab);
    if (s->vocab > 0) {
      if (ds.shard_vocab_ > 0 && s->vocab != ds.shard_vocab_)
        throw DataError(fmt(f, ": shard vocabulary size ", s->vocab, " differs from ",
                            ds.shard_vocab_, " of the shards before it in ", glob,
                            " (shards of different tokenizers in one data set)"));
      ds.shard_vocab_ = s->vocab;
    }
    ds.starts_.push_back(ds.total_);
    ds.total_ += s->count;
    ds.shards_.push_back(std::move(s));
  }
  const int64_t need = int64_t(seq_len) + 1;  // T inputs and the target after the last
  if (ds.total_ < need) {
    std::string names;
    for (size_t i = 0; i < ds.files_.size() && i < 4; ++i)
      names += (i ? ", " : "") + ds.files_[i];
    if (ds.files_.size() > 4) names += ", ...";
    const std::string where = ds.files_.size() == 1 ? ds.files_[0] : glob;
    throw DataError(fmt(where, ": too few tokens: ", ds.files_.size(), " shard(s) (", names,
                        ") hold ", ds.total_, " tokens, but one sequence of seq_len ", seq_len,
                        " needs ", need));
  }
  return ds;
}

void TokenDataset::read(int64_t pos, int64_t n, int32_t* out) const {
  if (pos < 0 || n < 0 || pos > total_ - n)
    throw Error(fmt("TokenDataset::read: window [", pos, ", ", pos, " + ", n,
                    ") is outside the stream of ", total_, " tokens"));
  if (n == 0) return;
  // Last shard starting at or before pos (empty shards share a start with the next).
  size_t s = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), pos) -
                                 starts_.begin()) - 1;
  int64_t local = pos - starts_[s];
  while (n > 0) {
    M6_CHECK(s < shards_.size(), "pos ", pos, " n ", n);
    const Shard& sh = *shards_[s];
    const int64_t take = std::min(n, sh.count - local);
    if (sh.width == 2) {
      const uint16_t* t = static_cast<const uint16_t*>(sh.tokens) + local;
      for (int64_t i = 0; i < take; ++i) out[i] = t[i];
    } else {
      const uint32_t* t = static_cast<const uint32_t*>(sh.tokens) + local;
      for (int64_t i = 0; i < take; ++i) out[i] = static_cast<int32_t>(t[i]);
    }
    out += take;
    n -= take;
    ++s;
    local = 0;
  }
}

}  // namespace m6
