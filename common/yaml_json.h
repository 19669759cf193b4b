// YAML (and JSON, which is YAML) text → nlohmann::json documents, for untrusted input.
//
// Built on yaml-cpp's parser events, never on YAML::Load/LoadAll: yaml-cpp 0.7's LoadAll() loops
// forever, allocating, on a stray top-level token such as ',' (jbeder/yaml-cpp#1040). Depth, size,
// document count and alias expansion are bounded while parsing; nothing throws out of here. Used
// by the agent's --policy-file parser and the controller's manifests directory.
//
// JsonPath formats where in a document an element sits (`spec.rules[0].backends[1].weight`,
// `labels["app.kubernetes.io/name"]`) for error messages; the validators share it.
#pragma once

#include <cstddef>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace shunt {

struct YamlLimits {
  size_t max_bytes = size_t{4} << 20;  // of the whole text
  size_t max_depth = 64;               // nested mappings/sequences
  // Documents, counting empty ones (`---` followed by nothing or comments only).
  size_t max_documents = 1000;
  // Output nodes + scalar bytes over all documents, aliases expanded ("billion laughs" guard);
  // 0: 2 × the input size + 1024, which a document without aliases never reaches.
  size_t max_expanded = 0;
  // true: plain (unquoted) scalars are resolved as YAML 1.2's core schema does, as Kubernetes
  // expects: true/false → bool, 12 → integer, 1.5 → number, null/~/empty → null; quoted scalars
  // and anything else stay strings (YAML 1.1's yes/no/on/off stay strings).
  // false: every scalar is a string and only plain nulls are null (a schema decides later).
  bool typed_scalars = true;
};

// Every non-empty document of `text`, in order; documents that are empty or comments only (and
// a lone `null`/`~`) are skipped. Errors (all InvalidArgument, except OutOfRange for more than
// max_documents documents and ResourceExhausted for more than max_bytes):
//   "YAML syntax error at line 2, column 2: unexpected character"
//   "document 2: spec.rules[0]: duplicate key"
// Documents are numbered from 1, counting the returned (non-empty) ones, so N is the Nth element
// of a successful result; there is no "document N: " prefix when max_documents is 1.
// Mapping keys must be scalars; duplicate keys, invalid UTF-8 and aliases of an enclosing node are
// errors. A leading UTF-8 byte order mark is skipped.
absl::StatusOr<std::vector<nlohmann::json>> YamlDocumentsToJson(absl::string_view text,
                                                                const YamlLimits& limits);

// Where an element sits in a JSON document, formatted only when an error needs it. Views the keys
// it is given: they must outlive their PushKey/Pop.
class JsonPath {
 public:
  // `root` is what an empty path prints as (e.g. "policy").
  explicit JsonPath(std::string root = "document") : root_(std::move(root)) {}

  void PushKey(absl::string_view key) { parts_.emplace_back(key); }
  void PushIndex(size_t index) { parts_.emplace_back(index); }
  void Pop() { parts_.pop_back(); }
  bool empty() const { return parts_.empty(); }

  // a.b[3]["not.an.identifier"]
  std::string ToString() const;
  // InvalidArgumentError "<path>: <what>".
  absl::Status Error(absl::string_view what) const;

  // At most kMaxShownBytes of `s` (error messages quote values, shortened).
  static constexpr size_t kMaxShownBytes = 64;
  static absl::string_view Truncate(absl::string_view s) { return s.substr(0, kMaxShownBytes); }

 private:
  std::string root_;
  std::vector<std::variant<absl::string_view, size_t>> parts_;
};

// RAII push/pop of one path element.
class JsonPathScope {
 public:
  JsonPathScope(JsonPath& path, absl::string_view key) : path_(path) { path_.PushKey(key); }
  JsonPathScope(JsonPath& path, size_t index) : path_(path) { path_.PushIndex(index); }
  ~JsonPathScope() { path_.Pop(); }
  JsonPathScope(const JsonPathScope&) = delete;
  JsonPathScope& operator=(const JsonPathScope&) = delete;

 private:
  JsonPath& path_;
};

// True if `s` is well-formed UTF-8 (no overlongs, surrogates or code points above U+10FFFF).
bool IsValidUtf8(absl::string_view s);

}  // namespace shunt
