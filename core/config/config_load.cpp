// Strict YAML loading: reads the file, walks its maps remembering where every
// key was written (file:line, or the --set that gave it), refuses unknown and
// duplicate keys, applies --set overrides on top, converts each value with the
// schema table (config_schema.cpp) and validates (config_validate.cpp). Every
// message has the form `WHERE: KEY: problem (got VALUE); allowed: ...`.
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "core/config/config.h"
#include "core/util/error.h"

namespace m6 {

// Defined in config_schema.cpp and config_validate.cpp (no private header in
// this directory): keep these declarations identical to the definitions.
namespace config_detail {
const std::vector<std::string>& config_keys();
std::string config_set_from_yaml(Config& c, const std::string& key, const YAML::Node& v);
std::string config_describe_node(const YAML::Node& v);
void validate_config_at(const Config& c, int world,
                        const std::function<std::string(const std::string&)>& where);
}  // namespace config_detail

namespace {

using config_detail::config_describe_node;
using config_detail::config_keys;

// A value as given, and where it was given: "FILE:LINE" or "--set a.b=v".
struct Entry {
  YAML::Node value;
  std::string where;
};

bool is_leaf_key(const std::string& name) {
  const auto& keys = config_keys();
  return std::find(keys.begin(), keys.end(), name) != keys.end();
}

// A section is any proper prefix of a leaf key: "model", "model.moe", ...
bool is_section(const std::string& name) {
  for (const std::string& k : config_keys())
    if (k.size() > name.size() && k.compare(0, name.size(), name) == 0 && k[name.size()] == '.')
      return true;
  return false;
}

// The names directly inside SECTION ("" = top level), leaves and sub-sections.
std::vector<std::string> children_of(const std::string& section) {
  std::vector<std::string> out;
  std::string prefix = section.empty() ? "" : section + ".";
  for (const std::string& k : config_keys()) {
    if (k.compare(0, prefix.size(), prefix) != 0) continue;
    std::string rest = k.substr(prefix.size());
    std::string child = rest.substr(0, rest.find('.'));
    if (std::find(out.begin(), out.end(), child) == out.end()) out.push_back(child);
  }
  return out;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] =
          std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1] ? 1 : 0)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string leaf_of(const std::string& dotted) { return dotted.substr(dotted.rfind('.') + 1); }

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (const std::string& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

// "unknown key; did you mean X? allowed in SECTION: a, b, c" for the dotted
// NAME. Looks for a close name in the same section first, then for the same
// leaf name in another section (train.lr -> optim.lr), then anywhere.
std::string unknown_key_text(const std::string& name) {
  size_t dot = name.rfind('.');
  std::string section = dot == std::string::npos ? "" : name.substr(0, dot);
  std::string leaf = leaf_of(name);
  std::vector<std::string> siblings = children_of(section);
  const size_t close = std::max<size_t>(2, leaf.size() / 3);

  std::string guess;
  size_t best = close + 1;
  for (const std::string& s : siblings) {
    size_t d = edit_distance(leaf, s);
    if (d < best) best = d, guess = section.empty() ? s : section + "." + s;
  }
  if (guess.empty())
    for (const std::string& k : config_keys())
      if (leaf_of(k) == leaf) {
        guess = k;
        break;
      }
  if (guess.empty()) {
    best = std::max<size_t>(2, name.size() / 3) + 1;
    for (const std::string& k : config_keys()) {
      size_t d = edit_distance(name, k);
      if (d < best) best = d, guess = k;
    }
  }
  std::string text = "unknown key";
  if (!guess.empty()) text += "; did you mean " + guess + "?";
  if (section.empty() || is_section(section))
    text += fmt(guess.empty() ? "; allowed in " : " allowed in ",
                section.empty() ? "the top level" : section, ": ", join(siblings, ", "));
  return text;
}

std::string read_file_text(const std::string& file) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(file, ec)) throw ConfigError(fmt(file, ": config file not found"));
  if (!fs::is_regular_file(file, ec))
    throw ConfigError(fmt(file, ": config path is not a regular file"));
  std::ifstream in(file, std::ios::binary);
  std::ostringstream ss;
  if (!in || !(ss << in.rdbuf()) || in.bad()) {
    // An empty file makes `ss << rdbuf()` fail without being unreadable.
    if (in && fs::file_size(file, ec) == 0 && !ec) return "";
    throw ConfigError(fmt(file, ": cannot read config file"));
  }
  return ss.str();
}

// Parses TEXT (the contents of FILE) into its one document; syntax errors name
// file:line:column and show the offending line.
// Counts the documents of a stream without building them: where each starts.
class DocumentStarts final : public YAML::EventHandler {
 public:
  std::vector<YAML::Mark> starts;
  void OnDocumentStart(const YAML::Mark& m) override { starts.push_back(m); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

YAML::Node parse_document(const std::string& file, const std::string& text) {
  // Not YAML::LoadAll: in yaml-cpp 0.7 it never returns on some malformed
  // streams (e.g. a line starting with " ,"), whose parser yields empty
  // documents forever without reading on. The documents are counted here,
  // two at most, and a parser stuck at one place is a syntax error.
  std::vector<YAML::Node> docs;
  std::vector<YAML::Mark> starts;
  try {
    docs.push_back(YAML::Load(text));
    std::istringstream in(text);
    YAML::Parser parser(in);
    DocumentStarts counter;
    while (counter.starts.size() < 3 && parser.HandleNextDocument(counter)) {
    }
    starts = counter.starts;
  } catch (const YAML::ParserException& e) {
    if (e.mark.line < 0) throw ConfigError(fmt(file, ": YAML syntax error: ", e.msg));
    std::istringstream lines(text);
    std::string l;
    for (int i = 0; i <= e.mark.line && std::getline(lines, l); ++i) {
    }
    throw ConfigError(fmt(file, ":", e.mark.line + 1, ":", e.mark.column + 1,
                          ": YAML syntax error: ", e.msg, "; the line reads: ", l));
  }
  // A second document needs a "---" or "..." line; without one (or at the
  // place of the previous one), the parser is stuck.
  const bool markers = text.rfind("---", 0) == 0 || text.rfind("...", 0) == 0 ||
                       text.find("\n---") != std::string::npos ||
                       text.find("\n...") != std::string::npos;
  for (size_t i = 1; i < starts.size(); ++i)
    if (!markers || starts[i].pos == starts[i - 1].pos) {
      const YAML::Mark& m = starts[i];
      std::istringstream lines(text);
      std::string l;
      for (int k = 0; k <= m.line && std::getline(lines, l); ++k) {
      }
      throw ConfigError(fmt(file, ":", m.line + 1, ":", m.column + 1,
                            ": YAML syntax error: the parser cannot read past this point; the "
                            "line reads: ",
                            l));
    }
  if (starts.size() > 1)
    throw ConfigError(
        fmt(file, ": holds ", starts.size() == 2 ? "2" : "3 or more",
            " YAML documents (separated by ---); allowed: one"));
  if (docs.empty() || docs[0].IsNull())
    throw ConfigError(fmt(file, ": the config is empty; required: data.train, data.val"));
  return docs[0];
}

// Walks MAP (the section PREFIX, "" = top level) recording every leaf into
// ENTRIES; problems go to ERRORS so one run reports all of them.
void walk_map(const std::string& file, const YAML::Node& map, const std::string& prefix,
              std::map<std::string, Entry>& entries, std::vector<std::string>& errors) {
  std::map<std::string, int> seen;  // key -> line of its first occurrence
  for (const auto& pair : map) {    // pairs in file order, duplicates included
    const YAML::Node k = pair.first;
    const YAML::Node v = pair.second;
    const int line = k.Mark().line + 1;
    const std::string at = fmt(file, ":", line);
    if (!k.IsScalar()) {
      errors.push_back(fmt(at, ": ", prefix.empty() ? "top level" : prefix,
                           ": a key must be a plain name (got ", config_describe_node(k), ")"));
      continue;
    }
    const std::string name = prefix.empty() ? k.Scalar() : prefix + "." + k.Scalar();
    if (k.Scalar().find('.') != std::string::npos) {
      // `model.d_model: 64` would bypass the duplicate check of the nested form.
      errors.push_back(fmt(at, ": ", name, ": a key must not contain '.' (got ", k.Scalar(),
                           "); allowed: nest it under its section"));
      continue;
    }
    if (auto [first, inserted] = seen.emplace(k.Scalar(), line); !inserted) {
      errors.push_back(fmt(at, ": ", name, ": duplicate key (first given at line ", first->second,
                           "); allowed: each key once per section"));
      continue;
    }
    if (is_section(name)) {
      if (v.IsMap()) {
        walk_map(file, v, name, entries, errors);
      } else if (!v.IsNull()) {  // `moe:` with every key commented out is an empty section
        errors.push_back(fmt(at, ": ", name, ": a section must be a map of keys (got ",
                             config_describe_node(v),
                             "); allowed: ", join(children_of(name), ", ")));
      }
    } else if (is_leaf_key(name)) {
      entries[name] = Entry{v, at};
    } else {
      errors.push_back(fmt(at, ": ", name, ": ", unknown_key_text(name)));
    }
  }
}

// Applies one "a.b=value" override (the value read as a YAML scalar) to
// ENTRIES, or records why it cannot be applied in ERRORS.
void apply_override(const std::string& s, std::map<std::string, Entry>& entries,
                    std::vector<std::string>& errors) {
  const std::string where = "--set " + s;
  size_t eq = s.find('=');
  if (eq == std::string::npos || eq == 0) {
    errors.push_back(
        fmt(where, ": malformed override; allowed: KEY=VALUE, e.g. --set optim.lr=3e-4"));
    return;
  }
  const std::string key = s.substr(0, eq);
  if (is_section(key)) {
    errors.push_back(fmt(where, ": ", key,
                         ": is a section, not a key; allowed: ", join(children_of(key), ", ")));
    return;
  }
  if (!is_leaf_key(key)) {
    errors.push_back(fmt(where, ": ", key, ": ", unknown_key_text(key)));
    return;
  }
  try {
    entries[key] = Entry{YAML::Load(s.substr(eq + 1)), where};
  } catch (const YAML::ParserException& e) {
    errors.push_back(fmt(where, ": ", key, ": value is not valid YAML (", e.msg, ")"));
  }
}

}  // namespace

Config load_config(const std::string& file, const std::vector<std::string>& overrides, int world) {
  const YAML::Node root = parse_document(file, read_file_text(file));
  if (!root.IsMap())
    throw ConfigError(fmt(file, ":", root.Mark().line + 1,
                          ": the top level must be a map of sections (got ",
                          config_describe_node(root), "); allowed: ", join(children_of(""), ", ")));

  std::map<std::string, Entry> entries;
  std::vector<std::string> errors;
  walk_map(file, root, "", entries, errors);
  for (const std::string& s : overrides) apply_override(s, entries, errors);

  Config c;
  c.source = file;
  for (const auto& [key, e] : entries) {
    std::string problem = config_detail::config_set_from_yaml(c, key, e.value);
    if (!problem.empty()) errors.push_back(fmt(e.where, ": ", key, ": ", problem));
  }
  for (const char* required : {"data.train", "data.val"})
    if (!entries.count(required))
      errors.push_back(fmt(file, ": ", required, ": required key is missing; allowed: a glob of ",
                           leaf_of(required), " token shards, e.g. data/fortunes/",
                           leaf_of(required), "_*.bin"));
  if (!errors.empty()) throw ConfigError(join(errors, "\n"));

  config_detail::validate_config_at(c, world, [&](const std::string& key) -> std::string {
    auto it = entries.find(key);
    return it == entries.end() ? "" : it->second.where;
  });
  return c;
}

}  // namespace m6
