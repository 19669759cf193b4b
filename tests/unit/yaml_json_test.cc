#include "common/yaml_json.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shunt {
namespace {

using Json = nlohmann::json;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::vector<Json> DocsOk(absl::string_view text, const YamlLimits& limits = {}) {
  absl::StatusOr<std::vector<Json>> docs = YamlDocumentsToJson(text, limits);
  EXPECT_TRUE(docs.ok()) << docs.status();
  return docs.ok() ? *docs : std::vector<Json>{};
}

absl::Status ErrorOf(absl::string_view text, const YamlLimits& limits = {}) {
  absl::StatusOr<std::vector<Json>> docs = YamlDocumentsToJson(text, limits);
  EXPECT_FALSE(docs.ok()) << "parsed: " << (docs.ok() ? Json(*docs).dump() : "");
  return docs.status();
}

std::string MessageOf(absl::string_view text, const YamlLimits& limits = {}) {
  return std::string(ErrorOf(text, limits).message());
}

// yaml-cpp 0.7's LoadAll() never returns on these (jbeder/yaml-cpp#1040).
TEST(YamlDocumentsToJson, InputsThatHangLoadAllAreSyntaxErrors) {
  absl::Status s = ErrorOf(",");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(std::string(s.message()),
            "YAML syntax error at line 1, column 1: unexpected character");
  EXPECT_EQ(MessageOf(" ,- a"), "YAML syntax error at line 1, column 2: unexpected character");
  EXPECT_EQ(MessageOf("# comment\n ,- uid: a\n"),
            "YAML syntax error at line 2, column 2: unexpected character");
  EXPECT_THAT(MessageOf("a: 1\n---\n,\n"), StartsWith("YAML syntax error at line 3"));
  for (const char* text : {",,", "[a],", "- a\n,", "]", "}", ",\n---\n,"}) {
    EXPECT_FALSE(YamlDocumentsToJson(text, {}).ok()) << text;
  }
}

TEST(YamlDocumentsToJson, MultipleDocuments) {
  std::vector<Json> docs = DocsOk("a: 1\n---\nb: 2\n---\n- x\n- y\n");
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0], Json({{"a", 1}}));
  EXPECT_EQ(docs[1], Json({{"b", 2}}));
  EXPECT_EQ(docs[2], Json({"x", "y"}));
  // A leading separator, document end markers, and a separator at the end.
  docs = DocsOk("---\na: 1\n...\n---\nb: 2\n---\n");
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[1], Json({{"b", 2}}));
  EXPECT_EQ(DocsOk("--- {a: 1}\n--- [1]\n").size(), 2u);
}

TEST(YamlDocumentsToJson, EmptyAndCommentOnlyDocumentsAreSkipped) {
  EXPECT_TRUE(DocsOk("").empty());
  EXPECT_TRUE(DocsOk(" \n\t\n").empty());
  EXPECT_TRUE(DocsOk("# nothing\n").empty());
  EXPECT_TRUE(DocsOk("---\n---\n# only a comment\n---\n").empty());
  EXPECT_TRUE(DocsOk("~\n---\nnull\n").empty());
  std::vector<Json> docs = DocsOk("# header\n---\n# c\n---\na: 1\n---\n# trailer\n");
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_EQ(docs[0], Json({{"a", 1}}));
}

TEST(YamlDocumentsToJson, AnchorsAndAliases) {
  std::vector<Json> docs = DocsOk(
      "base: &labels {app: web, tier: \"1\"}\n"
      "copy: *labels\n"
      "list: [&n 5, *n]\n");
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_EQ(docs[0]["copy"], docs[0]["base"]);
  EXPECT_EQ(docs[0]["copy"]["tier"], "1");
  EXPECT_EQ(docs[0]["list"], Json({5, 5}));
  // Anchors belong to their document.
  EXPECT_THAT(MessageOf("a: &x 1\n---\nb: *x\n"), StartsWith("YAML syntax error"));
  // An alias of the node it is in.
  EXPECT_FALSE(YamlDocumentsToJson("&a [*a]", {}).ok());
}

TEST(YamlDocumentsToJson, BillionLaughsIsAnError) {
  std::string yaml = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i < 10; ++i) {
    absl::StrAppend(&yaml, "a", i, ": &a", i, " [", std::string("*a") + std::to_string(i - 1));
    for (int k = 0; k < 9; ++k) absl::StrAppend(&yaml, ", *a", i - 1);
    absl::StrAppend(&yaml, "]\n");
  }
  EXPECT_THAT(MessageOf(yaml), HasSubstr("YAML aliases expand to more than twice"));
  YamlLimits limits;
  limits.max_expanded = 100;
  EXPECT_THAT(MessageOf("a: &a [x, x, x, x, x]\nb: [*a, *a, *a, *a, *a, *a, *a, *a]\n", limits),
              HasSubstr("more than 100 nodes and bytes"));
}

TEST(YamlDocumentsToJson, TypedScalarsFollowTheCoreSchema) {
  std::vector<Json> docs = DocsOk(
      "int: 42\nneg: -7\nbig: 18446744073709551615\nhex: 0x1F\noct: 0o17\nfloat: 1.5\n"
      "exp: 1e3\nt: true\nf: False\nn: null\ntilde: ~\nempty:\nquoted: \"42\"\n"
      "single: 'true'\nyes: yes\nversion: 1.10.2\ninf: .inf\nstr: hello\n80: port\n");
  ASSERT_EQ(docs.size(), 1u);
  const Json& d = docs[0];
  EXPECT_EQ(d["int"], 42);
  EXPECT_TRUE(d["int"].is_number_integer());
  EXPECT_EQ(d["neg"], -7);
  EXPECT_EQ(d["big"].get<uint64_t>(), 18446744073709551615u);
  EXPECT_EQ(d["hex"], 31);
  EXPECT_EQ(d["oct"], 15);
  EXPECT_EQ(d["float"], 1.5);
  EXPECT_EQ(d["exp"], 1000.0);
  EXPECT_EQ(d["t"], true);
  EXPECT_EQ(d["f"], false);
  EXPECT_TRUE(d["n"].is_null());
  EXPECT_TRUE(d["tilde"].is_null());
  EXPECT_TRUE(d["empty"].is_null());
  EXPECT_EQ(d["quoted"], "42");
  EXPECT_EQ(d["single"], "true");
  EXPECT_EQ(d["yes"], "yes");  // YAML 1.2: not a bool
  EXPECT_EQ(d["version"], "1.10.2");
  EXPECT_EQ(d["inf"], ".inf");
  EXPECT_EQ(d["str"], "hello");
  EXPECT_EQ(d["80"], "port");  // keys stay strings
}

TEST(YamlDocumentsToJson, UntypedScalarsStayStrings) {
  YamlLimits limits;
  limits.typed_scalars = false;
  std::vector<Json> docs = DocsOk("a: 1\nb: true\nc: 1.10\nd: null\ne: \"x\"\n", limits);
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_EQ(docs[0], Json({{"a", "1"}, {"b", "true"}, {"c", "1.10"}, {"d", nullptr}, {"e", "x"}}));
}

TEST(YamlDocumentsToJson, JsonIsYaml) {
  std::vector<Json> docs =
      DocsOk("{\n\t\"a\": [1, 2.5, \"x\", true, null],\n\t\"b\": {\"c\": \"\\u00e9\"}\n}\n");
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_EQ(docs[0]["a"], Json({1, 2.5, "x", true, nullptr}));
  EXPECT_EQ(docs[0]["b"]["c"], "\xc3\xa9");
}

TEST(YamlDocumentsToJson, Limits) {
  YamlLimits limits;
  limits.max_documents = 2;
  EXPECT_EQ(DocsOk("a: 1\n---\nb: 2\n", limits).size(), 2u);
  absl::Status s = ErrorOf("a: 1\n---\nb: 2\n---\nc: 3\n", limits);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(std::string(s.message()), "more than 2 YAML documents");

  limits = {};
  limits.max_bytes = 10;
  s = ErrorOf("a: 12345678901\n", limits);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);

  limits = {};
  limits.max_depth = 3;
  EXPECT_EQ(DocsOk("a: {b: [1]}\n", limits).size(), 1u);
  EXPECT_EQ(MessageOf("a: {b: [[1]]}\n", limits), "document 1: a.b: nested deeper than 3 levels");
  std::string block;
  for (int i = 0; i < 70; ++i) absl::StrAppend(&block, std::string(2 * i, ' '), "- \n");
  EXPECT_THAT(MessageOf(block), HasSubstr("nested deeper than 64 levels"));
  EXPECT_FALSE(YamlDocumentsToJson(std::string(100000, '['), {}).ok());
}

TEST(YamlDocumentsToJson, ErrorsNameTheDocumentAndPath) {
  EXPECT_EQ(MessageOf("a: 1\n---\nb:\n  c: 1\n  c: 2\n"), "document 2: b.c: duplicate key");
  // Empty documents are not counted: the number is the index in the result, from 1.
  EXPECT_EQ(MessageOf("---\n# c\n---\nx: [1, \"\xc3\x28\"]\n"), "document 1: x[1]: invalid UTF-8");
  EXPECT_EQ(MessageOf("a: {? [k]: 1}\n"), "document 1: a: a mapping key must be a plain string");
  YamlLimits one;
  one.max_documents = 1;
  EXPECT_EQ(MessageOf("b: {c: 1, c: 2}\n", one), "b.c: duplicate key");
  EXPECT_THAT(MessageOf("a: [1, 2\n"), StartsWith("YAML syntax error at line"));
}

TEST(YamlDocumentsToJson, CrlfLineEndings) {
  std::vector<Json> docs = DocsOk("a: 1\r\nb:\r\n  - x\r\n---\r\nc: \"d\"\r\n");
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0], Json({{"a", 1}, {"b", {"x"}}}));
  EXPECT_EQ(docs[1], Json({{"c", "d"}}));
}

TEST(YamlDocumentsToJson, ByteOrderMarkIsSkipped) {
  std::vector<Json> docs = DocsOk(
      "\xEF\xBB\xBF"
      "a: 1\n");
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_EQ(docs[0], Json({{"a", 1}}));
}

TEST(YamlDocumentsToJson, GarbageNeverCrashesOrHangs) {
  const std::string seed = "a: &x [1, {b: *x}]\n---\n- 'q'\n- \"\\u0041\"\n? c\n: d\n";
  for (size_t i = 0; i < seed.size(); ++i) {
    for (char c : std::string(",[]{}:-?&*!|>'\"#%@`\n\t ")) {
      std::string text = seed;
      text[i] = c;
      (void)YamlDocumentsToJson(text, {});
      text.insert(i, 1, c);
      (void)YamlDocumentsToJson(text, {});
    }
  }
}

TEST(JsonPath, Formats) {
  JsonPath path("spec");
  EXPECT_EQ(path.ToString(), "spec");
  path.PushKey("spec");
  path.PushKey("rules");
  path.PushIndex(0);
  path.PushKey("app.kubernetes.io/name");
  EXPECT_EQ(path.ToString(), R"(spec.rules[0]["app.kubernetes.io/name"])");
  path.Pop();
  {
    JsonPathScope scope(path, "weight");
    EXPECT_EQ(std::string(path.Error("must be <= 1000000").message()),
              "spec.rules[0].weight: must be <= 1000000");
  }
  EXPECT_EQ(path.ToString(), "spec.rules[0]");
}

TEST(IsValidUtf8, Basics) {
  EXPECT_TRUE(IsValidUtf8("plain \xc3\xa9 \xf0\x9f\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("\xc3\x28"));
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));  // surrogate
  EXPECT_FALSE(IsValidUtf8("\xc0\xaf"));      // overlong
}

}  // namespace
}  // namespace shunt
