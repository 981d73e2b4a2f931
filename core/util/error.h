// Errors carry the values that explain them and the exit code app/ maps them to
// (DESIGN.md section 7). Code below app/ throws; only app/main.cpp exits.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace m6 {

enum class ExitCode : int {
  Ok = 0,
  Internal = 1,
  Usage = 2,       // bad command line or config
  Data = 3,        // bad token shard or corpus input
  Checkpoint = 4,  // missing, corrupt or incompatible checkpoint
  Preempted = 75,  // stopped by a signal after saving
};

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg, ExitCode code = ExitCode::Internal)
      : std::runtime_error(msg), code_(code) {}
  ExitCode code() const { return code_; }

 private:
  ExitCode code_;
};

struct ConfigError : Error {
  explicit ConfigError(const std::string& m) : Error(m, ExitCode::Usage) {}
};
struct DataError : Error {
  explicit DataError(const std::string& m) : Error(m, ExitCode::Data) {}
};
struct CheckpointError : Error {
  explicit CheckpointError(const std::string& m) : Error(m, ExitCode::Checkpoint) {}
};

// Builds a message from stream-able parts: fmt("experts (", e, ") must be ...").
template <class... Args>
std::string fmt(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace m6

// Internal invariant check: a failure is a bug in m6train, not the user's input.
#define M6_CHECK(cond, ...)                                                              \
  do {                                                                                   \
    if (!(cond))                                                                         \
      throw ::m6::Error(::m6::fmt(__FILE__, ":", __LINE__, ": check failed: " #cond " ", \
                                  ##__VA_ARGS__));                                       \
  } while (0)
