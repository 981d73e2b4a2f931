// The schema as a table: one row per leaf key, with its dotted YAML name and a
// typed pointer into a Config. The YAML loader (config_load.cpp) and the JSON
// form (config_to_json / config_from_json, here) both walk this table, so a
// field added to config.h needs one new row and nothing else.
#include <yaml-cpp/yaml.h>

#include <charconv>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <span>
#include <variant>

#include "core/config/config.h"
#include "core/util/error.h"

namespace m6 {

// Shared with config_load.cpp, which declares them again (there is no private
// header in this directory): keep the two declarations identical.
namespace config_detail {
const std::vector<std::string>& config_keys();
std::string config_set_from_yaml(Config& c, const std::string& key, const YAML::Node& v);
std::string config_describe_node(const YAML::Node& v);
}  // namespace config_detail

namespace {

template <class E>
struct Spelling {
  const char* name;
  E value;
};

constexpr Spelling<RouterKind> kRouterNames[] = {{"topk", RouterKind::TopK},
                                                 {"prototypes", RouterKind::Prototypes}};
constexpr Spelling<GateNorm> kGateNormNames[] = {
    {"auto", GateNorm::Auto}, {"true", GateNorm::On}, {"false", GateNorm::Off}};
constexpr Spelling<DeviceKind> kDeviceNames[] = {
    {"auto", DeviceKind::Auto}, {"cpu", DeviceKind::Cpu}, {"cuda", DeviceKind::Cuda}};
constexpr Spelling<Precision> kPrecisionNames[] = {
    {"fp32", Precision::Fp32}, {"bf16", Precision::Bf16}, {"fp16", Precision::Fp16}};
constexpr Spelling<bool> kBoolNames[] = {{"true", true}, {"false", false}};
constexpr Spelling<DelinkOptimizer> kDelinkNames[] = {{"copy", DelinkOptimizer::Copy},
                                                      {"reset", DelinkOptimizer::Reset}};
constexpr Spelling<Recompute> kRecomputeNames[] = {
    {"none", Recompute::None}, {"attention", Recompute::Attention}, {"layer", Recompute::Layer}};
constexpr Spelling<GraphMode> kGraphNames[] = {
    {"auto", GraphMode::Auto}, {"on", GraphMode::On}, {"off", GraphMode::Off}};

template <class E>
struct EnumRef {
  E* p;
  std::span<const Spelling<E>> names;
};

using FieldRef = std::variant<int*, int64_t*, uint64_t*, double*, std::string*, EnumRef<RouterKind>,
                              EnumRef<GateNorm>, EnumRef<DeviceKind>, EnumRef<Precision>,
                              EnumRef<DelinkOptimizer>, EnumRef<Recompute>, EnumRef<GraphMode>,
                              EnumRef<bool>>;

struct Field {
  const char* key;  // dotted YAML path, e.g. "model.moe.top_k"
  FieldRef ref;
};

// Every leaf key of the schema, in the order of config.h.
std::vector<Field> fields_of(Config& c) {
  ModelConfig& m = c.model;
  return {
      {"model.vocab_size", &m.vocab_size},
      {"model.max_seq_len", &m.max_seq_len},
      {"model.d_model", &m.d_model},
      {"model.n_heads", &m.n_heads},
      {"model.n_layers", &m.n_layers},
      {"model.d_ff", &m.d_ff},
      {"model.moe.every", &m.moe.every},
      {"model.moe.experts", &m.moe.experts},
      {"model.moe.router", EnumRef<RouterKind>{&m.moe.router, kRouterNames}},
      {"model.moe.top_k", &m.moe.top_k},
      {"model.moe.prototypes", &m.moe.prototypes},
      {"model.moe.capacity_factor", &m.moe.capacity_factor},
      {"model.moe.eval_capacity_factor", &m.moe.eval_capacity_factor},
      {"model.moe.min_capacity", &m.moe.min_capacity},
      {"model.moe.normalize_gates", EnumRef<GateNorm>{&m.moe.normalize_gates, kGateNormNames}},
      {"model.moe.aux_loss_coef", &m.moe.aux_loss_coef},
      {"model.moe.z_loss_coef", &m.moe.z_loss_coef},
      {"model.sharing.groups", &m.sharing.groups},
      {"model.sharing.delink_at_step", &m.sharing.delink_at_step},
      {"model.sharing.delink_optimizer",
       EnumRef<DelinkOptimizer>{&m.sharing.delink_optimizer, kDelinkNames}},
      {"data.train", &c.data.train},
      {"data.val", &c.data.val},
      {"train.seed", &c.train.seed},
      {"train.steps", &c.train.steps},
      {"train.seq_len", &c.train.seq_len},
      {"train.micro_batch", &c.train.micro_batch},
      {"train.global_batch", &c.train.global_batch},
      {"train.device", EnumRef<DeviceKind>{&c.train.device, kDeviceNames}},
      {"train.threads", &c.train.threads},
      {"train.max_skipped_steps", &c.train.max_skipped_steps},
      {"train.spike_guard.window", &c.train.spike_guard.window},
      {"train.spike_guard.z_threshold", &c.train.spike_guard.z_threshold},
      {"train.recompute", EnumRef<Recompute>{&c.train.recompute, kRecomputeNames}},
      {"train.graphs", EnumRef<GraphMode>{&c.train.graphs, kGraphNames}},
      {"train.device_memory", &c.train.device_memory},
      {"train.host_memory", &c.train.host_memory},
      {"train.allow_unfit", EnumRef<bool>{&c.train.allow_unfit, kBoolNames}},
      {"train.peak_tflops", &c.train.peak_tflops},
      {"optim.lr", &c.optim.lr},
      {"optim.min_lr", &c.optim.min_lr},
      {"optim.warmup_steps", &c.optim.warmup_steps},
      {"optim.decay_steps", &c.optim.decay_steps},
      {"optim.weight_decay", &c.optim.weight_decay},
      {"optim.beta1", &c.optim.beta1},
      {"optim.beta2", &c.optim.beta2},
      {"optim.eps", &c.optim.eps},
      {"optim.grad_clip", &c.optim.grad_clip},
      {"eval.every", &c.eval.every},
      {"eval.batches", &c.eval.batches},
      {"log.every", &c.log.every},
      {"log.tensorboard", EnumRef<bool>{&c.log.tensorboard, kBoolNames}},
      {"log.profile", EnumRef<bool>{&c.log.profile, kBoolNames}},
      {"precision.compute", EnumRef<Precision>{&c.precision.compute, kPrecisionNames}},
      {"precision.comm", EnumRef<Precision>{&c.precision.comm, kPrecisionNames}},
      {"precision.loss_scale.init", &c.precision.loss_scale.init},
      {"precision.loss_scale.growth_interval", &c.precision.loss_scale.growth_interval},
      {"precision.loss_scale.growth_factor", &c.precision.loss_scale.growth_factor},
      {"precision.loss_scale.backoff_factor", &c.precision.loss_scale.backoff_factor},
      {"precision.loss_scale.hysteresis", &c.precision.loss_scale.hysteresis},
      {"precision.loss_scale.min", &c.precision.loss_scale.min},
      {"precision.loss_scale.max", &c.precision.loss_scale.max},
      {"parallel.ep", &c.parallel.ep},
      {"parallel.timeout_s", &c.parallel.timeout_s},
      {"checkpoint.every", &c.checkpoint.every},
      {"checkpoint.keep", &c.checkpoint.keep},
      {"offload.optimizer", &c.offload.optimizer},
      {"offload.params", &c.offload.params},
      {"offload.chunk_mb", &c.offload.chunk_mb},
  };
}

Field* find_field(std::vector<Field>& fields, const std::string& key) {
  for (Field& f : fields)
    if (key == f.key) return &f;
  return nullptr;
}

template <class E>
std::string spelling_list(std::span<const Spelling<E>> names) {
  std::string out;
  for (const auto& s : names) out += (out.empty() ? "" : "|") + std::string(s.name);
  return out;
}

template <class E>
const char* spelling_of(E v, std::span<const Spelling<E>> names) {
  for (const auto& s : names)
    if (s.value == v) return s.name;
  throw Error(fmt("config: enum value ", static_cast<int>(v), " has no spelling"));
}

template <class E>
bool parse_spelling(const std::string& text, EnumRef<E> ref) {
  for (const auto& s : ref.names)
    if (text == s.name) {
      *ref.p = s.value;
      return true;
    }
  return false;
}

template <class T>
std::string int_range_text() {
  return fmt("a whole number in [", std::numeric_limits<T>::min(), ", ",
             std::numeric_limits<T>::max(), "]");
}

// Parses YAML 1.2 core-schema decimal integers only: "12", "-3", "+7".
// "12.5", "1e3", "0x10" and "abc" are not integers here.
template <class T>
std::string parse_int(const std::string& text, T* out) {
  static const std::regex int_re("[-+]?[0-9]+");
  const std::string allowed = "; allowed: " + int_range_text<T>();
  if (!std::regex_match(text, int_re)) return "not an integer (got " + text + ")" + allowed;
  const char* b = text.data() + (text[0] == '+' ? 1 : 0);
  const char* e = text.data() + text.size();
  bool negative = text[0] == '-';
  if (negative && std::is_unsigned_v<T>) return "out of range (got " + text + ")" + allowed;
  // Parse wide first so out-of-range reports the value, not a parse failure.
  if (negative) {
    int64_t v = 0;
    auto r = std::from_chars(b, e, v);
    if (r.ec != std::errc() || r.ptr != e ||
        v < static_cast<int64_t>(std::numeric_limits<T>::min()))
      return "out of range (got " + text + ")" + allowed;
    *out = static_cast<T>(v);
  } else {
    uint64_t v = 0;
    auto r = std::from_chars(b, e, v);
    if (r.ec != std::errc() || r.ptr != e ||
        v > static_cast<uint64_t>(std::numeric_limits<T>::max()))
      return "out of range (got " + text + ")" + allowed;
    *out = static_cast<T>(v);
  }
  return "";
}

// Parses YAML 1.2 core-schema decimal floats and ints: "3e-4", "0.1", "5", ".5".
// Infinity and NaN are refused: no field of the schema may take them.
std::string parse_double(const std::string& text, double* out) {
  static const std::regex float_re(R"([-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?)");
  const std::string allowed = "; allowed: a finite number such as 0.5 or 3e-4";
  if (!std::regex_match(text, float_re)) return "not a number (got " + text + ")" + allowed;
  const char* b = text.data() + (text[0] == '+' ? 1 : 0);
  const char* e = text.data() + text.size();
  double v = 0;
  auto r = std::from_chars(b, e, v);
  if (r.ec != std::errc() || r.ptr != e || !std::isfinite(v))
    return "out of range (got " + text + ")" + allowed;
  *out = v;
  return "";
}

// A plain scalar or one explicitly tagged as a number; "12" in quotes is a
// string in YAML, and a strict loader says so rather than guessing.
bool is_numeric_scalar(const YAML::Node& v) {
  const std::string& tag = v.Tag();
  return tag == "?" || tag == "tag:yaml.org,2002:int" || tag == "tag:yaml.org,2002:float";
}

std::string kind_text(const FieldRef& ref) {
  return std::visit(
      [](auto p) -> std::string {
        using P = decltype(p);
        if constexpr (std::is_same_v<P, int*>)
          return int_range_text<int>();
        else if constexpr (std::is_same_v<P, int64_t*>)
          return int_range_text<int64_t>();
        else if constexpr (std::is_same_v<P, uint64_t*>)
          return int_range_text<uint64_t>();
        else if constexpr (std::is_same_v<P, double*>)
          return "a finite number such as 0.5 or 3e-4";
        else if constexpr (std::is_same_v<P, std::string*>)
          return "a string";
        else
          return spelling_list(p.names);
      },
      ref);
}

}  // namespace

namespace config_detail {

const std::vector<std::string>& config_keys() {
  static const std::vector<std::string> keys = [] {
    Config c;
    std::vector<std::string> out;
    for (const Field& f : fields_of(c)) out.emplace_back(f.key);
    return out;
  }();
  return keys;
}

// How a node reads in a message: the scalar as written, or what it is instead.
std::string config_describe_node(const YAML::Node& v) {
  switch (v.Type()) {
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Scalar:
      return v.Tag() == "!" ? "the quoted string \"" + v.Scalar() + "\"" : v.Scalar();
    default:
      return "an undefined value";
  }
}

// Sets KEY of C from the YAML value V. Returns "" on success, else the problem
// in the form "what is wrong (got VALUE); allowed: ...", without the key.
std::string config_set_from_yaml(Config& c, const std::string& key, const YAML::Node& v) {
  std::vector<Field> fields = fields_of(c);
  Field* f = find_field(fields, key);
  if (!f) throw Error(fmt("config: no field named ", key));  // callers check keys first
  const std::string kind = kind_text(f->ref);
  if (!v.IsScalar()) {
    return std::string(v.IsNull() ? "no value" : "wrong type") + " (got " +
           config_describe_node(v) + "); allowed: " + kind;
  }
  const std::string& text = v.Scalar();
  return std::visit(
      [&](auto p) -> std::string {
        using P = decltype(p);
        if constexpr (std::is_same_v<P, std::string*>) {
          *p = text;
          return "";
        } else if constexpr (std::is_same_v<P, int*> || std::is_same_v<P, int64_t*> ||
                             std::is_same_v<P, uint64_t*> || std::is_same_v<P, double*>) {
          if (!is_numeric_scalar(v))
            return "a string, not a number (got " + config_describe_node(v) + "); allowed: " + kind;
          if constexpr (std::is_same_v<P, double*>)
            return parse_double(text, p);
          else
            return parse_int(text, p);
        } else {
          if (parse_spelling(text, p)) return "";
          return "unknown value (got " + config_describe_node(v) + "); allowed: " + kind;
        }
      },
      f->ref);
}

}  // namespace config_detail

// ---- JSON ----------------------------------------------------------------------

namespace {

nlohmann::json::json_pointer pointer_of(const std::string& dotted) {
  std::string p = "/" + dotted;
  for (char& ch : p)
    if (ch == '.') ch = '/';
  return nlohmann::json::json_pointer(p);
}

// Rejects any key of J (at any depth) that is neither a schema section nor a
// leaf key: a manifest written by a newer m6train must not load half-understood.
void check_json_keys(const nlohmann::json& j, const std::string& prefix) {
  const auto& keys = config_detail::config_keys();
  for (auto it = j.begin(); it != j.end(); ++it) {
    std::string name = prefix.empty() ? it.key() : prefix + "." + it.key();
    bool leaf = false, section = false;
    for (const std::string& k : keys) {
      if (k == name) leaf = true;
      if (k.size() > name.size() && k.compare(0, name.size(), name) == 0 && k[name.size()] == '.')
        section = true;
    }
    if (section) {
      if (!it.value().is_object())
        throw ConfigError(fmt("config JSON: ", name, ": a section must be an object (got ",
                              it.value().dump(), ")"));
      check_json_keys(it.value(), name);
    } else if (!leaf) {
      throw ConfigError(fmt("config JSON: ", name, ": unknown key"));
    }
  }
}

template <class T>
void json_to_int(const nlohmann::json& v, const std::string& key, T* out) {
  bool ok = v.is_number_integer();
  if (ok && v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    ok = u <= static_cast<uint64_t>(std::numeric_limits<T>::max());
    if (ok) *out = static_cast<T>(u);
  } else if (ok) {
    int64_t s = v.get<int64_t>();
    ok =
        s >= static_cast<int64_t>(std::numeric_limits<T>::min()) &&
        (s < 0 || static_cast<uint64_t>(s) <= static_cast<uint64_t>(std::numeric_limits<T>::max()));
    if (ok) *out = static_cast<T>(s);
  }
  if (!ok)
    throw ConfigError(
        fmt("config JSON: ", key, ": expected ", int_range_text<T>(), " (got ", v.dump(), ")"));
}

}  // namespace

nlohmann::json config_to_json(const Config& c) {
  Config copy = c;  // fields_of hands out mutable pointers; read through a copy
  nlohmann::json j = nlohmann::json::object();
  for (const Field& f : fields_of(copy)) {
    nlohmann::json& slot = j[pointer_of(f.key)];
    std::visit(
        [&](auto p) {
          using P = decltype(p);
          if constexpr (std::is_pointer_v<P>)
            slot = *p;
          else
            slot = spelling_of(*p.p, p.names);
        },
        f.ref);
  }
  return j;
}

// Keys absent from J keep their defaults, so a manifest written before a key
// existed still loads; present keys must have the right type. Not validated:
// callers that need a runnable config call validate_config.
Config config_from_json(const nlohmann::json& j) {
  if (!j.is_object())
    throw ConfigError(fmt("config JSON: expected an object (got ", j.dump(), ")"));
  check_json_keys(j, "");
  Config c;
  for (const Field& f : fields_of(c)) {
    auto ptr = pointer_of(f.key);
    if (!j.contains(ptr)) continue;
    const nlohmann::json& v = j.at(ptr);
    const std::string key = f.key;
    std::visit(
        [&](auto p) {
          using P = decltype(p);
          if constexpr (std::is_same_v<P, double*>) {
            if (!v.is_number() || !std::isfinite(v.get<double>()))
              throw ConfigError(
                  fmt("config JSON: ", key, ": expected a finite number (got ", v.dump(), ")"));
            *p = v.get<double>();
          } else if constexpr (std::is_same_v<P, std::string*>) {
            if (!v.is_string())
              throw ConfigError(
                  fmt("config JSON: ", key, ": expected a string (got ", v.dump(), ")"));
            *p = v.get<std::string>();
          } else if constexpr (std::is_pointer_v<P>) {
            json_to_int(v, key, p);
          } else {
            if (!v.is_string() || !parse_spelling(v.get<std::string>(), p))
              throw ConfigError(fmt("config JSON: ", key, ": unknown value (got ", v.dump(),
                                    "); allowed: ", spelling_list(p.names)));
          }
        },
        f.ref);
  }
  return c;
}

}  // namespace m6
