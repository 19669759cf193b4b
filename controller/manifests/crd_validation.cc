#include "controller/manifests/crd_validation.h"

#include <arpa/inet.h>

#include <cctype>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "common/yaml_json.h"
#include "controller/cluster_state.h"

namespace shunt::controller {
namespace {

using Json = nlohmann::json;

// One node of the schema: the subset of OpenAPI v3 that deploy/crds/*.yaml uses.
struct Node;
using NodePtr = std::shared_ptr<const Node>;
struct Node {
  enum class Type { kObject, kArray, kString, kInteger, kStringMap };
  Type type = Type::kObject;
  // kObject
  std::vector<std::pair<std::string, NodePtr>> properties;
  std::vector<std::string> required;
  std::vector<std::string> exactly_one_of;  // oneOf: [{required: [a]}, {required: [b]}]
  std::function<absl::Status(const Json&, const JsonPath&)> rule;  // x-kubernetes-validations
  // kArray
  NodePtr items;
  size_t min_items = 0;
  size_t max_items = std::numeric_limits<size_t>::max();
  std::string map_key;  // x-kubernetes-list-type: map, keyed by this field (unique)
  // kString
  size_t min_length = 0;
  size_t max_length = std::numeric_limits<size_t>::max();
  std::string pattern;
  std::regex regex;
  std::vector<std::string> enums;
  bool cidr = false;
  // kInteger
  int64_t minimum = std::numeric_limits<int64_t>::min();
  int64_t maximum = std::numeric_limits<int64_t>::max();
  // kStringMap: an object of strings (additionalProperties)
  NodePtr value;
  size_t max_properties = std::numeric_limits<size_t>::max();
};

// ---- Schema builders.
NodePtr Str(size_t max_length, absl::string_view pattern = "", size_t min_length = 0) {
  auto n = std::make_shared<Node>();
  n->type = Node::Type::kString;
  n->max_length = max_length;
  n->min_length = min_length;
  n->pattern = std::string(pattern);
  if (!pattern.empty()) n->regex = std::regex(n->pattern, std::regex::ECMAScript);
  return n;
}
NodePtr Enum(std::vector<std::string> values) {
  auto n = std::make_shared<Node>();
  n->type = Node::Type::kString;
  n->enums = std::move(values);
  return n;
}
NodePtr Cidr() {
  auto n = std::make_shared<Node>();
  n->type = Node::Type::kString;
  n->max_length = 43;
  n->cidr = true;
  return n;
}
NodePtr Int(int64_t minimum, int64_t maximum) {
  auto n = std::make_shared<Node>();
  n->type = Node::Type::kInteger;
  n->minimum = minimum;
  n->maximum = maximum;
  return n;
}
NodePtr Arr(NodePtr items, size_t max_items, size_t min_items = 0, std::string map_key = "") {
  auto n = std::make_shared<Node>();
  n->type = Node::Type::kArray;
  n->items = std::move(items);
  n->max_items = max_items;
  n->min_items = min_items;
  n->map_key = std::move(map_key);
  return n;
}
NodePtr StrMap(NodePtr value, size_t max_properties) {
  auto n = std::make_shared<Node>();
  n->type = Node::Type::kStringMap;
  n->value = std::move(value);
  n->max_properties = max_properties;
  return n;
}
std::shared_ptr<Node> Obj(std::vector<std::pair<std::string, NodePtr>> properties,
                          std::vector<std::string> required = {}) {
  auto n = std::make_shared<Node>();
  n->type = Node::Type::kObject;
  n->properties = std::move(properties);
  n->required = std::move(required);
  return n;
}

// ---- The three specs (keep in step with deploy/crds/*.yaml).
constexpr char kDnsLabel[] = "^[a-z]([-a-z0-9]*[a-z0-9])?$";          // Service names
constexpr char kNamespaceName[] = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";  // RFC 1123 label
constexpr char kMetricName[] = "^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";
constexpr char kDecimal[] = "^[0-9]+(\\.[0-9]+)?$";
constexpr char kHttpMethod[] = "^[A-Z]+$";
constexpr char kHttpPath[] = "^/";
constexpr char kGrpcMethod[] = "^/[^/]+/[^/]+$";
constexpr int64_t kMaxTimeoutMs = 86400000;

NodePtr Labels() { return Obj({{"matchLabels", StrMap(Str(63), 64)}}); }

NodePtr TrafficRouteSpec() {
  auto match = Obj({{"pathExact", Str(1024, kHttpPath)},
                    {"pathPrefix", Str(1024, kHttpPath)},
                    {"method", Str(32, kHttpMethod)},
                    {"headers", StrMap(Str(1024), 16)},
                    {"grpcMethod", Str(1024, kGrpcMethod)}});
  auto backend = Obj({{"subset", Labels()},
                      {"service", Str(63, kDnsLabel)},
                      {"weight", Int(0, 1000000)},
                      {"port", Int(1, 65535)}},
                     {"weight"});
  backend->exactly_one_of = {"subset", "service"};
  auto retries = Obj(
      {{"attempts", Int(0, 10)},
       {"perTryTimeoutMs", Int(0, kMaxTimeoutMs)},
       {"retryOn", Arr(Enum({"5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx",
                             "refused-stream", "cancelled", "deadline-exceeded", "internal",
                             "resource-exhausted", "unavailable"}),
                       16)}});
  auto rule = Obj({{"name", Str(63, kMetricName)},
                   {"matches", Arr(match, 16)},
                   {"backends", Arr(backend, 16, 1)},
                   {"timeoutMs", Int(0, kMaxTimeoutMs)},
                   {"retries", retries}},
                  {"backends"});
  return Obj({{"service", Str(63, kDnsLabel)},
              {"ports", Arr(Int(1, 65535), 32)},
              {"rules", Arr(rule, 64, 1)}},
             {"service", "rules"});
}

NodePtr AccessPolicySpec() {
  auto source = Obj({
      {"namespaces", Arr(Str(63, kNamespaceName), 64)},
      {"serviceAccounts",
       Arr(Str(317, "^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"), 64)},
      {"pods", Labels()},
      {"ipBlocks", Arr(Cidr(), 64)},
  });
  auto port_range = Obj({{"from", Int(1, 65535)}, {"to", Int(1, 65535)}}, {"from"});
  port_range->rule = [](const Json& j, const JsonPath& path) {
    if (j.contains("to") && j["to"].is_number_integer() &&
        j["to"].get<int64_t>() < j["from"].get<int64_t>()) {
      return path.Error("to must not be less than from");
    }
    return absl::OkStatus();
  };
  auto l7 =
      Obj({{"methods", Arr(Str(32, kHttpMethod), 16)}, {"paths", Arr(Str(1024, kHttpPath), 64)}});
  return Obj({{"action", Enum({"ALLOW", "DENY"})},
              {"target", Labels()},
              {"from", Arr(source, 64)},
              {"ports", Arr(port_range, 64)},
              {"l7", Arr(l7, 32)}},
             {"action"});
}

NodePtr ApiCostPolicySpec() {
  auto route = Obj({{"name", Str(63, kMetricName)},
                    {"method", Str(32, kHttpMethod)},
                    {"pathPrefix", Str(1024, kHttpPath)},
                    {"grpcMethod", Str(1024, kGrpcMethod)},
                    {"perRequest", Str(32, kDecimal)},
                    {"perGibRequest", Str(32, kDecimal)},
                    {"perGibResponse", Str(32, kDecimal)}},
                   {"name"});
  auto prices = [](NodePtr model, std::vector<std::string> required) {
    return Obj({{"model", std::move(model)},
                {"perMillionInput", Str(32, kDecimal)},
                {"perMillionCachedInput", Str(32, kDecimal)},
                {"perMillionOutput", Str(32, kDecimal)},
                {"perMillionReasoning", Str(32, kDecimal)},
                {"perMillionCacheCreation", Str(32, kDecimal)}},
               std::move(required));
  };
  return Obj({{"service", Str(63, kDnsLabel)},
              {"currency", Str(std::numeric_limits<size_t>::max(), "^[A-Z]{3}$")},
              {"routes", Arr(route, 128, 0, "name")},
              {"models", Arr(prices(Str(128, "", 1), {"model"}), 256, 0, "model")},
              {"defaultModel", prices(Str(128), {})}},
             {"service", "currency"});
}

// ---- The walk.
std::string Describe(const Json& j) {
  switch (j.type()) {
    case Json::value_t::object:
      return "an object";
    case Json::value_t::array:
      return "a list";
    case Json::value_t::string: {
      const std::string& s = j.get_ref<const std::string&>();
      std::string out = absl::StrCat("\"", absl::Utf8SafeCHexEscape(JsonPath::Truncate(s)));
      if (s.size() > JsonPath::kMaxShownBytes) out += "...";
      return out + "\"";
    }
    default:
      return j.dump(-1, ' ', false, Json::error_handler_t::replace);
  }
}

// Characters, as Kubernetes counts them for maxLength (code points, not bytes).
size_t CodePoints(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

bool IsCidr(const std::string& s) {
  const size_t slash = s.find('/');
  if (slash == std::string::npos || s.find('\0') != std::string::npos) return false;
  const std::string addr = s.substr(0, slash);
  int bits;
  if (!absl::SimpleAtoi(absl::string_view(s).substr(slash + 1), &bits) || s.size() == slash + 1 ||
      !std::isdigit(static_cast<unsigned char>(s[slash + 1]))) {
    return false;
  }
  unsigned char buf[16];
  if (inet_pton(AF_INET, addr.c_str(), buf) == 1) return bits >= 0 && bits <= 32;
  if (inet_pton(AF_INET6, addr.c_str(), buf) == 1) return bits >= 0 && bits <= 128;
  return false;
}

absl::Status Check(const Json& j, const Node& n, JsonPath& path);

absl::Status CheckObject(const Json& j, const Node& n, JsonPath& path) {
  if (!j.is_object()) return path.Error(absl::StrCat("expected an object, got ", Describe(j)));
  for (const auto& [key, value] : j.items()) {
    JsonPathScope scope(path, key);
    const Node* child = nullptr;
    for (const auto& [name, node] : n.properties) {
      if (name == key) child = node.get();
    }
    if (child == nullptr) return path.Error("unknown field");
    if (value.is_null()) continue;  // Kubernetes drops nulls of absent fields
    RETURN_IF_ERROR(Check(value, *child, path));
  }
  for (const std::string& name : n.required) {
    if (!j.contains(name) || j[name].is_null()) {
      JsonPathScope scope(path, name);
      return path.Error("required field missing");
    }
  }
  if (!n.exactly_one_of.empty()) {
    int given = 0;
    for (const std::string& name : n.exactly_one_of) given += j.contains(name);
    if (given != 1) {
      return path.Error(
          absl::StrCat("exactly one of ", absl::StrJoin(n.exactly_one_of, ", "), " must be given"));
    }
  }
  if (n.rule) return n.rule(j, path);
  return absl::OkStatus();
}

absl::Status Check(const Json& j, const Node& n, JsonPath& path) {
  switch (n.type) {
    case Node::Type::kObject:
      return CheckObject(j, n, path);
    case Node::Type::kStringMap: {
      if (!j.is_object()) return path.Error(absl::StrCat("expected an object, got ", Describe(j)));
      if (j.size() > n.max_properties) {
        return path.Error(absl::StrCat("at most ", n.max_properties, " entries, got ", j.size()));
      }
      for (const auto& [key, value] : j.items()) {
        JsonPathScope scope(path, key);
        RETURN_IF_ERROR(Check(value, *n.value, path));
      }
      return absl::OkStatus();
    }
    case Node::Type::kArray: {
      if (!j.is_array()) return path.Error(absl::StrCat("expected a list, got ", Describe(j)));
      if (j.size() > n.max_items) {
        return path.Error(absl::StrCat("at most ", n.max_items, " items, got ", j.size()));
      }
      if (j.size() < n.min_items) {
        return path.Error(
            absl::StrCat("at least ", n.min_items, " item(s) needed, got ", j.size()));
      }
      for (size_t i = 0; i < j.size(); ++i) {
        JsonPathScope scope(path, i);
        RETURN_IF_ERROR(Check(j[i], *n.items, path));
        if (!n.map_key.empty()) {
          for (size_t k = 0; k < i; ++k) {
            if (j[k][n.map_key] == j[i][n.map_key]) {
              JsonPathScope key_scope(path, n.map_key);
              return path.Error(
                  absl::StrCat(Describe(j[i][n.map_key]), " is already used by item ", k));
            }
          }
        }
      }
      return absl::OkStatus();
    }
    case Node::Type::kInteger: {
      if (!j.is_number_integer()) {
        return path.Error(absl::StrCat("expected an integer, got ", Describe(j)));
      }
      if (j.is_number_unsigned() && j.get<uint64_t>() > uint64_t{INT64_MAX}) {
        return path.Error(absl::StrCat("must be <= ", n.maximum));
      }
      const int64_t v = j.get<int64_t>();
      if (v < n.minimum) return path.Error(absl::StrCat("must be >= ", n.minimum));
      if (v > n.maximum) return path.Error(absl::StrCat("must be <= ", n.maximum));
      return absl::OkStatus();
    }
    case Node::Type::kString: {
      if (!j.is_string()) return path.Error(absl::StrCat("expected a string, got ", Describe(j)));
      const std::string& s = j.get_ref<const std::string&>();
      if (!n.enums.empty()) {
        for (const std::string& e : n.enums) {
          if (s == e) return absl::OkStatus();
        }
        return path.Error(
            absl::StrCat("must be one of ", absl::StrJoin(n.enums, ", "), "; got ", Describe(j)));
      }
      const size_t length = CodePoints(s);
      if (length > n.max_length) {
        return path.Error(absl::StrCat("must be at most ", n.max_length, " characters"));
      }
      if (length < n.min_length) {
        return path.Error(absl::StrCat("must be at least ", n.min_length, " character(s)"));
      }
      if (!n.pattern.empty() && !std::regex_search(s, n.regex)) {
        return path.Error(absl::StrCat(Describe(j), " does not match ", n.pattern));
      }
      if (n.cidr && !IsCidr(s)) {
        return path.Error(absl::StrCat(Describe(j), " is not a CIDR (e.g. 10.0.0.0/8, fd00::/64)"));
      }
      return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

const Node* SpecOf(Kind kind) {
  static const NodePtr* const kTrafficRoute = new NodePtr(TrafficRouteSpec());
  static const NodePtr* const kAccessPolicy = new NodePtr(AccessPolicySpec());
  static const NodePtr* const kApiCostPolicy = new NodePtr(ApiCostPolicySpec());
  switch (kind) {
    case Kind::kTrafficRoute:
      return kTrafficRoute->get();
    case Kind::kAccessPolicy:
      return kAccessPolicy->get();
    case Kind::kApiCostPolicy:
      return kApiCostPolicy->get();
    default:
      return nullptr;
  }
}

}  // namespace

absl::Status ValidatePolicyObject(const Json& object) {
  try {
    JsonPath path("object");
    if (!object.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("expected a mapping, got ", Describe(object)));
    }
    const Json* api_version = object.contains("apiVersion") ? &object["apiVersion"] : nullptr;
    const Json* kind_name = object.contains("kind") ? &object["kind"] : nullptr;
    if (api_version == nullptr || !api_version->is_string() || kind_name == nullptr ||
        !kind_name->is_string()) {
      return absl::InvalidArgumentError("apiVersion and kind must be strings");
    }
    const std::string expected = absl::StrCat(kPolicyGroup, "/", kPolicyVersion);
    if (*api_version != expected) {
      return absl::InvalidArgumentError(
          absl::StrCat("apiVersion: ", Describe(*api_version), " is not served; use ", expected));
    }
    std::optional<Kind> kind = KindOf(expected, kind_name->get_ref<const std::string&>());
    const Node* spec = kind ? SpecOf(*kind) : nullptr;
    if (spec == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("kind: ", Describe(*kind_name), " is not a kind of ", expected,
                       " (TrafficRoute, AccessPolicy, ApiCostPolicy)"));
    }
    for (const auto& [key, value] : object.items()) {
      if (key != "apiVersion" && key != "kind" && key != "metadata" && key != "spec" &&
          key != "status") {
        JsonPathScope scope(path, key);
        return path.Error("unknown field");
      }
    }
    {
      JsonPathScope scope(path, "metadata");
      if (!object.contains("metadata") || !object["metadata"].is_object()) {
        return path.Error("expected an object with a name");
      }
      const Json& metadata = object["metadata"];
      JsonPathScope name_scope(path, "name");
      if (!metadata.contains("name") || !metadata["name"].is_string() ||
          metadata["name"].get_ref<const std::string&>().empty()) {
        return path.Error("required field missing");
      }
    }
    JsonPathScope scope(path, "spec");
    if (!object.contains("spec") || object["spec"].is_null()) {
      return path.Error("required field missing");
    }
    return Check(object["spec"], *spec, path);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("object could not be validated: ", e.what()));
  }
}

}  // namespace shunt::controller
