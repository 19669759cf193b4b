// Per-pod API cost, below the proxy: exact prices, the streaming usage readers (JSON and
// server-sent events, in any slicing), and ApiCostPolicy's pricing of one request.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "agent/cost/cost_policy.h"
#include "agent/cost/price.h"
#include "agent/cost/usage.h"

namespace shunt::agent::cost {
namespace {

constexpr Atto kE18 = Atto{1'000'000'000'000'000'000ULL};

TEST(PriceTest, DecimalStringsAreHeldExactly) {
  EXPECT_EQ(*ParsePrice("2.50"), Atto{25} * kE18 / 10);
  EXPECT_EQ(*ParsePrice("0"), Atto{0});
  EXPECT_EQ(*ParsePrice("0.000000000000000001"), Atto{1});
  EXPECT_EQ(*ParsePrice("999999999999.999999999999999999"), Atto{999999999999} * kE18 + (kE18 - 1));
  EXPECT_EQ(*ParsePrice("0000000000000001"), kE18);  // leading zeros are not digits that count
  for (const char* bad : {"", "-1", "+1", "1e3", " 1", "1 ", "1.", ".5", "1,5", "0x10",
                          "1.0000000000000000001", "1000000000000"}) {
    EXPECT_FALSE(ParsePrice(bad).ok()) << '"' << bad << '"';
  }
}

TEST(PriceTest, ARequestsCostIsRoundedOnceToANanoUnit) {
  Amount a;
  a.Add(1, *ParsePrice("0.0001"), 1);
  EXPECT_EQ(a.ToNano(), 100'000u);
  Amount tokens;  // 1000 tokens at 2.50 per million: 0.0025
  tokens.Add(1000, *ParsePrice("2.50"), 1'000'000);
  EXPECT_EQ(tokens.ToNano(), 2'500'000u);
  Amount up, down;  // 1.5 and 1.4 nano-units
  up.Add(1, *ParsePrice("0.0015"), 1'000'000);
  down.Add(1, *ParsePrice("0.0014"), 1'000'000);
  EXPECT_EQ(up.ToNano(), 2u);
  EXPECT_EQ(down.ToNano(), 1u);
  // Three terms of 0.4 nano-units each, over three denominators: 1.2, rounded once (each rounded
  // alone would make 0).
  Amount three;
  three.Add(1, *ParsePrice("0.0000000004"), 1);
  three.Add(1, *ParsePrice("0.0004"), 1'000'000);
  three.Add(1, *ParsePrice("0.4294967296"), uint64_t{1} << 30);  // 0.4 nano per byte exactly
  EXPECT_EQ(three.ToNano(), 1u);
  Amount gib;  // 3 GiB at 0.12
  gib.Add(uint64_t{3} << 30, *ParsePrice("0.12"), uint64_t{1} << 30);
  EXPECT_EQ(gib.ToNano(), 360'000'000u);
  Amount huge;  // saturates, never wraps
  huge.Add(UINT64_MAX, *ParsePrice("999999999999"), 1);
  huge.Add(UINT64_MAX, *ParsePrice("999999999999"), 1);
  EXPECT_EQ(huge.ToNano(), UINT64_MAX);
}

// Scalars seen, as "path=text" (arrays as "[]").
std::vector<std::string> Scan(const std::vector<std::string>& slices, bool* whole) {
  std::vector<std::string> seen;
  JsonScanner s([&](const std::vector<JsonScanner::Level>& path, JsonScanner::Kind,
                    std::string_view text, bool cut) {
    std::string p;
    for (const auto& l : path) p += (l.array ? "[]" : l.key) + ".";
    seen.push_back(p + "=" + std::string(text) + (cut ? "(cut)" : ""));
  });
  for (const auto& x : slices) s.Feed(x);
  *whole = s.Finish();
  return seen;
}

TEST(JsonScannerTest, ReadsWholeDocumentsInAnySlicing) {
  const std::string doc =
      R"( {"a":[1,-2.5e+3,{"b":"x\"y\u00e9"}],"c":{},"d":[],"e":true,"f":null,"g":false} )";
  bool whole = false;
  const auto expect = Scan({doc}, &whole);
  ASSERT_TRUE(whole);
  EXPECT_EQ(expect, (std::vector<std::string>{"a.[].=1", "a.[].=-2.5e+3", "a.[].b.=x\"y\xc3\xa9",
                                              "e.=true", "f.=null", "g.=false"}));
  for (size_t cut = 0; cut <= doc.size(); ++cut) {
    for (size_t cut2 = cut; cut2 <= doc.size(); cut2 += 7) {
      bool w = false;
      EXPECT_EQ(Scan({doc.substr(0, cut), doc.substr(cut, cut2 - cut), doc.substr(cut2)}, &w),
                expect)
          << cut << " " << cut2;
      EXPECT_TRUE(w);
    }
  }
  EXPECT_EQ(Scan({"42"}, &whole), std::vector<std::string>{"=42"});  // a root number at the end
  EXPECT_TRUE(whole);
}

TEST(JsonScannerTest, RefusesWhatIsNotJson) {
  for (const char* bad : {"{\"a\":1,}", "[1,]", "{\"a\" 1}", "{'a':1}", "01", "1.", "-", "tru",
                          "{\"a\":\"x\ny\"}", "{\"a\":1}}", "{\"a\":1} 2", "\"\\x\"", "{",
                          "{\"a\":nul}", "[1 2]", "\"\\u12G4\""}) {
    bool whole = true;
    Scan({bad}, &whole);
    EXPECT_FALSE(whole) << bad;
  }
  for (const char* bad : {"[[[[", "[\"]\"", "[1]]", "-01", "1.e5", "1e", "1e+", "--1"}) {
    bool whole = true;
    Scan({bad}, &whole);
    EXPECT_FALSE(whole) << bad;
  }
}

TEST(JsonScannerTest, LongKeysAndStringsAreCutNotKept) {
  const std::string long_key(1000, 'k'), long_value(100000, 'v');
  bool whole = false;
  const auto seen = Scan({"{\"" + long_key + "\":\"" + long_value + "\"}"}, &whole);
  ASSERT_TRUE(whole);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], "." "=" + std::string(JsonScanner::kMaxString, 'v') + "(cut)");
}

// A body read whole, in the slices given (a reader calls back into itself: made in place).
class Body : public UsageReader {
 public:
  Body(Format f, const std::vector<std::string>& slices) : UsageReader(f) {
    for (const auto& s : slices) Feed(s);
    Finish();
  }
};

// What is deeper than kMaxDepth, or longer than a cap, is skipped or cut, never an error: the
// usage after it still counts (a Responses API body echoes the client's tool schemas, which may
// be that deep; an Anthropic tool_use input is output the client can steer).
TEST(JsonScannerTest, DeepContainersAndLongNumbersAreSkippedNotFailed) {
  std::string deep = "{\"tools\":" + std::string(200, '[') + "{\"a\":\"]}\\\"[\"}" +
                     std::string(200, ']') + ",\"n\":" + std::string(100, '7') +
                     ",\"usage\":{\"prompt_tokens\":5}}";
  bool whole = false;
  const auto seen = Scan({deep}, &whole);
  EXPECT_TRUE(whole);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0], "n.=" + std::string(32, '7') + "(cut)");
  EXPECT_EQ(seen[1], "usage.prompt_tokens.=5");
  Body r(UsageReader::Format::kJson, {deep});
  EXPECT_EQ(r.usage().input, 5u);
  std::string ok_deep(64, '[');
  ok_deep += std::string(64, ']');
  Scan({ok_deep}, &whole);
  EXPECT_TRUE(whole);
}

TEST(UsageReaderTest, OpenAiChatCompletionJson) {
  const std::string body = R"({"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-2024-08-06",
    "choices":[{"index":0,"message":{"role":"assistant","content":"{\"usage\":{\"prompt_tokens\":9}}"}}],
    "usage":{"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500,
             "prompt_tokens_details":{"cached_tokens":200,"audio_tokens":0},
             "completion_tokens_details":{"reasoning_tokens":120}}})";
  for (size_t cut = 0; cut <= body.size(); ++cut) {
    Body r(UsageReader::Format::kJson, {body.substr(0, cut), body.substr(cut)});
    ASSERT_EQ(r.documents(), 1u) << cut;
    EXPECT_EQ(r.model(), "gpt-4o-2024-08-06");
    EXPECT_EQ(r.usage().input, 1000u);
    EXPECT_EQ(r.usage().input_cached, 200u);
    EXPECT_EQ(r.usage().output, 500u);
    EXPECT_EQ(r.usage().reasoning, 120u);
  }
  Body r(UsageReader::Format::kJson, {body});
  const Usage::Billable b = r.usage().Bill(/*reasoning_apart=*/true);
  EXPECT_EQ(b.input, 800u);
  EXPECT_EQ(b.cached_input, 200u);
  EXPECT_EQ(b.output, 380u);
  EXPECT_EQ(b.reasoning, 120u);
  EXPECT_EQ(r.usage().Bill(false).output, 500u);
}

TEST(UsageReaderTest, OpenAiStreamKeepsTheFinalChunksUsageAlsoWithChoices) {
  // The final chunk carries choices and usage together (LiteLLM #36168 lost it): it counts.
  const std::string stream =
      "data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],"
      "\"usage\":null}\n\n"
      ": a comment\r\n"
      "event: ignored\r\n"
      "data: {\"id\":\"c\",\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{},\"finish_reason\":"
      "\"stop\"}],\r\n"
      "data: \"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7,"
      "\"prompt_tokens_details\":{\"cached_tokens\":4}}}\r\n\r\n"
      "data: [DONE]\r\r";
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    Body r(UsageReader::Format::kEventStream, {stream.substr(0, cut), stream.substr(cut)});
    EXPECT_EQ(r.documents(), 2u) << cut;
    EXPECT_EQ(r.bad_documents(), 0u) << cut;
    EXPECT_TRUE(r.done()) << cut;
    EXPECT_EQ(r.usage().input, 12u) << cut;
    EXPECT_EQ(r.usage().input_cached, 4u) << cut;
    EXPECT_EQ(r.usage().output, 7u) << cut;
    EXPECT_EQ(r.model(), "gpt-4o");
  }
}

TEST(UsageReaderTest, AnthropicMessageDeltaSetsTheCountItDoesNotAdd) {
  const std::string stream =
      "event: message_start\n"
      "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\","
      "\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":25,\"cache_creation_input_"
      "tokens\":300,\"cache_read_input_tokens\":1000,\"output_tokens\":1}}}\n\n"
      "event: content_block_delta\n"
      "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
      "\"text\":\"usage\"}}\n\n"
      "event: message_delta\n"
      "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},"
      "\"usage\":{\"output_tokens\":15}}\n\n"
      "event: message_delta\n"
      "data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":42}}\n\n"
      "event: message_stop\n"
      "data: {\"type\":\"message_stop\"}\n\n";
  for (size_t cut = 0; cut <= stream.size(); cut += 3) {
    Body r(UsageReader::Format::kEventStream, {stream.substr(0, cut), stream.substr(cut)});
    EXPECT_EQ(r.documents(), 5u);
    EXPECT_EQ(r.model(), "claude-sonnet-4-5");
    EXPECT_EQ(r.usage().input, 25u);
    EXPECT_EQ(r.usage().cache_read, 1000u);
    EXPECT_EQ(r.usage().cache_creation, 300u);
    EXPECT_EQ(r.usage().output, 42u) << "cumulative: the last one, not 1 + 15 + 42";
    const Usage::Billable b = r.usage().Bill(false);
    EXPECT_EQ(b.input, 25u);
    EXPECT_EQ(b.cached_input, 1000u);
    EXPECT_EQ(b.cache_creation, 300u);
    EXPECT_EQ(b.output, 42u);
  }
}

TEST(UsageReaderTest, ResponsesApiStreamAndAnthropicJson) {
  const std::string responses =
      "event: response.created\n"
      "data: {\"type\":\"response.created\",\"response\":{\"model\":\"o3-mini\",\"usage\":null}}\n"
      "\n"
      "event: response.completed\n"
      "data: {\"type\":\"response.completed\",\"response\":{\"model\":\"o3-mini\",\"usage\":{"
      "\"input_tokens\":300,\"input_tokens_details\":{\"cached_tokens\":100},\"output_tokens\":"
      "90,\"output_tokens_details\":{\"reasoning_tokens\":64},\"total_tokens\":390}}}\n\n";
  Body r(UsageReader::Format::kEventStream, {responses});
  EXPECT_EQ(r.model(), "o3-mini");
  EXPECT_EQ(r.usage().Bill(true).input, 200u);
  EXPECT_EQ(r.usage().Bill(true).cached_input, 100u);
  EXPECT_EQ(r.usage().Bill(true).output, 26u);
  EXPECT_EQ(r.usage().Bill(true).reasoning, 64u);
  Body a(UsageReader::Format::kJson,
                       {R"({"id":"msg","type":"message","model":"claude-haiku-4-5","content":[],
                           "usage":{"input_tokens":10,"output_tokens":20}})"});
  EXPECT_EQ(a.usage().input, 10u);
  EXPECT_EQ(a.usage().output, 20u);
  EXPECT_FALSE(a.usage().cache_read.has_value());
}

TEST(UsageReaderTest, ADocumentThatDoesNotParseWholeGivesNothing) {
  // Cut in the middle (the stream broke): the usage before the cut is not taken.
  Body cut(UsageReader::Format::kJson, {R"({"usage":{"prompt_tokens":5},"x":)"});
  EXPECT_FALSE(cut.usage().any());
  EXPECT_EQ(cut.bad_documents(), 1u);
  Body sse(UsageReader::Format::kEventStream,
                         {"data: {\"usage\":{\"prompt_tokens\":5}}\n\n"
                          "data: {\"usage\":{\"prompt_tokens\":7},}\n\n"
                          "data: not json\n\n"});
  EXPECT_EQ(sse.usage().input, 5u);
  EXPECT_EQ(sse.documents(), 2u) << "the first, and the last (no usage in it: not parsed)";
  EXPECT_EQ(sse.bad_documents(), 1u);
  // Usage found only where it is: not inside an array, not deeper than the API puts it, not a
  // fraction or a negative number.
  Body elsewhere(UsageReader::Format::kJson,
                               {R"({"choices":[{"usage":{"prompt_tokens":1}}],
                                   "data":{"usage":{"prompt_tokens":2}},
                                   "usage":{"completion_tokens":1.5,"prompt_tokens":-3}})"});
  EXPECT_EQ(elsewhere.documents(), 1u);
  EXPECT_FALSE(elsewhere.usage().any());
  Body empty(UsageReader::Format::kJson, {});
  EXPECT_EQ(empty.bad_documents(), 0u) << "no body: nothing to count";
}

TEST(UsageReaderTest, AByteOrderMarkAndADoneWithSpacesAreRead) {
  Body r(UsageReader::Format::kEventStream,
         {"\xEF\xBB", "\xBF" "data: {\"usage\":{\"prompt_tokens\":3}}\n\ndata: [DONE]  \n\n"});
  EXPECT_EQ(r.usage().input, 3u);
  EXPECT_TRUE(r.done());
  EXPECT_EQ(r.bad_documents(), 0u);
}

TEST(RequestReaderTest, ModelAndStream) {
  RequestReader r;
  r.Feed(R"({"messages":[{"role":"user","content":"model"}],"model":"gpt-4o","stre)");
  r.Feed(R"(am":true,"stream_options":{"include_usage":true}})");
  r.Finish();
  EXPECT_TRUE(r.whole());
  EXPECT_EQ(r.model(), "gpt-4o");
  EXPECT_TRUE(r.stream());
}

shunt::v1::ApiCostPolicy Example() {
  shunt::v1::ApiCostPolicy p;
  p.set_namespace_("shop");
  p.set_name("llm-prices");
  p.set_service("llm-gateway");
  p.set_currency("USD");
  auto* e = p.add_routes();
  e->set_name("embeddings");
  e->set_method("POST");
  e->set_path_prefix("/v1/embeddings");
  e->set_per_request("0.0001");
  auto* chat = p.add_routes();
  chat->set_name("chat");
  chat->set_method("POST");
  chat->set_path_prefix("/v1/chat/completions");
  chat->set_per_gib_response("0.12");
  auto* g = p.add_routes();
  g->set_name("get-book");
  g->set_grpc_method("/library.Library/GetBook");
  g->set_per_request("0.000002");
  auto* m = p.add_models();
  m->set_model("gpt-4o");
  m->set_per_million_input("2.50");
  m->set_per_million_cached_input("1.25");
  m->set_per_million_output("10.00");
  auto* o = p.add_models();
  o->set_model("o3-mini");
  o->set_per_million_input("1.10");
  o->set_per_million_output("4.40");
  o->set_per_million_reasoning("8.80");
  return p;
}

TEST(CostPolicyTest, PricesRoutesAndTokensExactly) {
  auto policy = CostPolicy::Compile(Example());
  ASSERT_TRUE(policy.ok()) << policy.status();
  Body r(UsageReader::Format::kJson,
                       {R"({"model":"gpt-4o-2024-08-06","usage":{"prompt_tokens":1000,
                           "completion_tokens":500,"prompt_tokens_details":{"cached_tokens":200}}})"});
  ExchangeFacts f{.method = "POST", .path = "/v1/chat/completions", .status = 200,
                  .request_bytes = 300, .response_bytes = 1024, .request_model = "gpt-4o",
                  .response = &r};
  Charge c = policy->Price(f);
  EXPECT_EQ(c.route, "chat");
  EXPECT_EQ(c.model, "gpt-4o");
  EXPECT_EQ(c.result, CostResult::kPriced);
  // 800 * 2.50/M + 200 * 1.25/M + 500 * 10/M = 0.00725; + 1024 B * 0.12/GiB = 114.44 nano.
  EXPECT_EQ(c.nano, 7'250'000u + 114u);
  // The model the request named wins; the response's is used when the request named none.
  f.request_model = "";
  EXPECT_EQ(policy->Price(f).model, "other") << "gpt-4o-2024-08-06 is not listed";
  EXPECT_EQ(policy->Price(f).result, CostResult::kUnpriced);
  EXPECT_EQ(policy->Price(f).nano, 114u) << "its route price, nothing for the tokens";

  // Reasoning at its own price; the rest of the output at the output price.
  Body o(UsageReader::Format::kJson,
                       {R"({"usage":{"prompt_tokens":100,"completion_tokens":100,
                           "completion_tokens_details":{"reasoning_tokens":60}}})"});
  ExchangeFacts fo{.method = "POST", .path = "/v1/responses", .status = 200,
                   .request_model = "o3-mini", .response = &o};
  c = policy->Price(fo);
  EXPECT_EQ(c.route, "other");
  EXPECT_EQ(c.nano, 110'000u + 176'000u + 528'000u);  // 100*1.10 + 40*4.40 + 60*8.80 (/M)

  // Failed: the route price only. Missing usage: counted, never guessed.
  Body none(UsageReader::Format::kJson, {R"({"data":[{"embedding":[0.1]}]})"});
  ExchangeFacts fe{.method = "POST", .path = "/v1/embeddings", .status = 500,
                   .request_model = "gpt-4o", .response = &none};
  c = policy->Price(fe);
  EXPECT_EQ(c.result, CostResult::kFailed);
  EXPECT_EQ(c.nano, 100'000u);
  fe.status = 200;
  c = policy->Price(fe);
  EXPECT_EQ(c.result, CostResult::kUsageMissing);
  EXPECT_EQ(c.nano, 100'000u);
  // Not a token request (no model named, no usage): the route's price, priced.
  ExchangeFacts plain{.method = "GET", .path = "/v1/embeddings", .status = 200};
  c = policy->Price(plain);
  EXPECT_EQ(c.route, "other") << "the route is POST only";
  EXPECT_EQ(c.model, "");
  EXPECT_EQ(c.result, CostResult::kPriced);
  EXPECT_EQ(c.nano, 0u);
  // gRPC: by method; a non-zero grpc-status is a failure.
  ExchangeFacts rpc{.method = "POST", .path = "/library.Library/GetBook", .grpc = true,
                    .status = 200, .grpc_status = 0};
  EXPECT_EQ(policy->Price(rpc).route, "get-book");
  EXPECT_EQ(policy->Price(rpc).nano, 2'000u);
  rpc.grpc_status = 14;
  EXPECT_EQ(policy->Price(rpc).result, CostResult::kFailed);
}

TEST(CostPolicyTest, ADefaultModelPricesUnlistedModelsUnderOther) {
  shunt::v1::ApiCostPolicy p = Example();
  p.mutable_default_model()->set_per_million_input("1");
  p.mutable_default_model()->set_per_million_output("4");
  auto policy = CostPolicy::Compile(p);
  ASSERT_TRUE(policy.ok());
  Body r(UsageReader::Format::kJson,
                       {R"({"usage":{"input_tokens":10,"cache_read_input_tokens":1000,
                           "cache_creation_input_tokens":100,"output_tokens":5}})"});
  ExchangeFacts f{.method = "POST", .path = "/v1/messages", .status = 200,
                  .request_model = "claude-x", .response = &r};
  const Charge c = policy->Price(f);
  EXPECT_EQ(c.model, "other");
  EXPECT_EQ(c.result, CostResult::kPriced);
  // Cache reads and writes without prices of their own: at the input price (1/M); output 4/M.
  EXPECT_EQ(c.nano, 10'000u + 1'000'000u + 100'000u + 20'000u);
}

TEST(CostPolicyTest, RefusesAPriceThatIsNotADecimal) {
  shunt::v1::ApiCostPolicy p = Example();
  p.mutable_models(0)->set_per_million_output("1e3");
  EXPECT_FALSE(CostPolicy::Compile(p).ok());
}

}  // namespace
}  // namespace shunt::agent::cost

#include <zlib.h>

#include "agent/cost/cost_observer.h"

namespace shunt::agent::cost {
namespace {

std::string Gzip(const std::string& in) {
  z_stream z{};
  EXPECT_EQ(deflateInit2(&z, 6, Z_DEFLATED, MAX_WBITS + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(compressBound(in.size()) + 64, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

// The proxy's reader of one exchange: the request's model, the response decoded (gzip in any
// slicing), media types and encodings it does not read counted as such.
TEST(CostObserverTest, ReadsTheModelAndTheUsageThroughGzip) {
  auto policy = CostPolicy::Compile(Example());
  ASSERT_TRUE(policy.ok());
  auto shared = std::make_shared<const CostPolicy>(std::move(*policy));
  const std::string body =
      R"({"model":"gpt-4o-2024-08-06","usage":{"prompt_tokens":1000,"completion_tokens":500,
          "prompt_tokens_details":{"cached_tokens":200}}})";
  const std::string gz = Gzip(body + std::string(100000, ' '));  // more than one inflate buffer
  ExchangeRecord r;
  r.request = {.method = "POST", .path = "/v1/chat/completions", .authority = "llm"};
  r.status = 200;
  r.response_bytes = gz.size();
  for (size_t step : {size_t{1}, size_t{7}, gz.size()}) {
    CostObserver o(shared);
    o.RequestBody(R"({"model":)");
    o.RequestBody(R"("gpt-4o","messages":[]})");
    o.ResponseHead(200, "Application/JSON; charset=utf-8", "gzip");
    for (size_t i = 0; i < gz.size(); i += step) o.ResponseBody(std::string_view(gz).substr(i, step));
    const Charge c = o.Finish(r);
    EXPECT_EQ(c.result, CostResult::kPriced) << step;
    EXPECT_EQ(c.model, "gpt-4o");
    EXPECT_EQ(c.tokens.input, 800u);
    EXPECT_EQ(c.nano, 7'250'000u + (gz.size() * 120'000'000ull * 2 + (1ull << 30)) / (1ull << 31))
        << "tokens and 0.12 per GiB of the body as it went, rounded once";
    EXPECT_EQ(o.unread(), "");
  }
  for (const auto& [type, encoding, why] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"text/html", "", "media_type"}, {"application/json", "br", "encoding"}}) {
    CostObserver o(shared);
    o.RequestBody(R"({"model":"gpt-4o"})");
    o.ResponseHead(200, type, encoding);
    o.ResponseBody(body);
    const Charge c = o.Finish(r);
    EXPECT_EQ(c.result, CostResult::kUsageMissing) << type << " " << encoding;
    EXPECT_EQ(o.unread(), why);
  }
  // A request body that does not parse whole is not believed (it may name two models, and the
  // upstream's reading is not known): the response's model prices it.
  {
    CostObserver o(shared);
    o.RequestBody(R"({"model":"o3-mini","x":NaN,"model":"gpt-4o"})");
    o.ResponseHead(200, "application/json", "");
    o.ResponseBody(R"({"model":"gpt-4o","usage":{"prompt_tokens":1000000}})");
    ExchangeRecord plain = r;
    plain.response_bytes = 0;
    const Charge c = o.Finish(plain);
    EXPECT_EQ(c.model, "gpt-4o");
    EXPECT_EQ(c.nano, 2'500'000'000u) << "1M input at 2.50 (not o3-mini's 1.10)";
  }
  CostObserver bad(shared);  // not gzip at all
  bad.RequestBody(R"({"model":"gpt-4o"})");
  bad.ResponseHead(200, "application/json", "gzip");
  bad.ResponseBody(body);
  EXPECT_EQ(bad.Finish(r).result, CostResult::kUsageMissing);
  EXPECT_EQ(bad.unread(), "encoding");
}

}  // namespace
}  // namespace shunt::agent::cost
