#include "agent/metrics/request_metrics.h"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>

#include "agent/capture/capture_reconciler.h"
#include "agent/metrics/cost_metrics.h"
#include "prometheus/text_serializer.h"
#include "tests/unit/metric_families.h"

namespace shunt::agent::metrics {
namespace {

RequestKey Key(std::string source, int code) {
  RequestKey k;
  k.source_namespace = "default";
  k.source_workload = std::move(source);
  k.destination_namespace = "shop";
  k.destination_workload = "cart";
  k.destination_pod = "cart-1";
  k.service_namespace = "shop";
  k.service_name = "cart";
  k.response_code = code;
  return k;
}

ExchangeRecord Exchange(absl::Duration took, uint64_t in, uint64_t out) {
  ExchangeRecord r;
  r.start = absl::FromUnixSeconds(1000);
  r.end = r.start + took;
  r.request_bytes = in;
  r.response_bytes = out;
  return r;
}

using families_test::Find;
using families_test::LabelsOf;

TEST(RequestMetrics, CountsBytesAndDurationsPerSourceDestinationAndResponse) {
  RequestMetrics m(100, /*istio=*/false);
  m.Record(Key("web", 200), Exchange(absl::Milliseconds(3), 10, 1000));
  m.Record(Key("web", 200), Exchange(absl::Milliseconds(40), 20, 2000));
  m.Record(Key("web", 403), Exchange(absl::Microseconds(100), 0, 14));
  const auto fs = m.Collect();
  const auto* requests = Find(fs, "shunt_requests_total");
  ASSERT_NE(requests, nullptr);
  ASSERT_EQ(requests->metric.size(), 2u);
  // Sorted by key: 200 before 403.
  EXPECT_EQ(requests->metric[0].counter.value, 2);
  EXPECT_EQ(requests->metric[1].counter.value, 1);
  auto l = LabelsOf(requests->metric[0]);
  EXPECT_EQ(l["reporter"], "destination");
  EXPECT_EQ(l["source_workload"], "web");
  EXPECT_EQ(l["source_workload_namespace"], "default");
  EXPECT_EQ(l["destination_workload"], "cart");
  EXPECT_EQ(l["destination_service_name"], "cart");
  EXPECT_EQ(l["request_protocol"], "http");
  EXPECT_EQ(l["response_code"], "200");
  EXPECT_EQ(l["grpc_response_status"], "");
  EXPECT_EQ(Find(fs, "shunt_request_bytes_total")->metric[0].counter.value, 30);
  EXPECT_EQ(Find(fs, "shunt_response_bytes_total")->metric[0].counter.value, 3000);
  const auto& h = Find(fs, "shunt_request_duration_seconds")->metric[0].histogram;
  EXPECT_EQ(h.sample_count, 2u);
  EXPECT_NEAR(h.sample_sum, 0.043, 1e-9);
  // 3 ms in (0.0025, 0.005], 40 ms in (0.025, 0.05]: cumulative counts.
  std::map<double, uint64_t> cumulative;
  for (const auto& b : h.bucket) cumulative[b.upper_bound] = b.cumulative_count;
  EXPECT_EQ(cumulative[0.0025], 0u);
  EXPECT_EQ(cumulative[0.005], 1u);
  EXPECT_EQ(cumulative[0.025], 1u);
  EXPECT_EQ(cumulative[0.05], 2u);
  EXPECT_EQ(cumulative[std::numeric_limits<double>::infinity()], 2u);
  EXPECT_EQ(Find(fs, "istio_requests_total"), nullptr) << "only with --istio-metrics";
}

TEST(RequestMetrics, IstioNamesUnitsAndLabelsWhenAsked) {
  RequestMetrics m(100, /*istio=*/true);
  RequestKey k = Key("", 200);  // a source the workload table does not know
  k.source_namespace = "";
  k.grpc = true;
  k.grpc_status = 7;
  m.Record(k, Exchange(absl::Milliseconds(7), 5, 600));
  const auto fs = m.Collect();
  const auto* requests = Find(fs, "istio_requests_total");
  ASSERT_NE(requests, nullptr);
  auto l = LabelsOf(requests->metric.at(0));
  EXPECT_EQ(l["source_workload"], "unknown");
  EXPECT_EQ(l["destination_service"], "cart.shop.svc.cluster.local");
  EXPECT_EQ(l["request_protocol"], "grpc");
  EXPECT_EQ(l["grpc_response_status"], "7");
  const auto& ms = Find(fs, "istio_request_duration_milliseconds")->metric.at(0).histogram;
  EXPECT_NEAR(ms.sample_sum, 7, 1e-9);
  std::map<double, uint64_t> cumulative;
  for (const auto& b : ms.bucket) cumulative[b.upper_bound] = b.cumulative_count;
  EXPECT_EQ(cumulative[5], 0u);
  EXPECT_EQ(cumulative[10], 1u);
  const auto& bytes = Find(fs, "istio_response_bytes")->metric.at(0).histogram;
  EXPECT_EQ(bytes.sample_sum, 600);
  cumulative.clear();
  for (const auto& b : bytes.bucket) cumulative[b.upper_bound] = b.cumulative_count;
  EXPECT_EQ(cumulative[500], 0u);
  EXPECT_EQ(cumulative[1000], 1u);
}

TEST(RequestMetrics, BeyondTheCapLabelSetsFoldIntoOtherAndAreCounted) {
  RequestMetrics m(3, false);
  for (int i = 0; i < 10; ++i) m.Record(Key("w" + std::to_string(i), 200), Exchange({}, 1, 1));
  EXPECT_EQ(m.folded(), 7u);
  const auto fs = m.Collect();
  const auto* requests = Find(fs, "shunt_requests_total");
  ASSERT_EQ(requests->metric.size(), 4u) << "three, then one for all the others";
  double total = 0;
  bool other = false;
  for (const auto& s : requests->metric) {
    total += s.counter.value;
    if (LabelsOf(s)["source_workload"] == "other") {
      other = true;
      EXPECT_EQ(s.counter.value, 7);
    }
  }
  EXPECT_TRUE(other);
  EXPECT_EQ(total, 10) << "nothing lost";
  EXPECT_EQ(Find(fs, "shunt_request_metrics_folded_total")->metric.at(0).counter.value, 7);
}

TEST(RequestMetrics, APodThatLeftHasNoSeriesLeft) {
  RequestMetrics m(100, false);
  m.Record(Key("web", 200), Exchange({}, 1, 1));
  RequestKey other = Key("web", 200);
  other.destination_pod = "cart-2";
  m.Record(other, Exchange({}, 1, 1));
  m.ForgetDestinationPod("shop", "cart-1");
  const auto fs = m.Collect();
  const auto* requests = Find(fs, "shunt_requests_total");
  ASSERT_EQ(requests->metric.size(), 1u);
  EXPECT_EQ(LabelsOf(requests->metric[0])["destination_pod"], "cart-2");
}

TEST(RequestMetrics, TheTextIsWhatPrometheusReads) {
  RequestMetrics m(100, true);
  m.Record(Key("web", 200), Exchange(absl::Milliseconds(1), 1, 2));
  const std::string text = prometheus::TextSerializer().Serialize(m.Collect());
  EXPECT_NE(text.find("# TYPE shunt_request_duration_seconds histogram"), std::string::npos);
  EXPECT_NE(text.find("shunt_request_duration_seconds_bucket{"), std::string::npos);
  EXPECT_NE(text.find("le=\"+Inf\"} 1"), std::string::npos) << text;
}

TEST(RequestMetrics, TwoPodsOfOneWorkloadAreOneIstioSeriesAndUpstreamChosenValuesAreBounded) {
  RequestMetrics m(100, /*istio=*/true);
  RequestKey a = Key("web", 200);
  RequestKey b = a;
  b.destination_pod = "cart-2";  // another replica of cart
  m.Record(a, Exchange(absl::Milliseconds(1), 0, 10));
  m.Record(b, Exchange(absl::Milliseconds(1), 0, 20));
  RequestKey odd = Key("web", 200);
  odd.grpc = true;
  odd.grpc_status = 123456;  // what a broken server may put in grpc-status
  m.Record(odd, Exchange({}, 0, 0));
  const auto fs = m.Collect();
  EXPECT_EQ(Find(fs, "shunt_requests_total")->metric.size(), 3u) << "ours: per pod";
  const auto* istio = Find(fs, "istio_requests_total");
  ASSERT_EQ(istio->metric.size(), 2u) << "Istio's: per workload";
  std::set<std::string> statuses;
  for (const auto& s : istio->metric) {
    auto l = LabelsOf(s);
    statuses.insert(l["grpc_response_status"]);
    if (l["request_protocol"] == "http") EXPECT_EQ(s.counter.value, 2);
  }
  EXPECT_EQ(statuses, (std::set<std::string>{"", "2"})) << "out of gRPC's range: UNKNOWN";
  const auto& bytes = Find(fs, "istio_response_bytes")->metric;
  double sum = 0;
  for (const auto& s : bytes) sum += s.histogram.sample_sum;
  EXPECT_EQ(sum, 30);
}

TEST(ConnectionMetrics, SharedCountersPerSourceAndDestinationTcpLabelsAndTheCap) {
  ConnectionMetrics m(2, /*istio=*/true);
  ConnectionKey a;
  a.source_namespace = "default";
  a.source_workload = "web";
  a.destination_namespace = "shop";
  a.destination_workload = "cart";
  a.destination_pod = "cart-1";
  auto c1 = m.For(a);
  auto c2 = m.For(a);
  EXPECT_EQ(c1, c2) << "one series per key";
  c1->opened += 2;
  c1->closed += 1;
  c1->to_upstream += 100;
  c2->to_downstream += 7;
  ConnectionKey b = a;
  b.source_workload = "api";
  m.For(b)->opened += 1;
  ConnectionKey c = a;
  c.source_workload = "batch";
  auto folded = m.For(c);  // the third: over the cap
  folded->opened += 5;
  EXPECT_EQ(m.folded(), 1u);
  const auto fs = m.Collect();
  const auto* opened = Find(fs, "shunt_tcp_connections_opened_total");
  ASSERT_NE(opened, nullptr);
  double total = 0;
  for (const auto& s : opened->metric) {
    auto l = LabelsOf(s);
    EXPECT_EQ(l["request_protocol"], "tcp");
    EXPECT_EQ(l.count("response_code"), 0u);
    total += s.counter.value;
  }
  EXPECT_EQ(total, 8);
  EXPECT_EQ(Find(fs, "shunt_tcp_received_bytes_total")->metric.size(), 3u);
  const auto* istio = Find(fs, "istio_tcp_sent_bytes_total");
  ASSERT_NE(istio, nullptr);
  bool seven = false;
  for (const auto& s : istio->metric) seven |= s.counter.value == 7;
  EXPECT_TRUE(seven);
  m.ForgetDestinationPod("shop", "cart-1");
  const auto after = m.Collect();
  for (const auto& s : Find(after, "shunt_tcp_connections_opened_total")->metric) {
    EXPECT_EQ(LabelsOf(s)["destination_pod"], "other") << "only the folded set is left";
  }
}


// Per-pod API cost: nano-units summed exactly, exported in whole units; tokens and outcomes; the
// cap folds sources into "other" (counted); a calling pod gone takes its series.
TEST(CostMetrics, SumsNanoUnitsExactlyFoldsAtTheCapAndForgetsPodsThatLeft) {
  CostMetrics m(/*max_series=*/2);
  auto key = [](std::string pod) {
    CostKey k{.source_namespace = "default", .source_workload = "web", .source_pod = pod,
              .service_namespace = "ai", .service_name = "llm", .route = "chat",
              .model = "gpt-4o", .currency = "USD"};
    return k;
  };
  cost::Charge c{.nano = 1'000'000'001, .route = "chat", .model = "gpt-4o"};
  c.tokens.input = 10;
  c.tokens.output = 3;
  m.Record(key("web-1"), c);
  m.Record(key("web-1"), c);
  cost::Charge failed{.nano = 7, .route = "chat", .model = "gpt-4o",
                      .result = cost::CostResult::kFailed};
  m.Record(key("web-2"), failed);
  m.Record(key("web-3"), failed);  // a third series: over the cap
  EXPECT_EQ(m.TotalNano("USD"), 2'000'000'002u + 14u);
  EXPECT_EQ(m.folded(), 1u);
  const auto fs = m.Collect();
  const auto* cost = Find(fs, "shunt_api_cost_total");
  ASSERT_NE(cost, nullptr);
  ASSERT_EQ(cost->metric.size(), 3u);
  std::map<std::string, double> by_pod;
  for (const auto& s : cost->metric) {
    EXPECT_EQ(LabelsOf(s)["currency"], "USD");
    by_pod[LabelsOf(s)["source_pod"]] = s.counter.value;
  }
  EXPECT_EQ(by_pod["web-1"], 2'000'000'002 / 1e9);
  EXPECT_EQ(by_pod["other"], 7 / 1e9);
  const auto* tokens = Find(fs, "shunt_api_tokens_total");
  ASSERT_NE(tokens, nullptr);
  double input = 0;
  for (const auto& s : tokens->metric) {
    if (LabelsOf(s)["type"] == "input") input += s.counter.value;
  }
  EXPECT_EQ(input, 20);
  const auto* requests = Find(fs, "shunt_api_requests_total");
  ASSERT_NE(requests, nullptr);
  std::map<std::string, double> by_result;
  for (const auto& s : requests->metric) by_result[LabelsOf(s)["result"]] += s.counter.value;
  EXPECT_EQ(by_result["priced"], 2);
  EXPECT_EQ(by_result["failed"], 2);
  m.RetainSourcePods({{"default", "web-2"}});
  EXPECT_EQ(m.TotalNano("USD"), 14u) << "web-1 left; web-2 and the folded set stay";
}


// The OpenTelemetry GenAI conventions' histograms, per calling workload: tokens by type (calls
// with usage only), durations, a stream's time to its first event.
TEST(CostMetrics, GenAiHistogramsFollowTheConventionsBuckets) {
  EXPECT_EQ(GenAiOperation("/v1/chat/completions"), "chat");
  EXPECT_EQ(GenAiOperation("/v1/completions"), "text_completion");
  EXPECT_EQ(GenAiOperation("/v1/embeddings/"), "embeddings");
  EXPECT_EQ(GenAiOperation("/v1/messages"), "chat");
  EXPECT_EQ(GenAiOperation("/v1/models"), "other");
  CostMetrics m(10);
  const GenAiKey k{.source_namespace = "default", .source_workload = "web",
                   .service_namespace = "ai", .service_name = "llm", .model = "gpt-4o",
                   .operation = "chat"};
  m.RecordGenAi(k, {.input_tokens = 100, .output_tokens = 3, .usage = true, .seconds = 0.3,
                    .first_token_seconds = 0.05});
  m.RecordGenAi(k, {.input_tokens = 0, .output_tokens = 0, .usage = false, .seconds = 2});
  const auto fs = m.Collect();
  const auto* tokens = Find(fs, "gen_ai_client_token_usage");
  ASSERT_NE(tokens, nullptr);
  ASSERT_EQ(tokens->metric.size(), 2u);  // input, output
  for (const auto& t : tokens->metric) {
    EXPECT_EQ(t.histogram.sample_count, 1u) << "only the call with usage";
    EXPECT_EQ(t.histogram.bucket.size(), kGenAiTokenBuckets.size() + 1);
    const bool input = LabelsOf(t)["gen_ai_token_type"] == "input";
    EXPECT_EQ(t.histogram.sample_sum, input ? 100 : 3);
    EXPECT_EQ(t.histogram.bucket[input ? 4 : 1].cumulative_count, 1u) << "100 <= 256, 3 <= 4";
    EXPECT_EQ(t.histogram.bucket[input ? 3 : 0].cumulative_count, 0u) << "100 > 64, 3 > 1";
    EXPECT_EQ(LabelsOf(t)["gen_ai_request_model"], "gpt-4o");
    EXPECT_EQ(LabelsOf(t)["source_workload"], "web");
  }
  const auto* duration = Find(fs, "gen_ai_client_operation_duration_seconds");
  ASSERT_NE(duration, nullptr);
  ASSERT_EQ(duration->metric.size(), 1u);
  EXPECT_EQ(duration->metric[0].histogram.sample_count, 2u);
  EXPECT_DOUBLE_EQ(duration->metric[0].histogram.sample_sum, 2.3);
  const auto* first = Find(fs, "gen_ai_server_time_to_first_token_seconds");
  ASSERT_NE(first, nullptr);
  ASSERT_EQ(first->metric.size(), 1u);
  EXPECT_EQ(first->metric[0].histogram.sample_count, 1u);
}

}  // namespace
}  // namespace shunt::agent::metrics

namespace shunt::agent {
namespace {

TEST(ServiceByAuthority, TheServiceARequestNamesElseTheFirstNeverTheAuthority) {
  const std::vector<std::pair<std::string, std::string>> two = {{"shop", "cart"},
                                                                {"shop", "cart-canary"}};
  using P = std::pair<std::string, std::string>;
  EXPECT_EQ(ServiceByAuthority(two, "cart-canary"), (P{"shop", "cart-canary"}));
  EXPECT_EQ(ServiceByAuthority(two, "cart-canary.shop:8080"), (P{"shop", "cart-canary"}));
  EXPECT_EQ(ServiceByAuthority(two, "CART-CANARY.shop.svc.cluster.local."),
            (P{"shop", "cart-canary"}));
  EXPECT_EQ(ServiceByAuthority(two, "cart.shop.svc"), (P{"shop", "cart"}));
  EXPECT_EQ(ServiceByAuthority(two, "cart-canary.other"), (P{"shop", "cart"}))
      << "another namespace's";
  EXPECT_EQ(ServiceByAuthority(two, "10.0.0.7:8080"), (P{"shop", "cart"}));
  EXPECT_EQ(ServiceByAuthority(two, "[fd00::7]:8080"), (P{"shop", "cart"}));
  EXPECT_EQ(ServiceByAuthority({}, "cart"), (P{"", ""}));
}

}  // namespace
}  // namespace shunt::agent
