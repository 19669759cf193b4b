#include "agent/policy/policy_file.h"

#include <cstdint>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace shunt::agent {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kJson[] = R"({
  "workloads": [
    {
      "uid": "0f3a2b4c-1111-2222-3333-444455556666",
      "namespace": "shop",
      "name": "web-7d9f8-abcde",
      "node": "node-a",
      "ips": ["10.0.1.5", "fd00::1:5"],
      "meshed": true,
      "serviceAccount": "web",
      "labels": {"app": "web", "app.kubernetes.io/version": "1.2"},
      "owner": "web"
    },
    {
      "uid": "9a8b7c6d-0000-4000-8000-000000000002",
      "namespace": "shop",
      "name": "db-0",
      "node": "node-b",
      "ips": ["10.0.2.9"]
    }
  ]
})";

constexpr char kYaml[] = R"(# The same bundle as kJson.
workloads:
  - uid: 0f3a2b4c-1111-2222-3333-444455556666
    namespace: shop
    name: web-7d9f8-abcde
    node: node-a
    ips: [10.0.1.5, "fd00::1:5"]
    meshed: true
    serviceAccount: web
    labels:
      app: web
      app.kubernetes.io/version: "1.2"
    owner: web
  - uid: 9a8b7c6d-0000-4000-8000-000000000002
    namespace: shop
    name: db-0
    node: node-b
    ips:
      - 10.0.2.9
)";

// The error message of parsing `text`, or "OK".
std::string ErrorOf(std::string_view text) {
  absl::StatusOr<shunt::v1::PolicyBundle> b = ParsePolicyBundle(text);
  if (b.ok()) return "OK";
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << b.status();
  return std::string(b.status().message());
}

// One-workload JSON document with `fields` spliced into a valid workload.
std::string OneWorkload(std::string_view fields) {
  return absl::StrCat(R"({"workloads": [{"uid": "u1", "namespace": "ns", "name": "n1")",
                      fields.empty() ? "" : ", ", std::string(fields), "}]}");
}

shunt::v1::PolicyBundle ParseOk(std::string_view text) {
  absl::StatusOr<shunt::v1::PolicyBundle> b = ParsePolicyBundle(text);
  EXPECT_TRUE(b.ok()) << b.status();
  return b.ok() ? *b : shunt::v1::PolicyBundle();
}

TEST(ParsePolicyBundle, JsonAllFields) {
  shunt::v1::PolicyBundle b = ParseOk(kJson);
  ASSERT_EQ(b.workloads_size(), 2);
  const shunt::v1::Workload& w = b.workloads(0);
  EXPECT_EQ(w.uid(), "0f3a2b4c-1111-2222-3333-444455556666");
  EXPECT_EQ(w.namespace_(), "shop");
  EXPECT_EQ(w.name(), "web-7d9f8-abcde");
  EXPECT_EQ(w.node(), "node-a");
  ASSERT_EQ(w.ips_size(), 2);
  EXPECT_EQ(w.ips(0), "10.0.1.5");
  EXPECT_EQ(w.ips(1), "fd00::1:5");  // kept as written
  EXPECT_TRUE(w.meshed());
  EXPECT_EQ(w.service_account(), "web");
  EXPECT_EQ(w.labels().at("app"), "web");
  EXPECT_EQ(w.labels().at("app.kubernetes.io/version"), "1.2");
  EXPECT_EQ(w.owner(), "web");
  EXPECT_FALSE(b.workloads(1).meshed());
  EXPECT_TRUE(b.workloads(1).labels().empty());
}

TEST(ParsePolicyBundle, YamlEqualsJson) {
  shunt::v1::PolicyBundle from_json = ParseOk(kJson);
  shunt::v1::PolicyBundle from_yaml = ParseOk(kYaml);
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(from_json, from_yaml))
      << from_yaml.DebugString();
}

TEST(ParsePolicyBundle, SnakeCaseAndCamelCaseKeys) {
  EXPECT_EQ(ParseOk(OneWorkload(R"("service_account": "sa")")).workloads(0).service_account(),
            "sa");
  EXPECT_EQ(ParseOk(OneWorkload(R"("serviceAccount": "sa")")).workloads(0).service_account(), "sa");
  EXPECT_EQ(ParseOk("workloads:\n- {uid: u, namespace: n, name: m, service_account: sa}\n")
                .workloads(0)
                .service_account(),
            "sa");
  EXPECT_EQ(ErrorOf(OneWorkload(R"("serviceAccount": "a", "service_account": "b")")),
            "workloads[0].service_account: field given twice (also as \"serviceAccount\")");
}

TEST(ParsePolicyBundle, BoolsQuotedOrNot) {
  EXPECT_TRUE(ParseOk(OneWorkload(R"("meshed": true)")).workloads(0).meshed());
  EXPECT_TRUE(ParseOk(OneWorkload(R"("meshed": "true")")).workloads(0).meshed());
  EXPECT_FALSE(ParseOk(OneWorkload(R"("meshed": "false")")).workloads(0).meshed());
  for (const char* v : {"true", "\"true\"", "'true'", "True", "TRUE"}) {
    EXPECT_TRUE(
        ParseOk(absl::StrCat("workloads: [{uid: u, namespace: n, name: m, meshed: ", v, "}]"))
            .workloads(0)
            .meshed())
        << v;
  }
  EXPECT_FALSE(
      ParseOk("workloads: [{uid: u, namespace: n, name: m, meshed: false}]").workloads(0).meshed());
  // YAML 1.1's yes/no/on/off are not bools here: ambiguity is an error, not a guess.
  EXPECT_EQ(ErrorOf("workloads: [{uid: u, namespace: n, name: m, meshed: yes}]"),
            "workloads[0].meshed: expected true or false, got \"yes\"");
}

TEST(ParsePolicyBundle, YamlScalarsInStringFieldsAreText) {
  shunt::v1::PolicyBundle b = ParseOk(
      "workloads:\n"
      "- uid: 12345\n"
      "  namespace: n\n"
      "  name: m\n"
      "  labels: {version: 1.10, enabled: true}\n");
  EXPECT_EQ(b.workloads(0).uid(), "12345");
  EXPECT_EQ(b.workloads(0).labels().at("version"), "1.10");  // not the number 1.1
  EXPECT_EQ(b.workloads(0).labels().at("enabled"), "true");
}

TEST(ParsePolicyBundle, NullAndEmptyFieldsAreAbsent) {
  shunt::v1::PolicyBundle b = ParseOk(
      "workloads:\n- uid: u\n  namespace: n\n  name: m\n  ips:\n  labels: ~\n  owner: null\n");
  EXPECT_EQ(b.workloads(0).ips_size(), 0);
  EXPECT_TRUE(b.workloads(0).labels().empty());
  EXPECT_EQ(b.workloads(0).owner(), "");
  EXPECT_EQ(ParseOk(OneWorkload(R"("ips": null, "meshed": null)")).workloads(0).ips_size(), 0);
}

TEST(ParsePolicyBundle, NoWorkloads) {
  EXPECT_EQ(ParseOk("{}").workloads_size(), 0);
  EXPECT_EQ(ParseOk(R"({"workloads": []})").workloads_size(), 0);
  EXPECT_EQ(ParseOk("workloads: []\n").workloads_size(), 0);
  EXPECT_EQ(ParseOk("workloads:\n").workloads_size(), 0);
}

TEST(ParsePolicyBundle, EmptyInputIsAnError) {
  const std::string kEmpty = "policy is empty (write `workloads: []` for no workloads)";
  EXPECT_EQ(ErrorOf(""), kEmpty);
  EXPECT_EQ(ErrorOf(" \n\t\r\n"), kEmpty);
  EXPECT_EQ(ErrorOf("# nothing but a comment\n"), kEmpty);
  EXPECT_EQ(ErrorOf("---\n"), kEmpty);
}

TEST(ParsePolicyBundle, LeadingBraceMeansJson) {
  // The format is told by the first character, so a YAML flow mapping at the top is read as JSON.
  EXPECT_THAT(ErrorOf("{workloads: []}"), StartsWith("JSON syntax error"));
  EXPECT_EQ(ParseOk("workloads: []\n").workloads_size(), 0);
}

TEST(ParsePolicyBundle, ByteOrderMarkAndLeadingSpace) {
  EXPECT_EQ(ParseOk(absl::StrCat("\xEF\xBB\xBF\n  ", kJson)).workloads_size(), 2);
  EXPECT_EQ(ParseOk(absl::StrCat("\xEF\xBB\xBF", kYaml)).workloads_size(), 2);
}

// ---- Validation: one test per rule, with the exact message.

TEST(ValidatePolicyBundle, Uid) {
  EXPECT_EQ(ErrorOf(R"({"workloads": [{"namespace": "ns", "name": "n"}]})"),
            "workloads[0].uid: must not be empty");
  EXPECT_EQ(ErrorOf(absl::StrCat(R"({"workloads": [{"uid": ")", std::string(128, 'a'),
                                 R"(", "namespace": "ns", "name": "n"}]})")),
            "OK");
  const std::string long_uid(129, 'a');
  EXPECT_EQ(ErrorOf(absl::StrCat(R"({"workloads": [{"uid": ")", long_uid,
                                 R"(", "namespace": "ns", "name": "n"}]})")),
            absl::StrCat("workloads[0].uid: \"", std::string(64, 'a'),
                         "...\" is longer than 128 characters"));
  EXPECT_EQ(ErrorOf(R"({"workloads": [
      {"uid": "a", "namespace": "ns", "name": "n1"},
      {"uid": "b", "namespace": "ns", "name": "n2"},
      {"uid": "a", "namespace": "ns", "name": "n3"}]})"),
            "workloads[2].uid: \"a\" is already the uid of workloads[0]");
}

TEST(ValidatePolicyBundle, NamespaceAndName) {
  EXPECT_EQ(ErrorOf(R"({"workloads": [{"uid": "u", "name": "n"}]})"),
            "workloads[0].namespace: must not be empty");
  EXPECT_EQ(ErrorOf(R"({"workloads": [{"uid": "u", "namespace": "ns"}]})"),
            "workloads[0].name: must not be empty");
  const std::string kNotDns =
      " is not a DNS name (lowercase letters, digits, '-' and '.', starting and ending with a "
      "letter or digit)";
  EXPECT_EQ(ErrorOf(R"({"workloads": [{"uid": "u", "namespace": "Shop_1", "name": "n"}]})"),
            absl::StrCat("workloads[0].namespace: \"Shop_1\"", kNotDns));
  for (const char* bad : {"-web", "web-", "web.", "we b", "wéb", "WEB"}) {
    EXPECT_EQ(ErrorOf(absl::StrCat(R"({"workloads": [{"uid": "u", "namespace": "ns", "name": ")",
                                   bad, "\"}]}")),
              absl::StrCat("workloads[0].name: \"", bad, "\"", kNotDns));
  }
  std::string name_253(253, 'a');
  name_253[100] = '.';
  name_253[200] = '-';
  EXPECT_EQ(ErrorOf(absl::StrCat(R"({"workloads": [{"uid": "u", "namespace": "ns", "name": ")",
                                 name_253, "\"}]}")),
            "OK");
  EXPECT_EQ(ErrorOf(absl::StrCat(R"({"workloads": [{"uid": "u", "namespace": "ns", "name": ")",
                                 std::string(254, 'b'), "\"}]}")),
            absl::StrCat("workloads[0].name: \"", std::string(64, 'b'),
                         "...\" is longer than 253 characters"));
}

TEST(ValidatePolicyBundle, Ips) {
  EXPECT_EQ(ErrorOf(OneWorkload(R"("ips": ["10.0.0.1", "::1", "fe80::1", "::ffff:10.0.0.9"])")),
            "OK");
  EXPECT_EQ(ErrorOf(R"({"workloads": [
      {"uid": "u0", "namespace": "ns", "name": "n0"},
      {"uid": "u1", "namespace": "ns", "name": "n1"},
      {"uid": "u2", "namespace": "ns", "name": "n2"},
      {"uid": "u3", "namespace": "ns", "name": "n3", "ips": ["10.0.0.3", "10.0.0.x"]}]})"),
            R"(workloads[3].ips[1]: "10.0.0.x" is not an IPv4 or IPv6 address)");
  for (const char* bad : {"", "10.0.0", "10.0.0.256", "10.0.0.1/32", " 10.0.0.1", "fe80::1%eth0",
                          "1::2::3", "localhost", "10.0.0.1:80"}) {
    EXPECT_EQ(ErrorOf(OneWorkload(absl::StrCat(R"("ips": [")", bad, "\"]"))),
              absl::StrCat("workloads[0].ips[0]: \"", bad, "\" is not an IPv4 or IPv6 address"));
  }
  // inet_pton reads up to the first NUL; the rest must not be ignored.
  EXPECT_EQ(ErrorOf(OneWorkload(R"("ips": ["10.0.0.1\u0000junk"])")),
            R"(workloads[0].ips[0]: "10.0.0.1\x00junk" is not an IPv4 or IPv6 address)");
}

TEST(ValidatePolicyBundle, IpClaimedTwice) {
  EXPECT_EQ(ErrorOf(R"({"workloads": [
      {"uid": "u0", "namespace": "ns", "name": "n0", "ips": ["10.0.0.7"]},
      {"uid": "u1", "namespace": "ns", "name": "n1", "ips": ["10.0.0.8", "10.0.0.7"]}]})"),
            R"(workloads[1].ips[1]: "10.0.0.7" is already claimed by workloads[0] (ns/n0))");
  // Two spellings of one IPv6 address are one address.
  EXPECT_EQ(
      ErrorOf(R"({"workloads": [
      {"uid": "u0", "namespace": "ns", "name": "n0", "ips": ["fd00::1"]},
      {"uid": "u1", "namespace": "ns", "name": "n1", "ips": ["FD00:0:0:0:0:0:0:1"]}]})"),
      R"(workloads[1].ips[0]: "FD00:0:0:0:0:0:0:1" is already claimed by workloads[0] (ns/n0))");
  EXPECT_EQ(ErrorOf(OneWorkload(R"("ips": ["10.0.0.1", "10.0.0.1"])")),
            R"(workloads[0].ips[1]: "10.0.0.1" is already claimed by workloads[0] (ns/n1))");
}

TEST(ValidatePolicyBundle, WorkloadCount) {
  shunt::v1::PolicyBundle b;
  for (int i = 0; i < kMaxPolicyWorkloads; ++i) {
    shunt::v1::Workload* w = b.add_workloads();
    w->set_uid(absl::StrCat("u", i));
    w->set_namespace_("ns");
    w->set_name(absl::StrCat("n", i));
  }
  EXPECT_TRUE(ValidatePolicyBundle(b).ok());
  b.add_workloads()->set_uid("one-too-many");
  EXPECT_EQ(ValidatePolicyBundle(b).message(),
            "workloads: 100001 workloads; at most 100000 are allowed");
}

// ---- Malformed input.

TEST(ParsePolicyBundle, MalformedJson) {
  EXPECT_THAT(ErrorOf(R"({"workloads": [)"),
              StartsWith("JSON syntax error: parse error at line 1"));
  EXPECT_THAT(ErrorOf("{\"workloads\": []}\n{}"), StartsWith("JSON syntax error"));
  EXPECT_THAT(ErrorOf(R"({"workloads": [{"uid": "u",}]})"), StartsWith("JSON syntax error"));
  EXPECT_THAT(ErrorOf("{\"workloads\": [\"\xff\"]}"), StartsWith("JSON syntax error"));
  EXPECT_THAT(ErrorOf("{'workloads': []}"), StartsWith("JSON syntax error"));
  EXPECT_THAT(ErrorOf("{\n\n  \"workloads\": [x]}"), HasSubstr("line 3"));
}

TEST(ParsePolicyBundle, MalformedYaml) {
  EXPECT_THAT(ErrorOf("workloads: [a, b\n"), StartsWith("YAML syntax error at line"));
  EXPECT_THAT(ErrorOf("workloads:\n  - uid: a\n bad: [\n"),
              StartsWith("YAML syntax error at line"));
  EXPECT_THAT(ErrorOf("workloads: *missing_anchor\n"), StartsWith("YAML syntax error"));
  EXPECT_EQ(ErrorOf("workloads: []\n---\nworkloads: []\n"),
            "policy has more than one YAML document; expected one");
  // yaml-cpp 0.7's LoadAll loops forever, allocating, on these (jbeder/yaml-cpp#1040).
  EXPECT_EQ(ErrorOf(","), "YAML syntax error at line 1, column 1: unexpected character");
  EXPECT_EQ(ErrorOf("# comment\n ,- uid: a\n"),
            "YAML syntax error at line 2, column 2: unexpected character");
  EXPECT_THAT(ErrorOf("workloads: []\n---\n,\n"), HasSubstr("more than one YAML document"));
  EXPECT_EQ(ErrorOf("- a\n- b\n"),
            "policy: expected a mapping with a `workloads` list, got a list");
  EXPECT_EQ(ErrorOf("[1, 2]"), "policy: expected a mapping with a `workloads` list, got a list");
  EXPECT_EQ(ErrorOf("just some text"),
            "policy: expected a mapping with a `workloads` list, got \"just some text\"");
  EXPECT_EQ(ErrorOf("workloads: [{uid: \"\xc3\x28\", namespace: n, name: m}]"),
            "workloads[0].uid: invalid UTF-8");
  EXPECT_EQ(ErrorOf("workloads: [{? [a]: 1}]"),
            "workloads[0]: a mapping key must be a plain string");
}

TEST(ParsePolicyBundle, DuplicateKeys) {
  EXPECT_EQ(ErrorOf(R"({"workloads": [], "workloads": []})"), "workloads: duplicate key");
  EXPECT_EQ(ErrorOf(OneWorkload(R"("labels": {"a": "1", "a": "2"})")),
            "workloads[0].labels.a: duplicate key");
  EXPECT_EQ(ErrorOf("workloads:\n- uid: a\n  uid: b\n  namespace: n\n  name: m\n"),
            "workloads[0].uid: duplicate key");
}

TEST(ParsePolicyBundle, UnknownKeys) {
  EXPECT_EQ(ErrorOf(R"({"workload": []})"), "workload: unknown field");
  EXPECT_EQ(ErrorOf(OneWorkload(R"("serviceAcount": "web")")),
            "workloads[0].serviceAcount: unknown field");
  EXPECT_EQ(ErrorOf("workloads:\n- uid: u\n  namespace: n\n  name: m\n  Labels: {a: b}\n"),
            "workloads[0].Labels: unknown field");
  EXPECT_EQ(ErrorOf(R"({"workloads": [], "kind": "PolicyBundle"})"), "kind: unknown field");
}

TEST(ParsePolicyBundle, WrongTypes) {
  EXPECT_EQ(ErrorOf(OneWorkload(R"("meshed": "maybe")")),
            R"(workloads[0].meshed: expected true or false, got "maybe")");
  EXPECT_EQ(ErrorOf(OneWorkload(R"("meshed": 1)")),
            "workloads[0].meshed: expected true or false, got 1");
  EXPECT_EQ(ErrorOf(R"({"workloads": [{"uid": 42, "namespace": "ns", "name": "n"}]})"),
            "workloads[0].uid: expected a string, got 42");
  EXPECT_EQ(ErrorOf(OneWorkload(R"("node": ["a"])")),
            "workloads[0].node: expected a string, got a list");
  EXPECT_EQ(ErrorOf(OneWorkload(R"("ips": "10.0.0.1")")),
            R"(workloads[0].ips: expected a list, got "10.0.0.1")");
  EXPECT_EQ(ErrorOf(OneWorkload(R"("ips": [null])")),
            "workloads[0].ips[0]: expected a string, got null");
  EXPECT_EQ(ErrorOf(OneWorkload(R"("labels": ["a"])")),
            "workloads[0].labels: expected an object, got a list");
  EXPECT_EQ(ErrorOf(OneWorkload(R"("labels": {"tier": 3})")),
            "workloads[0].labels.tier: expected a string, got 3");
  EXPECT_EQ(ErrorOf(OneWorkload(R"("labels": {"app.kubernetes.io/name": false})")),
            R"(workloads[0].labels["app.kubernetes.io/name"]: expected a string, got false)");
  EXPECT_EQ(ErrorOf(R"({"workloads": {}})"), "workloads: expected a list, got an object");
  EXPECT_EQ(ErrorOf(R"({"workloads": ["web"]})"), R"(workloads[0]: expected an object, got "web")");
  EXPECT_EQ(ErrorOf("workloads: [{uid: u, namespace: n, name: m, ips: {a: b}}]"),
            "workloads[0].ips: expected a list, got an object");
}

TEST(ParsePolicyBundle, DeeplyNestedGarbage) {
  for (size_t depth : {33, 1000, 100000}) {
    std::string json = absl::StrCat(R"({"workloads": )", std::string(depth, '['));
    EXPECT_THAT(ErrorOf(json), HasSubstr("nested deeper than 32 levels")) << depth;
    std::string yaml =
        absl::StrCat("workloads: ", std::string(depth, '['), std::string(depth, ']'));
    EXPECT_THAT(ErrorOf(yaml), ::testing::AnyOf(HasSubstr("nested deeper than 32 levels"),
                                                StartsWith("YAML syntax error")))
        << depth;
    std::string yaml_maps = "workloads: ";
    for (size_t i = 0; i < std::min<size_t>(depth, 1000); ++i) absl::StrAppend(&yaml_maps, "{a: ");
    EXPECT_THAT(ErrorOf(yaml_maps), StartsWith("YAML syntax error"));
  }
  std::string yaml_block = "workloads:\n";
  for (int i = 0; i < 40; ++i) absl::StrAppend(&yaml_block, std::string(2 * i + 2, ' '), "- \n");
  EXPECT_THAT(ErrorOf(yaml_block), HasSubstr("nested deeper than 32 levels"));
}

TEST(ParsePolicyBundle, HugeInput) {
  std::string huge(kMaxPolicyBytes + 1, ' ');
  EXPECT_EQ(ErrorOf(huge), "policy is 16777217 bytes; at most 16777216 are allowed");
  // Just under the limit: a long comment is fine.
  std::string big = absl::StrCat("workloads: []\n#", std::string(kMaxPolicyBytes - 20, 'x'), "\n");
  EXPECT_EQ(ErrorOf(big), "OK");
}

TEST(ParsePolicyBundle, ManyWorkloads) {
  std::string yaml = "workloads:\n";
  for (int i = 0; i < 5000; ++i) {
    absl::StrAppend(&yaml, "- {uid: u", i, ", namespace: ns, name: n", i, ", ips: [10.1.", i / 256,
                    ".", i % 256, "]}\n");
  }
  EXPECT_EQ(ParseOk(yaml).workloads_size(), 5000);
}

TEST(ParsePolicyBundle, AliasesAreBudgeted) {
  // Modest reuse is fine.
  EXPECT_EQ(ParseOk("workloads:\n"
                    "- {uid: a, namespace: n, name: a, labels: &l {app: web}}\n"
                    "- {uid: b, namespace: n, name: b, labels: *l}\n")
                .workloads(1)
                .labels()
                .at("app"),
            "web");
}

TEST(ParsePolicyBundle, BillionLaughs) {
  std::string yaml = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n";
  for (int i = 1; i < 10; ++i) {
    absl::StrAppend(&yaml, "a", i, ": &a", i, " [");
    for (int k = 0; k < 9; ++k) absl::StrAppend(&yaml, k ? ", " : "", "*a", i - 1);
    absl::StrAppend(&yaml, "]\n");
  }
  EXPECT_THAT(ErrorOf(yaml), HasSubstr("YAML aliases expand to more than twice the size"));
}

TEST(ParsePolicyBundle, MutatedInputNeverCrashes) {
  // A cheap, deterministic stand-in for the fuzzer (policy_file_fuzz.cc): every mutation of the
  // valid documents gives a bundle or an InvalidArgument error.
  std::mt19937 rng(12345);
  const std::string kAlphabet = "{}[]:,\"'-?&*!|>#\n \t\\0aZ9.%@`\xff\xc3";
  for (const std::string& seed : {std::string(kJson), std::string(kYaml)}) {
    for (int round = 0; round < 3000; ++round) {
      std::string s = seed;
      const int edits = 1 + static_cast<int>(rng() % 8);
      for (int e = 0; e < edits && !s.empty(); ++e) {
        const size_t pos = rng() % s.size();
        switch (rng() % 3) {
          case 0:
            s[pos] = kAlphabet[rng() % kAlphabet.size()];
            break;
          case 1:
            s.erase(pos, 1 + rng() % 16);
            break;
          default:
            s.insert(pos, 1, kAlphabet[rng() % kAlphabet.size()]);
        }
      }
      absl::StatusOr<shunt::v1::PolicyBundle> b = ParsePolicyBundle(s);
      if (!b.ok()) {
        ASSERT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << s;
        ASSERT_FALSE(b.status().message().empty()) << s;
      }
    }
  }
}

}  // namespace
}  // namespace shunt::agent
