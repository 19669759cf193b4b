#include "agent/policy/policy_file.h"

#include <arpa/inet.h>

#include <array>
#include <cstdint>
#include <deque>
#include <exception>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "common/yaml_json.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"

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

// Where in the document an element sits: workloads[3].labels["app.kubernetes.io/name"].
class Path : public JsonPath {
 public:
  Path() : JsonPath("policy") {}
};
using PathScope = JsonPathScope;

std::string Quoted(absl::string_view s) {
  std::string out = absl::StrCat("\"", absl::Utf8SafeCHexEscape(Path::Truncate(s)));
  if (s.size() > JsonPath::kMaxShownBytes) out += "...";
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

// ---- YAML text → Json: common/yaml_json.h (never YAML::Load/LoadAll: they loop forever on some
// input). Every scalar stays a string (the schema walk below decides what a scalar means).
absl::StatusOr<Json> ParseYaml(absl::string_view text) {
  YamlLimits limits;
  limits.max_bytes = kMaxPolicyBytes;
  limits.max_depth = kMaxNestingDepth;
  limits.max_documents = 1;
  limits.typed_scalars = false;
  absl::StatusOr<std::vector<Json>> docs = YamlDocumentsToJson(text, limits);
  if (!docs.ok()) {
    if (docs.status().code() == absl::StatusCode::kOutOfRange) {
      return absl::InvalidArgumentError("policy has more than one YAML document; expected one");
    }
    return docs.status();
  }
  if (docs->empty()) {
    return absl::InvalidArgumentError("policy is empty (write `workloads: []` for no workloads)");
  }
  return std::move(docs->front());
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
