// Shared by the data-layer tests: a temporary directory removed with its files.
#pragma once
#include <catch2/catch.hpp>
#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>

namespace m6::test {

struct TempDir {
  std::string path;
  // PREFIX names the test in the directory name, e.g. "m6_shard".
  explicit TempDir(const std::string& prefix) {
    std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "_XXXXXX")).string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const {
    return (std::filesystem::path(path) / name).string();
  }
};

}  // namespace m6::test
