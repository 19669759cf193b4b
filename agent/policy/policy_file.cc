#include "agent/policy/policy_file.h"

#include <arpa/inet.h>

#include <array>
#include <cstdint>
#include <deque>
#include <exception>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "yaml-cpp/eventhandler.h"
#include "yaml-cpp/exceptions.h"
#include "yaml-cpp/mark.h"
#include "yaml-cpp/parser.h"

namespace shunt::agent {
namespace {

using Json = nlohmann::json;
using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;

// The field that a JSON key names: its JSON name (lowerCamelCase) or its proto name. Protobuf 3.21
// has no Descriptor::FindFieldByJsonName.
const FieldDescriptor* FindField(const Descriptor* d, const std::string& key) {
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->json_name() == key || f->name() == key) return f;
  }
  return nullptr;
}

// The schema needs 4 levels (bundle → workloads → workload → labels); anything much deeper is
// garbage, and refusing it early keeps every recursive step below (ours and nlohmann's dump)
// shallow.
constexpr size_t kMaxNestingDepth = 32;
constexpr size_t kMaxShownValueBytes = 64;

// Where in the document an element sits, formatted only when an error needs it:
// workloads[3].labels["app.kubernetes.io/name"].
class Path {
 public:
  void PushKey(absl::string_view key) { parts_.emplace_back(key); }
  void PushIndex(size_t index) { parts_.emplace_back(index); }
  void Pop() { parts_.pop_back(); }

  std::string ToString() const {
    std::string out;
    for (const auto& part : parts_) {
      if (const size_t* index = std::get_if<size_t>(&part)) {
        absl::StrAppend(&out, "[", *index, "]");
      } else {
        absl::string_view key = std::get<absl::string_view>(part);
        if (IsIdentifier(key)) {
          absl::StrAppend(&out, out.empty() ? "" : ".", key);
        } else {
          absl::StrAppend(&out, "[\"", absl::Utf8SafeCHexEscape(Truncate(key)), "\"]");
        }
      }
    }
    return out.empty() ? "policy" : out;
  }

  // InvalidArgumentError "<path>: <what>".
  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(ToString(), ": ", what));
  }

  static absl::string_view Truncate(absl::string_view s) {
    return s.substr(0, kMaxShownValueBytes);
  }

 private:
  static bool IsIdentifier(absl::string_view s) {
    if (s.empty() || absl::ascii_isdigit(static_cast<unsigned char>(s[0]))) return false;
    for (char c : s) {
      if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
    }
    return true;
  }

  std::vector<std::variant<absl::string_view, size_t>> parts_;
};

// RAII push/pop of one path element.
class PathScope {
 public:
  PathScope(Path& path, absl::string_view key) : path_(path) { path_.PushKey(key); }
  PathScope(Path& path, size_t index) : path_(path) { path_.PushIndex(index); }
  ~PathScope() { path_.Pop(); }
  PathScope(const PathScope&) = delete;
  PathScope& operator=(const PathScope&) = delete;

 private:
  Path& path_;
};

std::string Quoted(absl::string_view s) {
  std::string out = absl::StrCat("\"", absl::Utf8SafeCHexEscape(Path::Truncate(s)));
  if (s.size() > kMaxShownValueBytes) out += "...";
  out += "\"";
  return out;
}

// A JSON value as shown in an error message: scalars verbatim (shortened), containers by kind.
std::string Describe(const Json& j) {
  switch (j.type()) {
    case Json::value_t::object:
      return "an object";
    case Json::value_t::array:
      return "a list";
    case Json::value_t::string:
      return Quoted(j.get_ref<const std::string&>());
    default:
      return j.dump(-1, ' ', false, Json::error_handler_t::replace);
  }
}

bool IsValidUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMinForLength[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLength[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

// ---- JSON text → Json, through nlohmann's SAX interface so that depth and duplicate keys are
// checked while parsing and nothing throws.
class JsonBuilder : public nlohmann::json_sax<Json> {
 public:
  bool null() override { return Put(nullptr); }
  bool boolean(bool v) override { return Put(v); }
  bool number_integer(number_integer_t v) override { return Put(v); }
  bool number_unsigned(number_unsigned_t v) override { return Put(v); }
  bool number_float(number_float_t v, const string_t&) override { return Put(v); }
  bool string(string_t& v) override { return Put(std::move(v)); }
  bool binary(binary_t&) override { return Fail(path_.Error("binary values are not JSON")); }

  bool start_object(size_t) override { return Open(Json::object()); }
  bool start_array(size_t) override { return Open(Json::array()); }
  bool end_object() override { return Close(); }
  bool end_array() override { return Close(); }

  bool key(string_t& k) override {
    if (stack_.back()->contains(k)) {
      PathScope scope(path_, k);
      return Fail(path_.Error("duplicate key"));
    }
    key_ = std::move(k);
    return true;
  }

  bool parse_error(size_t, const std::string&, const nlohmann::detail::exception& ex) override {
    // "[json.exception.parse_error.101] parse error at line 1, column 5: ..." → drop the tag.
    absl::string_view what = ex.what();
    if (size_t pos = what.find("] "); pos != absl::string_view::npos) what.remove_prefix(pos + 2);
    return Fail(absl::InvalidArgumentError(absl::StrCat("JSON syntax error: ", what)));
  }

  absl::Status status() const { return status_; }
  Json& root() { return root_; }

 private:
  // Stores `v` where the parser is and returns where it went.
  Json* Store(Json&& v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    Json& parent = *stack_.back();
    if (parent.is_array()) {
      parent.push_back(std::move(v));
      return &parent.back();
    }
    Json& slot = parent[key_];
    slot = std::move(v);
    return &slot;
  }

  bool Put(Json&& v) {
    Store(std::move(v));
    return true;
  }

  bool Open(Json&& container) {
    if (stack_.size() >= kMaxNestingDepth) {
      return Fail(path_.Error(absl::StrCat("nested deeper than ", kMaxNestingDepth, " levels")));
    }
    // Keys and indices for error messages: a container opens at the parent's next slot.
    if (!stack_.empty()) {
      if (stack_.back()->is_array()) {
        path_.PushIndex(stack_.back()->size());
      } else {
        keys_.push_back(key_);
        path_.PushKey(keys_.back());
      }
    }
    stack_.push_back(Store(std::move(container)));
    return true;
  }

  bool Close() {
    stack_.pop_back();
    if (stack_.empty()) return true;
    path_.Pop();
    if (stack_.back()->is_object()) keys_.pop_back();
    return true;
  }

  bool Fail(absl::Status s) {
    status_ = std::move(s);
    return false;
  }

  Json root_;
  std::vector<Json*> stack_;  // open containers; stable: only the innermost one grows
  std::string key_;
  std::deque<std::string> keys_;  // storage for the keys viewed by path_ (deque: stable)
  Path path_;
  absl::Status status_;
};

absl::StatusOr<Json> ParseJson(absl::string_view text) {
  JsonBuilder builder;
  const bool ok = Json::sax_parse(text.begin(), text.end(), &builder);
  if (!ok) {
    if (!builder.status().ok()) return builder.status();
    return absl::InvalidArgumentError("JSON syntax error");
  }
  return std::move(builder.root());
}

// ---- YAML text → Json, built from yaml-cpp's parser events (not YAML::Node) so that depth,
// duplicate keys and size are checked while parsing, and so that we decide how many documents to
// ask for: yaml-cpp 0.7's LoadAll() loops forever, allocating, on a stray top-level token such as
// ',' (jbeder/yaml-cpp#1040, fixed upstream after 0.8). Every scalar becomes a string (YAML is
// untyped text; the schema walk below decides what a scalar means); plain nulls become null.
// Aliases are copied, so the output is budgeted by the input size: a "billion laughs" document is
// an error, not an allocation storm.
class YamlBuilder : public YAML::EventHandler {
 public:
  explicit YamlBuilder(size_t input_bytes) : budget_(2 * input_bytes + 1024) {}

  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}

  void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    Put(mark, Json(nullptr), anchor, 1);
  }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                const std::string& value) override {
    if (!status_.ok()) return;
    if (!IsValidUtf8(value)) {
      std::optional<PathScope> scope;
      EnterNext(scope);
      Fail(path_.Error("invalid UTF-8"));
      return;
    }
    Put(mark, Json(value), anchor, 1 + value.size());
  }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    if (!status_.ok()) return;
    auto it = anchors_.find(anchor);
    if (it == anchors_.end()) {
      std::optional<PathScope> scope;
      EnterNext(scope);
      Fail(path_.Error("an alias may not refer to a node that contains it"));
      return;
    }
    Put(mark, Json(it->second.first), YAML::NullAnchor, it->second.second);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value) override {
    Open(mark, Json::array(), anchor);
  }
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value) override {
    Open(mark, Json::object(), anchor);
  }
  void OnSequenceEnd() override { Close(); }
  void OnMapEnd() override { Close(); }

  const absl::Status& status() const { return status_; }
  Json& root() { return root_; }
  // Where the document's root node starts (null before any event).
  const YAML::Mark& root_mark() const { return root_mark_; }

 private:
  struct Frame {
    Json* node;
    YAML::anchor_t anchor;
    size_t budget_at_open;
    size_t next_index = 0;  // arrays
    bool want_key = true;   // objects: the next node is a key, else a value
    std::string key;        // objects: the key of the value being read
  };

  // Enters the path of the node the next event places (used for errors only); nothing for a key.
  void EnterNext(std::optional<PathScope>& scope) {
    if (frames_.empty()) return;
    const Frame& top = frames_.back();
    if (top.node->is_array()) {
      scope.emplace(path_, top.next_index);
    } else if (!top.want_key) {
      scope.emplace(path_, top.key);
    }
  }

  bool Charge(size_t cost) {
    if (cost > budget_) {
      Fail(path_.Error("YAML aliases expand to more than twice the size of the input"));
      return false;
    }
    budget_ -= cost;
    return true;
  }

  // Stores `v` where the parser is; returns where it went, or nullptr if it was a key or failed.
  Json* Place(const YAML::Mark& mark, Json&& v) {
    if (frames_.empty()) {
      root_ = std::move(v);
      root_mark_ = mark;
      return &root_;
    }
    Frame& top = frames_.back();
    if (top.node->is_array()) {
      ++top.next_index;
      top.node->push_back(std::move(v));
      return &top.node->back();
    }
    if (top.want_key) {
      if (!v.is_string()) {
        Fail(path_.Error("a mapping key must be a plain string"));
        return nullptr;
      }
      top.key = std::move(v.get_ref<std::string&>());
      if (top.node->contains(top.key)) {
        PathScope scope(path_, absl::string_view(top.key));
        Fail(path_.Error("duplicate key"));
        return nullptr;
      }
      top.want_key = false;
      return nullptr;
    }
    top.want_key = true;
    Json& slot = (*top.node)[top.key];
    slot = std::move(v);
    return &slot;
  }

  void Put(const YAML::Mark& mark, Json&& v, YAML::anchor_t anchor, size_t cost) {
    if (!status_.ok() || !Charge(cost)) return;
    if (anchor != YAML::NullAnchor) anchors_[anchor] = {v, cost};
    Place(mark, std::move(v));
  }

  void Open(const YAML::Mark& mark, Json&& container, YAML::anchor_t anchor) {
    if (!status_.ok()) return;
    if (frames_.size() >= kMaxNestingDepth) {
      Fail(path_.Error(absl::StrCat("nested deeper than ", kMaxNestingDepth, " levels")));
      return;
    }
    const size_t budget_at_open = budget_;
    if (!Charge(1)) return;
    if (!frames_.empty()) {
      Frame& top = frames_.back();
      if (top.node->is_array()) {
        path_.PushIndex(top.next_index);
      } else if (!top.want_key) {
        path_.PushKey(top.key);  // stable: `top` stays in the deque until after this one closes
      } else {
        Fail(path_.Error("a mapping key must be a plain string"));
        return;
      }
    }
    Json* node = Place(mark, std::move(container));
    frames_.push_back(Frame{node, anchor, budget_at_open, 0, true, {}});
  }

  void Close() {
    if (!status_.ok()) return;
    Frame& done = frames_.back();
    if (done.anchor != YAML::NullAnchor) {
      anchors_[done.anchor] = {*done.node, done.budget_at_open - budget_};
    }
    frames_.pop_back();
    if (!frames_.empty()) path_.Pop();
  }

  void Fail(absl::Status s) {
    if (status_.ok()) status_ = std::move(s);
  }

  size_t budget_;  // nodes + scalar bytes still allowed
  Json root_;
  YAML::Mark root_mark_ = YAML::Mark::null_mark();
  std::deque<Frame> frames_;  // open containers (deque: references stay valid)
  std::map<YAML::anchor_t, std::pair<Json, size_t>> anchors_;  // finished anchored nodes, cost
  Path path_;
  absl::Status status_;
};

absl::Status YamlSyntaxError(const YAML::Mark& mark, absl::string_view what) {
  if (mark.is_null()) return absl::InvalidArgumentError(absl::StrCat("YAML syntax error: ", what));
  return absl::InvalidArgumentError(absl::StrCat("YAML syntax error at line ", mark.line + 1,
                                                 ", column ", mark.column + 1, ": ", what));
}

absl::StatusOr<Json> ParseYaml(absl::string_view text) {
  std::istringstream in{std::string(text)};
  YAML::Parser parser(in);
  YamlBuilder doc(text.size());
  try {
    if (!parser.HandleNextDocument(doc)) {
      return absl::InvalidArgumentError("policy is empty (write `workloads: []` for no workloads)");
    }
    RETURN_IF_ERROR(doc.status());
    // Ask for exactly one more document: a second one is an error, and so is the parser handing
    // back the same position again (the stray-token bug above), which LoadAll would loop on.
    YamlBuilder next(text.size());
    if (parser.HandleNextDocument(next)) {
      if (next.root_mark().pos == doc.root_mark().pos) {
        return YamlSyntaxError(doc.root_mark(), "unexpected character");
      }
      return absl::InvalidArgumentError("policy has more than one YAML document; expected one");
    }
  } catch (const YAML::Exception& e) {
    return YamlSyntaxError(e.mark, e.msg);  // yaml-cpp's what() repeats the mark
  }
  if (doc.root().is_null()) {
    return absl::InvalidArgumentError("policy is empty (write `workloads: []` for no workloads)");
  }
  return std::move(doc.root());
}

// ---- Schema walk: checks the Json against the message descriptor before protobuf sees it, so that
// errors name the element (protobuf's own messages are terse), unknown keys are rejected
// explicitly, and bool fields take "true"/"false" strings (all YAML scalars are strings here).
bool IsWellKnownType(const Descriptor* d) { return d->file()->package() == "google.protobuf"; }

absl::Status ConformMessage(Json& j, const Descriptor* d, Path& path);

absl::Status ConformValue(Json& j, const FieldDescriptor* f, Path& path) {
  switch (f->type()) {
    case FieldDescriptor::TYPE_MESSAGE:
    case FieldDescriptor::TYPE_GROUP:
      if (IsWellKnownType(f->message_type())) return absl::OkStatus();  // protobuf's own forms
      return ConformMessage(j, f->message_type(), path);
    case FieldDescriptor::TYPE_BOOL:
      if (j.is_boolean()) return absl::OkStatus();
      if (j.is_string()) {
        const std::string& s = j.get_ref<const std::string&>();
        if (s == "true" || s == "True" || s == "TRUE") {
          j = true;
          return absl::OkStatus();
        }
        if (s == "false" || s == "False" || s == "FALSE") {
          j = false;
          return absl::OkStatus();
        }
      }
      return path.Error(absl::StrCat("expected true or false, got ", Describe(j)));
    case FieldDescriptor::TYPE_STRING:
    case FieldDescriptor::TYPE_BYTES:
      if (j.is_string()) return absl::OkStatus();
      return path.Error(absl::StrCat("expected a string, got ", Describe(j)));
    default:
      // Numbers and enums: protobuf's JSON parser takes both numbers and strings, and checks them.
      if (j.is_object() || j.is_array()) {
        return path.Error(absl::StrCat("expected a single value, got ", Describe(j)));
      }
      return absl::OkStatus();
  }
}

absl::Status ConformMessage(Json& j, const Descriptor* d, Path& path) {
  if (!j.is_object()) return path.Error(absl::StrCat("expected an object, got ", Describe(j)));
  absl::flat_hash_map<int, absl::string_view> seen;  // field number → key it was given as
  for (auto& [key, value] : j.items()) {
    PathScope scope(path, key);
    const FieldDescriptor* f = FindField(d, key);
    if (f == nullptr) return path.Error("unknown field");
    if (auto [it, inserted] = seen.emplace(f->number(), key); !inserted) {
      return path.Error(absl::StrCat("field given twice (also as \"", it->second, "\")"));
    }
    if (value.is_null()) continue;  // an absent field
    if (f->is_map()) {
      if (!value.is_object()) {
        return path.Error(absl::StrCat("expected an object, got ", Describe(value)));
      }
      const FieldDescriptor* value_field = f->message_type()->map_value();
      for (auto& [map_key, map_value] : value.items()) {
        PathScope key_scope(path, map_key);
        RETURN_IF_ERROR(ConformValue(map_value, value_field, path));
      }
    } else if (f->is_repeated()) {
      if (!value.is_array()) {
        return path.Error(absl::StrCat("expected a list, got ", Describe(value)));
      }
      for (size_t i = 0; i < value.size(); ++i) {
        PathScope index_scope(path, i);
        RETURN_IF_ERROR(ConformValue(value[i], f, path));
      }
    } else {
      RETURN_IF_ERROR(ConformValue(value, f, path));
    }
  }
  return absl::OkStatus();
}

// ---- Semantic checks.
absl::Status CheckDnsName(const Path& path, absl::string_view s) {
  if (s.empty()) return path.Error("must not be empty");
  if (s.size() > kMaxDnsNameLength) {
    return path.Error(
        absl::StrCat(Quoted(s), " is longer than ", kMaxDnsNameLength, " characters"));
  }
  bool ok = absl::ascii_isalnum(static_cast<unsigned char>(s.front())) &&
            absl::ascii_isalnum(static_cast<unsigned char>(s.back()));
  for (char c : s) {
    ok = ok && (absl::ascii_islower(static_cast<unsigned char>(c)) ||
                absl::ascii_isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '.');
  }
  if (!ok) {
    return path.Error(absl::StrCat(Quoted(s),
                                   " is not a DNS name (lowercase letters, digits, '-' and '.', "
                                   "starting and ending with a letter or digit)"));
  }
  return absl::OkStatus();
}

// An address in binary form, tagged with its family, so that two spellings of one IPv6 address
// are the same key.
using IpKey = std::array<unsigned char, 17>;

std::optional<IpKey> ParseIp(const std::string& s) {
  if (s.find('\0') != std::string::npos) return std::nullopt;  // inet_pton would stop there
  IpKey key{};
  if (inet_pton(AF_INET, s.c_str(), key.data() + 1) == 1) {
    key[0] = 4;
    return key;
  }
  if (inet_pton(AF_INET6, s.c_str(), key.data() + 1) == 1) {
    key[0] = 6;
    return key;
  }
  return std::nullopt;
}

}  // namespace

absl::Status ValidatePolicyBundle(const shunt::v1::PolicyBundle& bundle) {
  Path path;
  PathScope workloads_scope(path, "workloads");
  if (bundle.workloads_size() > kMaxPolicyWorkloads) {
    return path.Error(absl::StrCat(bundle.workloads_size(), " workloads; at most ",
                                   kMaxPolicyWorkloads, " are allowed"));
  }
  absl::flat_hash_map<absl::string_view, int> uids;  // uid → workload index
  absl::flat_hash_map<IpKey, int> ips;               // address → workload index
  for (int i = 0; i < bundle.workloads_size(); ++i) {
    const shunt::v1::Workload& w = bundle.workloads(i);
    PathScope workload_scope(path, static_cast<size_t>(i));
    {
      PathScope scope(path, "uid");
      if (w.uid().empty()) return path.Error("must not be empty");
      if (w.uid().size() > kMaxWorkloadUidLength) {
        return path.Error(absl::StrCat(Quoted(w.uid()), " is longer than ", kMaxWorkloadUidLength,
                                       " characters"));
      }
      if (auto [it, inserted] = uids.emplace(w.uid(), i); !inserted) {
        return path.Error(
            absl::StrCat(Quoted(w.uid()), " is already the uid of workloads[", it->second, "]"));
      }
    }
    {
      PathScope scope(path, "namespace");
      RETURN_IF_ERROR(CheckDnsName(path, w.namespace_()));
    }
    {
      PathScope scope(path, "name");
      RETURN_IF_ERROR(CheckDnsName(path, w.name()));
    }
    PathScope ips_scope(path, "ips");
    for (int k = 0; k < w.ips_size(); ++k) {
      PathScope scope(path, static_cast<size_t>(k));
      std::optional<IpKey> key = ParseIp(w.ips(k));
      if (!key) {
        return path.Error(absl::StrCat(Quoted(w.ips(k)), " is not an IPv4 or IPv6 address"));
      }
      if (auto [it, inserted] = ips.emplace(*key, i); !inserted) {
        const shunt::v1::Workload& owner = bundle.workloads(it->second);
        return path.Error(absl::StrCat(Quoted(w.ips(k)), " is already claimed by workloads[",
                                       it->second, "] (", owner.namespace_(), "/", owner.name(),
                                       ")"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<shunt::v1::PolicyBundle> ParsePolicyBundle(std::string_view std_text) {
  // Debian's Abseil has its own absl::string_view (ABSL_OPTION_USE_STD_STRING_VIEW 0).
  const absl::string_view text(std_text.data(), std_text.size());
  // Nothing below may throw out of here: yaml-cpp, nlohmann and allocation failures all end up as
  // an error status.
  try {
    if (text.size() > kMaxPolicyBytes) {
      return absl::InvalidArgumentError(absl::StrCat("policy is ", text.size(), " bytes; at most ",
                                                     kMaxPolicyBytes, " are allowed"));
    }
    absl::string_view rest = text;
    if (rest.substr(0, 3) == "\xEF\xBB\xBF") rest.remove_prefix(3);  // UTF-8 byte order mark
    const size_t first = rest.find_first_not_of(" \t\r\n");
    if (first == absl::string_view::npos) {
      return absl::InvalidArgumentError("policy is empty (write `workloads: []` for no workloads)");
    }
    absl::StatusOr<Json> json = rest[first] == '{' ? ParseJson(rest) : ParseYaml(rest);
    if (!json.ok()) return json.status();
    if (!json->is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "policy: expected a mapping with a `workloads` list, got ", Describe(*json)));
    }
    Path path;
    RETURN_IF_ERROR(ConformMessage(*json, shunt::v1::PolicyBundle::descriptor(), path));

    const std::string canonical = json->dump();
    shunt::v1::PolicyBundle bundle;
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = false;
    const auto status = google::protobuf::util::JsonStringToMessage(canonical, &bundle, options);
    if (!status.ok()) {
      const auto message = status.message();
      return absl::InvalidArgumentError(
          absl::StrCat("policy: ", absl::string_view(message.data(), message.size())));
    }
    RETURN_IF_ERROR(ValidatePolicyBundle(bundle));
    return bundle;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("policy could not be parsed: ", e.what()));
  } catch (...) {
    return absl::InvalidArgumentError("policy could not be parsed");
  }
}

}  // namespace shunt::agent
