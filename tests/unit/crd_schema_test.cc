// The CRDs' openAPIV3Schema (deploy/crds/*.yaml) and the C++ validator the manifests source uses
// in its place (controller/manifests/crd_validation.cc) must agree. This test walks the CRD YAML
// with a tiny structural checker of its own, for exactly the keywords the CRDs use (an unknown
// keyword fails the test, so a new kind of rule cannot slip in unchecked), and asserts that both
// accept docs/examples and both reject the same invalid samples.
#include <arpa/inet.h>

#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/yaml_json.h"
#include "controller/manifests/crd_validation.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shunt::controller {
namespace {

using Json = nlohmann::json;
using ::testing::HasSubstr;

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Json LoadOne(const std::string& relative) {
  const std::string path = absl::StrCat(SHUNT_SOURCE_DIR, "/", relative);
  absl::StatusOr<std::vector<Json>> docs = YamlDocumentsToJson(ReadText(path), {});
  EXPECT_TRUE(docs.ok()) << path << ": " << docs.status();
  EXPECT_EQ(docs.ok() ? docs->size() : 0, 1u) << path;
  return docs.ok() && !docs->empty() ? docs->front() : Json();
}

// ---- The checker: OpenAPI v3 as Kubernetes applies it, for the keywords the CRDs use.
const std::set<std::string> kKeywords = {
    "type",
    "description",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "maxProperties",
    "format",
    "oneOf",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",  // CEL: not evaluated here; see CelRulesAreValidatorOnly
};

bool IsCidr(const std::string& s) {
  const size_t slash = s.find('/');
  int bits;
  if (slash == std::string::npos || slash + 1 >= s.size() ||
      !absl::SimpleAtoi(s.substr(slash + 1), &bits) || !isdigit(s[slash + 1])) {
    return false;
  }
  unsigned char buf[16];
  const std::string addr = s.substr(0, slash);
  if (inet_pton(AF_INET, addr.c_str(), buf) == 1) return bits >= 0 && bits <= 32;
  if (inet_pton(AF_INET6, addr.c_str(), buf) == 1) return bits >= 0 && bits <= 128;
  return false;
}

size_t CodePoints(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

// "" if `v` conforms to `schema`, else why not (with a path, for the test's messages).
std::string Conform(const Json& v, const Json& schema, const std::string& path) {
  for (const auto& [keyword, unused] : schema.items()) {
    if (!kKeywords.count(keyword)) return absl::StrCat(path, ": schema keyword ", keyword, "?");
  }
  const std::string type = schema.value("type", "");
  if (type == "object") {
    if (!v.is_object()) return absl::StrCat(path, ": not an object");
    if (schema.contains("maxProperties") && v.size() > schema["maxProperties"].get<size_t>()) {
      return absl::StrCat(path, ": maxProperties");
    }
    for (const auto& [key, value] : v.items()) {
      const std::string child = absl::StrCat(path, ".", key);
      if (value.is_null()) continue;
      if (schema.contains("properties")) {
        if (!schema["properties"].contains(key)) return absl::StrCat(child, ": unknown field");
        if (auto e = Conform(value, schema["properties"][key], child); !e.empty()) return e;
      } else if (schema.contains("additionalProperties")) {
        if (auto e = Conform(value, schema["additionalProperties"], child); !e.empty()) return e;
      }
    }
    for (const auto& r : schema.value("required", Json::array())) {
      if (!v.contains(r.get<std::string>()) || v[r.get<std::string>()].is_null()) {
        return absl::StrCat(path, ".", r.get<std::string>(), ": required");
      }
    }
    if (schema.contains("oneOf")) {
      int matched = 0;
      for (const auto& alternative : schema["oneOf"]) {
        for (const auto& [keyword, unused] : alternative.items()) {
          if (keyword != "required") return absl::StrCat(path, ": oneOf with ", keyword, "?");
        }
        bool all = true;
        for (const auto& r : alternative["required"]) all = all && v.contains(r.get<std::string>());
        matched += all;
      }
      if (matched != 1) return absl::StrCat(path, ": oneOf matched ", matched);
    }
    return "";
  }
  if (type == "array") {
    if (!v.is_array()) return absl::StrCat(path, ": not an array");
    if (schema.contains("maxItems") && v.size() > schema["maxItems"].get<size_t>()) {
      return absl::StrCat(path, ": maxItems");
    }
    if (schema.contains("minItems") && v.size() < schema["minItems"].get<size_t>()) {
      return absl::StrCat(path, ": minItems");
    }
    for (size_t i = 0; i < v.size(); ++i) {
      if (auto e = Conform(v[i], schema["items"], absl::StrCat(path, "[", i, "]")); !e.empty()) {
        return e;
      }
    }
    if (schema.value("x-kubernetes-list-type", "") == "map") {
      std::set<std::string> seen;
      for (const auto& item : v) {
        std::string key;
        for (const auto& k : schema["x-kubernetes-list-map-keys"]) {
          key += item.value(k.get<std::string>(), Json()).dump() + "/";
        }
        if (!seen.insert(key).second) return absl::StrCat(path, ": duplicate map key ", key);
      }
    }
    return "";
  }
  if (type == "integer") {
    if (!v.is_number_integer()) return absl::StrCat(path, ": not an integer");
    if (schema.contains("minimum") && v.get<int64_t>() < schema["minimum"].get<int64_t>()) {
      return absl::StrCat(path, ": minimum");
    }
    if (schema.contains("maximum") && v.get<int64_t>() > schema["maximum"].get<int64_t>()) {
      return absl::StrCat(path, ": maximum");
    }
    return "";
  }
  if (type == "string") {
    if (!v.is_string()) return absl::StrCat(path, ": not a string");
    const std::string& s = v.get_ref<const std::string&>();
    if (schema.contains("enum")) {
      bool found = false;
      for (const auto& e : schema["enum"]) found = found || e == v;
      if (!found) return absl::StrCat(path, ": enum");
    }
    if (schema.contains("maxLength") && CodePoints(s) > schema["maxLength"].get<size_t>()) {
      return absl::StrCat(path, ": maxLength");
    }
    if (schema.contains("minLength") && CodePoints(s) < schema["minLength"].get<size_t>()) {
      return absl::StrCat(path, ": minLength");
    }
    if (schema.contains("pattern") &&
        !std::regex_search(s, std::regex(schema["pattern"].get<std::string>()))) {
      return absl::StrCat(path, ": pattern");
    }
    if (schema.value("format", "") == "cidr" && !IsCidr(s)) return absl::StrCat(path, ": cidr");
    return "";
  }
  return absl::StrCat(path, ": schema type ", type, "?");
}

class CrdSchemaTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    crds_ = new std::map<std::string, Json>;
    for (const char* file : {"trafficroutes", "accesspolicies", "apicostpolicies"}) {
      Json crd = LoadOne(absl::StrCat("deploy/crds/", file, ".yaml"));
      (*crds_)[crd["spec"]["names"]["kind"].get<std::string>()] = crd;
    }
  }
  static void TearDownTestSuite() { delete crds_; }

  // What the CRD says about `object` ("" when it accepts it).
  static std::string CrdVerdict(const Json& object) {
    const Json& crd = crds_->at(object["kind"].get<std::string>());
    return Conform(object, crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "object");
  }

  static std::map<std::string, Json>* crds_;
};
std::map<std::string, Json>* CrdSchemaTest::crds_ = nullptr;

TEST_F(CrdSchemaTest, CrdsAreWhatTheControllerServes) {
  ASSERT_EQ(crds_->size(), 3u);
  std::map<std::string, std::pair<std::string, std::string>> names = {
      {"TrafficRoute", {"trafficroutes", "tr"}},
      {"AccessPolicy", {"accesspolicies", "ap"}},
      {"ApiCostPolicy", {"apicostpolicies", "acp"}}};
  for (const auto& [kind, crd] : *crds_) {
    SCOPED_TRACE(kind);
    EXPECT_EQ(crd["apiVersion"], "apiextensions.k8s.io/v1");
    EXPECT_EQ(crd["spec"]["group"], "policy.shunt.dev");
    EXPECT_EQ(crd["spec"]["scope"], "Namespaced");
    EXPECT_EQ(crd["spec"]["names"]["plural"], names[kind].first);
    EXPECT_EQ(crd["metadata"]["name"], names[kind].first + ".policy.shunt.dev");
    EXPECT_EQ(crd["spec"]["names"]["shortNames"], Json({names[kind].second}));
    EXPECT_EQ(crd["spec"]["names"]["categories"], Json({"shunt"}));
    ASSERT_EQ(crd["spec"]["versions"].size(), 1u);
    const Json& v = crd["spec"]["versions"][0];
    EXPECT_EQ(v["name"], "v1alpha1");
    EXPECT_EQ(v["served"], true);
    EXPECT_EQ(v["storage"], true);
    EXPECT_EQ(v["subresources"], Json({{"status", Json::object()}}));
    bool accepted_column = false;
    for (const auto& c : v["additionalPrinterColumns"]) {
      accepted_column =
          accepted_column || c["jsonPath"] == R"(.status.conditions[?(@.type=="Accepted")].status)";
    }
    EXPECT_TRUE(accepted_column);
    const Json& status = v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
    EXPECT_TRUE(status.contains("observedGeneration"));
    for (const char* field :
         {"type", "status", "reason", "message", "observedGeneration", "lastTransitionTime"}) {
      EXPECT_TRUE(status["conditions"]["items"]["properties"].contains(field)) << field;
    }
  }
}

// Every field of the spec has a description, so that `kubectl explain` is useful.
void ExpectDescriptions(const Json& schema, const std::string& path) {
  if (schema.contains("properties")) {
    for (const auto& [key, child] : schema["properties"].items()) {
      const std::string child_path = absl::StrCat(path, ".", key);
      EXPECT_TRUE(child.contains("description")) << child_path;
      ExpectDescriptions(child, child_path);
    }
  }
  if (schema.contains("items")) ExpectDescriptions(schema["items"], path + "[]");
}

TEST_F(CrdSchemaTest, SpecFieldsAreDescribed) {
  for (const auto& [kind, crd] : *crds_) {
    const Json& root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    ExpectDescriptions(root["properties"]["spec"], kind + ".spec");
  }
}

TEST_F(CrdSchemaTest, BothAcceptTheExamples) {
  for (const char* file : {"trafficroute", "accesspolicy", "apicostpolicy"}) {
    SCOPED_TRACE(file);
    Json object = LoadOne(absl::StrCat("docs/examples/", file, ".yaml"));
    EXPECT_EQ(CrdVerdict(object), "");
    EXPECT_TRUE(ValidatePolicyObject(object).ok()) << ValidatePolicyObject(object);
  }
}

struct Sample {
  const char* kind;  // the example it starts from
  std::function<void(Json& spec)> mutate;
  const char* validator_error;  // expected message of ValidatePolicyObject ("" = accepted)
};

Json Example(const std::string& kind) {
  static const std::map<std::string, std::string> kFiles = {{"TrafficRoute", "trafficroute"},
                                                            {"AccessPolicy", "accesspolicy"},
                                                            {"ApiCostPolicy", "apicostpolicy"}};
  return LoadOne(absl::StrCat("docs/examples/", kFiles.at(kind), ".yaml"));
}

TEST_F(CrdSchemaTest, BothJudgeTheSamplesAlike) {
  const std::vector<Sample> samples = {
      // TrafficRoute
      {"TrafficRoute", [](Json& s) { s["rules"][1]["backends"][1]["weight"] = 1000000; }, ""},
      {"TrafficRoute", [](Json& s) { s["rules"][1]["backends"][1]["weight"] = 0; }, ""},
      {"TrafficRoute", [](Json& s) { s.erase("ports"); }, ""},
      {"TrafficRoute",
       [](Json& s) {
         s["rules"] = Json::parse(R"([{"backends": [{"service": "a", "weight": 1}]}])");
       },
       ""},
      {"TrafficRoute", [](Json& s) { s["rules"][1]["backends"][1]["weight"] = 1000001; },
       "spec.rules[1].backends[1].weight: must be <= 1000000"},
      {"TrafficRoute", [](Json& s) { s["rules"][1]["backends"][0]["weight"] = -1; },
       "spec.rules[1].backends[0].weight: must be >= 0"},
      {"TrafficRoute", [](Json& s) { s["rules"][1]["backends"][0]["weight"] = "5"; },
       R"(spec.rules[1].backends[0].weight: expected an integer, got "5")"},
      {"TrafficRoute", [](Json& s) { s["rules"][1]["backends"][0]["weight"] = 1.5; },
       "spec.rules[1].backends[0].weight: expected an integer, got 1.5"},
      {"TrafficRoute", [](Json& s) { s["rules"][1]["backends"][0].erase("weight"); },
       "spec.rules[1].backends[0].weight: required field missing"},
      {"TrafficRoute", [](Json& s) { s["ports"] = Json({0}); }, "spec.ports[0]: must be >= 1"},
      {"TrafficRoute",
       [](Json& s) {
         s["ports"] = Json({80, 65536});
       },
       "spec.ports[1]: must be <= 65535"},
      {"TrafficRoute", [](Json& s) { s["ports"] = Json(std::vector<int>(33, 80)); },
       "spec.ports: at most 32 items, got 33"},
      {"TrafficRoute", [](Json& s) { s["rules"] = Json::array(); },
       "spec.rules: at least 1 item(s) needed, got 0"},
      {"TrafficRoute", [](Json& s) { s.erase("service"); }, "spec.service: required field missing"},
      {"TrafficRoute", [](Json& s) { s["service"] = "Checkout"; },
       R"(spec.service: "Checkout" does not match ^[a-z]([-a-z0-9]*[a-z0-9])?$)"},
      {"TrafficRoute", [](Json& s) { s["service"] = std::string(64, 'a'); },
       "spec.service: must be at most 63 characters"},
      {"TrafficRoute", [](Json& s) { s["rules"][1]["backends"][0]["service"] = "other"; },
       "spec.rules[1].backends[0]: exactly one of subset, service must be given"},
      {"TrafficRoute", [](Json& s) { s["rules"][1]["backends"][0].erase("subset"); },
       "spec.rules[1].backends[0]: exactly one of subset, service must be given"},
      {"TrafficRoute", [](Json& s) { s["rules"][0]["backends"][0]["port"] = 0; },
       "spec.rules[0].backends[0].port: must be >= 1"},
      {"TrafficRoute", [](Json& s) { s["colour"] = "blue"; }, "spec.colour: unknown field"},
      {"TrafficRoute", [](Json& s) { s["rules"][0]["retries"]["retryOn"] = Json({"sometimes"}); },
       "spec.rules[0].retries.retryOn[0]: must be one of 5xx, gateway-error, reset, "
       "connect-failure, retriable-4xx, refused-stream, cancelled, deadline-exceeded, internal, "
       "resource-exhausted, unavailable; got \"sometimes\""},
      {"TrafficRoute", [](Json& s) { s["rules"][0]["retries"]["attempts"] = 11; },
       "spec.rules[0].retries.attempts: must be <= 10"},
      {"TrafficRoute", [](Json& s) { s["rules"][0]["matches"][0]["pathPrefix"] = "api/"; },
       R"(spec.rules[0].matches[0].pathPrefix: "api/" does not match ^/)"},
      {"TrafficRoute", [](Json& s) { s["rules"][0]["matches"][1]["grpcMethod"] = "/NoMethod"; },
       R"(spec.rules[0].matches[1].grpcMethod: "/NoMethod" does not match ^/[^/]+/[^/]+$)"},
      {"TrafficRoute", [](Json& s) { s["rules"][0]["matches"][0]["method"] = "get"; },
       R"(spec.rules[0].matches[0].method: "get" does not match ^[A-Z]+$)"},
      {"TrafficRoute", [](Json& s) { s["rules"][0]["timeoutMs"] = 86400001; },
       "spec.rules[0].timeoutMs: must be <= 86400000"},
      {"TrafficRoute",
       [](Json& s) {
         for (int i = 0; i < 16; ++i)
           s["rules"][0]["matches"][1]["headers"][absl::StrCat("h", i)] = "v";
       },
       "spec.rules[0].matches[1].headers: at most 16 entries, got 17"},
      {"TrafficRoute",
       [](Json& s) { s["rules"][1]["backends"][0]["subset"]["matchLabels"]["n"] = 1; },
       "spec.rules[1].backends[0].subset.matchLabels.n: expected a string, got 1"},
      {"TrafficRoute", [](Json& s) { s["rules"] = "all"; },
       R"(spec.rules: expected a list, got "all")"},
      // AccessPolicy
      {"AccessPolicy", [](Json& s) { s["action"] = "DENY"; }, ""},
      {"AccessPolicy",
       [](Json& s) {
         s = Json({{"action", "DENY"}});
       },
       ""},
      {"AccessPolicy",
       [](Json& s) {
         s["from"][2]["ipBlocks"] = Json({"10.1.2.3/32", "::/0"});
       },
       ""},
      {"AccessPolicy", [](Json& s) { s["action"] = "MAYBE"; },
       R"(spec.action: must be one of ALLOW, DENY; got "MAYBE")"},
      {"AccessPolicy", [](Json& s) { s["action"] = "allow"; },
       R"(spec.action: must be one of ALLOW, DENY; got "allow")"},
      {"AccessPolicy", [](Json& s) { s.erase("action"); }, "spec.action: required field missing"},
      {"AccessPolicy", [](Json& s) { s["from"][2]["ipBlocks"] = Json({"10.0.0.0/33"}); },
       R"(spec.from[2].ipBlocks[0]: "10.0.0.0/33" is not a CIDR (e.g. 10.0.0.0/8, fd00::/64))"},
      {"AccessPolicy", [](Json& s) { s["from"][2]["ipBlocks"] = Json({"10.0.0.1"}); },
       R"(spec.from[2].ipBlocks[0]: "10.0.0.1" is not a CIDR (e.g. 10.0.0.0/8, fd00::/64))"},
      {"AccessPolicy", [](Json& s) { s["from"][2]["ipBlocks"] = Json({"fd00::/129"}); },
       R"(spec.from[2].ipBlocks[0]: "fd00::/129" is not a CIDR (e.g. 10.0.0.0/8, fd00::/64))"},
      {"AccessPolicy", [](Json& s) { s["from"][2]["ipBlocks"] = Json({"web/8"}); },
       R"(spec.from[2].ipBlocks[0]: "web/8" is not a CIDR (e.g. 10.0.0.0/8, fd00::/64))"},
      {"AccessPolicy", [](Json& s) { s["ports"][0]["from"] = 0; },
       "spec.ports[0].from: must be >= 1"},
      {"AccessPolicy", [](Json& s) { s["ports"][1]["to"] = 70000; },
       "spec.ports[1].to: must be <= 65535"},
      {"AccessPolicy", [](Json& s) { s["ports"][1].erase("from"); },
       "spec.ports[1].from: required field missing"},
      {"AccessPolicy", [](Json& s) { s["from"][0]["namespaces"] = Json({"Bad_NS"}); },
       R"(spec.from[0].namespaces[0]: "Bad_NS" does not match ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$)"},
      {"AccessPolicy", [](Json& s) { s["from"][1]["serviceAccounts"] = Json({"a/b/c"}); },
       "spec.from[1].serviceAccounts[0]: \"a/b/c\" does not match "
       "^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
      {"AccessPolicy", [](Json& s) { s["target"]["matchLabels"]["tier"] = true; },
       "spec.target.matchLabels.tier: expected a string, got true"},
      {"AccessPolicy", [](Json& s) { s["target"]["labels"] = Json::object(); },
       "spec.target.labels: unknown field"},
      {"AccessPolicy", [](Json& s) { s["l7"][0]["paths"] = Json({"v1/*"}); },
       R"(spec.l7[0].paths[0]: "v1/*" does not match ^/)"},
      {"AccessPolicy", [](Json& s) { s["from"] = Json(std::vector<Json>(65, Json::object())); },
       "spec.from: at most 64 items, got 65"},
      // ApiCostPolicy
      {"ApiCostPolicy",
       [](Json& s) {
         s.erase("routes");
         s.erase("models");
       },
       ""},
      {"ApiCostPolicy", [](Json& s) { s["routes"][0]["perRequest"] = "12"; }, ""},
      {"ApiCostPolicy", [](Json& s) { s["currency"] = "usd"; },
       R"(spec.currency: "usd" does not match ^[A-Z]{3}$)"},
      {"ApiCostPolicy", [](Json& s) { s["currency"] = "EURO"; },
       R"(spec.currency: "EURO" does not match ^[A-Z]{3}$)"},
      {"ApiCostPolicy", [](Json& s) { s.erase("currency"); },
       "spec.currency: required field missing"},
      {"ApiCostPolicy", [](Json& s) { s["routes"][0]["perRequest"] = "0.1.2"; },
       R"(spec.routes[0].perRequest: "0.1.2" does not match ^[0-9]+(\.[0-9]+)?$)"},
      {"ApiCostPolicy", [](Json& s) { s["routes"][0]["perRequest"] = "-1"; },
       R"(spec.routes[0].perRequest: "-1" does not match ^[0-9]+(\.[0-9]+)?$)"},
      {"ApiCostPolicy", [](Json& s) { s["routes"][0]["perRequest"] = "1e5"; },
       R"(spec.routes[0].perRequest: "1e5" does not match ^[0-9]+(\.[0-9]+)?$)"},
      {"ApiCostPolicy", [](Json& s) { s["routes"][0]["perRequest"] = ".5"; },
       R"(spec.routes[0].perRequest: ".5" does not match ^[0-9]+(\.[0-9]+)?$)"},
      {"ApiCostPolicy", [](Json& s) { s["routes"][0]["perRequest"] = 0.002; },
       "spec.routes[0].perRequest: expected a string, got 0.002"},
      {"ApiCostPolicy", [](Json& s) { s["routes"][1]["name"] = "embeddings"; },
       R"(spec.routes[1].name: "embeddings" is already used by item 0)"},
      {"ApiCostPolicy", [](Json& s) { s["routes"][1].erase("name"); },
       "spec.routes[1].name: required field missing"},
      {"ApiCostPolicy", [](Json& s) { s["routes"][1]["name"] = "chat completions"; },
       "spec.routes[1].name: \"chat completions\" does not match "
       "^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"},
      {"ApiCostPolicy", [](Json& s) { s["models"][1]["model"] = "gpt-4o"; },
       R"(spec.models[1].model: "gpt-4o" is already used by item 0)"},
      {"ApiCostPolicy", [](Json& s) { s["models"][0]["model"] = ""; },
       "spec.models[0].model: must be at least 1 character(s)"},
      {"ApiCostPolicy", [](Json& s) { s["models"][0]["perMillionTokens"] = "1"; },
       "spec.models[0].perMillionTokens: unknown field"},
      {"ApiCostPolicy", [](Json& s) { s["defaultModel"]["perMillionInput"] = "cheap"; },
       R"(spec.defaultModel.perMillionInput: "cheap" does not match ^[0-9]+(\.[0-9]+)?$)"},
      {"ApiCostPolicy", [](Json& s) { s["models"] = Json::object(); },
       "spec.models: expected a list, got an object"},
  };
  for (size_t i = 0; i < samples.size(); ++i) {
    const Sample& sample = samples[i];
    Json object = Example(sample.kind);
    sample.mutate(object["spec"]);
    SCOPED_TRACE(absl::StrCat("sample ", i, ": ", object["spec"].dump()));
    const absl::Status validator = ValidatePolicyObject(object);
    const std::string crd = CrdVerdict(object);
    if (*sample.validator_error == '\0') {
      EXPECT_TRUE(validator.ok()) << validator;
      EXPECT_EQ(crd, "");
    } else {
      EXPECT_EQ(validator.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(std::string(validator.message()), sample.validator_error);
      EXPECT_NE(crd, "") << "the CRD schema accepts what the validator rejects";
    }
  }
}

// x-kubernetes-validations (CEL) are enforced by the API server and by the validator; the
// structural checker here does not evaluate CEL, so these are checked against the validator only,
// and the CRD must carry the rule.
TEST_F(CrdSchemaTest, CelRulesAreValidatorOnly) {
  Json object = Example("AccessPolicy");
  object["spec"]["ports"][1] = Json({{"from", 9100}, {"to", 9000}});
  EXPECT_EQ(std::string(ValidatePolicyObject(object).message()),
            "spec.ports[1]: to must not be less than from");
  const Json& ports = (*crds_)["AccessPolicy"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
                              ["properties"]["spec"]["properties"]["ports"]["items"];
  ASSERT_TRUE(ports.contains("x-kubernetes-validations"));
  EXPECT_EQ(ports["x-kubernetes-validations"][0]["rule"], "!has(self.to) || self.to >= self.from");
  object["spec"]["ports"][1] = Json({{"from", 9100}, {"to", 9100}});
  EXPECT_TRUE(ValidatePolicyObject(object).ok());
}

TEST(ValidatePolicyObject, Envelope) {
  Json o = {{"apiVersion", "policy.shunt.dev/v1alpha1"},
            {"kind", "AccessPolicy"},
            {"metadata", {{"name", "p"}}},
            {"spec", {{"action", "ALLOW"}}}};
  EXPECT_TRUE(ValidatePolicyObject(o).ok());
  o["status"] = {{"observedGeneration", 3}};
  EXPECT_TRUE(ValidatePolicyObject(o).ok());  // the controller's, not checked

  Json bad = o;
  bad["apiVersion"] = "policy.shunt.dev/v1";
  EXPECT_THAT(std::string(ValidatePolicyObject(bad).message()),
              HasSubstr("\"policy.shunt.dev/v1\" is not served; use policy.shunt.dev/v1alpha1"));
  bad = o;
  bad["kind"] = "RateLimit";
  EXPECT_THAT(std::string(ValidatePolicyObject(bad).message()),
              HasSubstr("\"RateLimit\" is not a kind"));
  bad = o;
  bad["metadata"].erase("name");
  EXPECT_EQ(std::string(ValidatePolicyObject(bad).message()),
            "metadata.name: required field missing");
  bad = o;
  bad.erase("spec");
  EXPECT_EQ(std::string(ValidatePolicyObject(bad).message()), "spec: required field missing");
  bad = o;
  bad["spec"] = "ALLOW";
  EXPECT_EQ(std::string(ValidatePolicyObject(bad).message()),
            R"(spec: expected an object, got "ALLOW")");
  bad = o;
  bad["specs"] = Json::object();
  EXPECT_EQ(std::string(ValidatePolicyObject(bad).message()), "specs: unknown field");
  EXPECT_FALSE(ValidatePolicyObject(Json::array()).ok());
  EXPECT_FALSE(ValidatePolicyObject(Json(nullptr)).ok());
}

}  // namespace
}  // namespace shunt::controller
