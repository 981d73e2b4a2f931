#include "core/util/bytes.h"

#include <sys/resource.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace m6 {

std::optional<int64_t> parse_bytes(const std::string& text) {
  const char* s = text.c_str();
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  if (end == s || !std::isfinite(v) || v < 0) return std::nullopt;
  std::string unit(end);
  while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.front()))) unit.erase(0, 1);
  struct Unit {
    const char* name;
    double scale;
  };
  static const Unit units[] = {{"", 1},         {"B", 1},        {"KiB", 0x1p10}, {"MiB", 0x1p20},
                               {"GiB", 0x1p30}, {"TiB", 0x1p40}, {"kB", 1e3},     {"KB", 1e3},
                               {"MB", 1e6},     {"GB", 1e9},     {"TB", 1e12}};
  for (const Unit& u : units)
    if (unit == u.name) {
      const double b = v * u.scale;
      if (b > 9.0e18) return std::nullopt;
      return static_cast<int64_t>(std::llround(b));
    }
  return std::nullopt;
}

std::string format_bytes(int64_t bytes) {
  const double b = static_cast<double>(bytes);
  const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  if (b < 1024.0) return std::to_string(bytes) + " B";
  double v = b / 1024.0;
  int i = 0;
  while (v >= 1024.0 && i < 4) v /= 1024.0, ++i;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f %s", v, units[i]);
  return buf;
}

int64_t process_peak_rss_bytes() {
  struct rusage u {};
  if (getrusage(RUSAGE_SELF, &u) != 0) return 0;
  return static_cast<int64_t>(u.ru_maxrss) * 1024;  // Linux reports KiB
}

}  // namespace m6
