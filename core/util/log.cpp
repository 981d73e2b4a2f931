#include "core/util/log.h"

#include <cstdio>

namespace m6 {
namespace {
// Set once before any thread starts; read-only afterwards.
int g_rank = 0;
int g_world = 1;
}  // namespace

void log_set_rank(int rank, int world) {
  g_rank = rank;
  g_world = world;
}

void log_info(const std::string& msg) {
  if (g_rank != 0) return;
  std::fprintf(stdout, "%s\n", msg.c_str());
  std::fflush(stdout);
}

static void log_tagged(const char* level, const std::string& msg) {
  if (g_world > 1)
    std::fprintf(stderr, "m6train [rank %d/%d] %s: %s\n", g_rank, g_world, level, msg.c_str());
  else
    std::fprintf(stderr, "m6train %s: %s\n", level, msg.c_str());
  std::fflush(stderr);
}

void log_warn(const std::string& msg) { log_tagged("warning", msg); }
void log_error(const std::string& msg) { log_tagged("error", msg); }

}  // namespace m6
