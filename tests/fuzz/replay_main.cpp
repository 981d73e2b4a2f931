// Replays saved fuzz inputs through the normal build's readers:
//   fuzz_replay TARGET PATH...   (a PATH that is a directory means its files)
// Each input must be accepted or rejected with the reader's own error kind;
// prints one line per input and exits 1 if any did something else.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_targets.h"

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: fuzz_replay TARGET PATH...\n");
    return 2;
  }
  const m6::fuzz::Target* t = m6::fuzz::find_target(argv[1]);
  if (!t) {
    std::fprintf(stderr, "fuzz_replay: unknown target '%s' (one of %s)\n", argv[1],
                 m6::fuzz::target_names().c_str());
    return 2;
  }
  std::vector<std::string> files;
  for (int i = 2; i < argc; ++i) {
    if (fs::is_directory(argv[i])) {
      for (const auto& e : fs::directory_iterator(argv[i]))
        if (e.is_regular_file()) files.push_back(e.path().string());
    } else {
      files.push_back(argv[i]);
    }
  }
  std::sort(files.begin(), files.end());
  int bad = 0, accepted = 0, rejected = 0;
  for (const std::string& f : files) {
    std::ifstream in(f, std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                                  std::istreambuf_iterator<char>());
    const auto* d = reinterpret_cast<const uint8_t*>(bytes.data());
    std::string msg;
    try {
      if (m6::fuzz::run_one(*t, d, bytes.size(), &msg) == m6::fuzz::Outcome::Accepted) {
        ++accepted;
        std::printf("accepted  %s\n", f.c_str());
      } else {
        ++rejected;
        std::printf("rejected  %s: %.200s\n", f.c_str(), msg.c_str());
      }
    } catch (const std::exception& e) {
      ++bad;
      std::printf("FAILED    %s: %s\n", f.c_str(), e.what());
    }
  }
  std::printf("%s: %zu inputs, %d accepted, %d rejected with a clean error, %d failed\n", t->name,
              files.size(), accepted, rejected, bad);
  return bad ? 1 : files.empty() ? 1 : 0;
}
