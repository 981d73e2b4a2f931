#include "core/util/failpoint.h"

#include <csignal>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/util/error.h"

namespace m6 {
namespace {

struct Entry {
  Failpoint point;
  int64_t step;
  int rank;  // -1: every rank
};

struct Name {
  const char* text;
  Failpoint point;
};
constexpr Name kNames[] = {
    {"nan_grad", Failpoint::NanGrad},
    {"overflow", Failpoint::Overflow},
    {"nan_loss", Failpoint::NanLoss},
    {"spike_loss", Failpoint::SpikeLoss},
    {"signal", Failpoint::Signal},
    {"signal_save", Failpoint::SignalSave},
    {"slow_save", Failpoint::SlowSave},
    {"kill_step", Failpoint::KillStep},
    {"kill_save_files", Failpoint::KillSaveFiles},
    {"kill_save_manifest", Failpoint::KillSaveManifest},
    {"kill_save_rename", Failpoint::KillSaveRename},
    {"kill_save_latest", Failpoint::KillSaveLatest},
};

int64_t parse_int(const std::string& s, const std::string& entry) {
  size_t used = 0;
  int64_t v = -1;
  try {
    v = std::stoll(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (s.empty() || used != s.size() || v < 0)
    throw ConfigError(fmt("M6_FAILPOINTS: '", entry, "': '", s,
                          "' is not a non-negative integer (expected name@step[@rank])"));
  return v;
}

std::vector<Entry> parse(const char* env) {
  std::vector<Entry> out;
  if (!env) return out;
  std::string all = env;
  size_t start = 0;
  while (start <= all.size()) {
    size_t end = all.find(',', start);
    if (end == std::string::npos) end = all.size();
    const std::string item = all.substr(start, end - start);
    start = end + 1;
    if (item.empty()) continue;
    const size_t at1 = item.find('@');
    if (at1 == std::string::npos)
      throw ConfigError(fmt("M6_FAILPOINTS: '", item, "' lacks @step (expected name@step[@rank])"));
    const size_t at2 = item.find('@', at1 + 1);
    const std::string name = item.substr(0, at1);
    Entry e{};
    bool known = false;
    for (const auto& n : kNames)
      if (name == n.text) e.point = n.point, known = true;
    if (!known) throw ConfigError(fmt("M6_FAILPOINTS: unknown failpoint '", name, "'"));
    e.step = parse_int(
        item.substr(at1 + 1, at2 == std::string::npos ? std::string::npos : at2 - at1 - 1), item);
    e.rank =
        at2 == std::string::npos ? -1 : static_cast<int>(parse_int(item.substr(at2 + 1), item));
    out.push_back(e);
  }
  return out;
}

}  // namespace

bool failpoint_hit(Failpoint f, int64_t step, int rank) {
  // Read-only after its first use; the environment does not change under a run.
  static const std::vector<Entry> entries = parse(std::getenv("M6_FAILPOINTS"));
  for (const Entry& e : entries)
    if (e.point == f && e.step == step && (e.rank < 0 || e.rank == rank)) return true;
  return false;
}

void failpoint_kill(Failpoint f, int64_t step, int rank) {
  if (failpoint_hit(f, step, rank)) std::raise(SIGKILL);
}

}  // namespace m6
