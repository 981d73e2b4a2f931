// Console lines and metrics.jsonl records (see metrics.h for the formats).
#include "core/metrics/metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/util/error.h"
#include "core/util/fs.h"

namespace m6 {
namespace {

// Keys keep the order they are written in, so "kind" leads every line.
using OrderedJson = nlohmann::ordered_json;

std::string printf_string(const char* format, ...) __attribute__((format(printf, 1, 2)));
std::string printf_string(const char* format, ...) {
  char buf[256];
  va_list args;
  va_start(args, format);
  int n = std::vsnprintf(buf, sizeof(buf), format, args);
  va_end(args);
  return n < 0 ? std::string() : std::string(buf, std::min<size_t>(n, sizeof(buf) - 1));
}

// JSON has no NaN or Infinity. nlohmann would already print them as null, but
// that is an implementation detail of its serializer; the file format says
// null, so the conversion happens here, explicitly.
OrderedJson number(double v) { return std::isfinite(v) ? OrderedJson(v) : OrderedJson(nullptr); }

void replace_non_finite(OrderedJson& j) {
  if (j.is_number_float()) {
    if (!std::isfinite(j.get<double>())) j = nullptr;
  } else if (j.is_structured()) {
    for (auto& child : j) replace_non_finite(child);
  }
}

// 41234.5 -> "41.2k"
std::string format_rate(double v) {
  if (!std::isfinite(v)) return "?";
  if (v < 1e3) return printf_string("%.0f", v);
  if (v < 1e6) return printf_string("%.1fk", v / 1e3);
  if (v < 1e9) return printf_string("%.2fM", v / 1e6);
  return printf_string("%.2fG", v / 1e9);
}

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long long s = std::llround(seconds);
  if (s < 60) return printf_string("%llds", s);
  if (s < 3600) return printf_string("%lldm%02llds", s / 60, s % 60);
  return printf_string("%lldh%02lldm", s / 3600, (s % 3600) / 60);
}

std::string format_train_line(const TrainRecord& r) {
  std::string line = r.steps_total > 0
                         ? printf_string("step %lld/%lld", static_cast<long long>(r.step),
                                         static_cast<long long>(r.steps_total))
                         : printf_string("step %lld", static_cast<long long>(r.step));
  line += printf_string(" | loss %.4f | lr %.2e | gnorm %.3f", r.loss, r.lr, r.grad_norm);
  line += " | " + format_rate(r.tokens_per_s) + " tok/s";
  if (std::isfinite(r.mfu)) line += printf_string(" | MFU %.1f%%", 100.0 * r.mfu);
  line += " | " + format_duration(r.elapsed_s) + " elapsed, ETA " + format_duration(r.eta_s);
  if (!r.expert_load.empty()) line += printf_string(" | dropped %.1f%%", 100.0 * r.dropped_frac);
  if (r.skipped_steps > 0)
    line += printf_string(" | skipped %lld", static_cast<long long>(r.skipped_steps));
  return line;
}

std::string format_eval_line(const EvalRecord& r) {
  return printf_string("eval step %lld | eval loss %.4f | ", static_cast<long long>(r.step),
                       r.eval_loss) +
         format_duration(r.elapsed_s) + " elapsed";
}

std::vector<double> expert_load_max_over_mean(const std::vector<std::vector<int64_t>>& load) {
  std::vector<double> out;
  out.reserve(load.size());
  for (const auto& layer : load) {
    int64_t sum = 0, max = 0;
    for (int64_t n : layer) {
      sum += n;
      max = std::max(max, n);
    }
    out.push_back(sum > 0 ? static_cast<double>(max) * static_cast<double>(layer.size()) /
                                static_cast<double>(sum)
                          : std::nan(""));
  }
  return out;
}

MetricsWriter::MetricsWriter(const std::string& run_dir, bool enabled) {
  if (!enabled) return;
  make_dirs(run_dir);
  path_ = (std::filesystem::path(run_dir) / "metrics.jsonl").string();
  // O_APPEND: a resumed run continues the file of the run it resumes.
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(fmt("cannot open ", path_, " for appending: ", std::strerror(errno)));
}

MetricsWriter::~MetricsWriter() {
  if (fd_ >= 0) ::close(fd_);
}

MetricsWriter::MetricsWriter(MetricsWriter&& other) noexcept
    : path_(std::move(other.path_)), fd_(other.fd_) {
  other.fd_ = -1;
}

MetricsWriter& MetricsWriter::operator=(MetricsWriter&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

void MetricsWriter::write_line(const std::string& line) {
  const char* p = line.data();
  size_t n = line.size();
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw Error(fmt("cannot write ", path_, ": ", std::strerror(errno)));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void MetricsWriter::write_train(const TrainRecord& r) {
  if (!enabled()) return;
  OrderedJson j;
  j["kind"] = "train";
  j["step"] = r.step;
  j["loss"] = number(r.loss);
  j["lr"] = number(r.lr);
  j["grad_norm"] = number(r.grad_norm);
  j["tokens_per_s"] = number(r.tokens_per_s);
  j["mfu"] = number(r.mfu);
  j["loss_scale"] = number(r.loss_scale);
  j["elapsed_s"] = number(r.elapsed_s);
  j["eta_s"] = number(r.eta_s);
  j["dropped_frac"] = number(r.dropped_frac);
  j["aux_loss"] = number(r.aux_loss);
  j["z_loss"] = number(r.z_loss);
  j["skipped_steps"] = r.skipped_steps;
  const std::pair<const char*, int64_t> mem[] = {{"mem_peak_bytes", r.mem_peak_bytes},
                                                 {"mem_host_peak_bytes", r.mem_host_peak_bytes},
                                                 {"rss_peak_bytes", r.rss_peak_bytes},
                                                 {"mem_plan_bytes", r.mem_plan_bytes},
                                                 {"mem_plan_host_bytes", r.mem_plan_host_bytes}};
  for (const auto& [key, v] : mem)
    if (v >= 0) j[key] = v;
  j["expert_load"] = OrderedJson::array();
  for (const auto& layer : r.expert_load) j["expert_load"].push_back(layer);
  j["expert_load_max_over_mean"] = OrderedJson::array();
  for (double v : expert_load_max_over_mean(r.expert_load))
    j["expert_load_max_over_mean"].push_back(number(v));
  if (!r.routing.empty()) j["routing"] = r.routing;
  write_line(j.dump() + "\n");
}

void MetricsWriter::write_eval(const EvalRecord& r) {
  if (!enabled()) return;
  OrderedJson j;
  j["kind"] = "eval";
  j["step"] = r.step;
  j["eval_loss"] = number(r.eval_loss);
  j["elapsed_s"] = number(r.elapsed_s);
  write_line(j.dump() + "\n");
}

void MetricsWriter::write_event(const std::string& kind, const nlohmann::json& fields) {
  M6_CHECK(fields.is_object() || fields.is_null(), "event '", kind,
           "' fields must be a JSON object, got ", fields.type_name());
  M6_CHECK(!fields.contains("kind"), "event '", kind, "' fields must not contain \"kind\"");
  if (!enabled()) return;
  OrderedJson j;
  j["kind"] = kind;
  if (fields.is_object())
    for (const auto& [key, value] : fields.items()) j[key] = OrderedJson(value);
  replace_non_finite(j);
  write_line(j.dump() + "\n");
}

}  // namespace m6
