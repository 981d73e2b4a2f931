// Fuzz targets: the readers of files that come from outside (the YAML config,
// token shards, a checkpoint's manifest, safetensors files) fed arbitrary
// bytes. Each target must either accept the input or throw the m6::Error of
// its reader's kind (exit code 2, 3 or 4) with a message; anything else -- a
// crash, a sanitizer report, another exception, a hang -- is a bug.
//
// The same code serves two drivers: libFuzzer (fuzz_main.cpp, built by
// scripts/fuzz.sh with clang into build-fuzz) and fuzz_replay
// (replay_main.cpp, the normal build), which runs saved inputs -- the seed
// corpus and every input a fuzzer found (tests/fuzz/regress/<target>/) --
// as regression tests.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/util/error.h"

namespace m6::fuzz {

struct Target {
  const char* name;  // "config", "shard", "manifest", "safetensors"
  ExitCode code;     // the error kind its reader throws on bad input
  void (*run)(const uint8_t* data, size_t size);  // throws on bad input
};

const Target* find_target(const std::string& name);  // nullptr if unknown
std::string target_names();                          // "config, shard, ..."

// What one input did: accepted, or rejected with the right kind of Error.
enum class Outcome { Accepted, Rejected };
// Runs the target; an Error of another kind, or with an empty message, is
// rethrown as a plain std::logic_error (a finding). Other exceptions pass.
Outcome run_one(const Target& t, const uint8_t* data, size_t size, std::string* message);

}  // namespace m6::fuzz
