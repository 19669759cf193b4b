// What per-pod API cost accounting costs (issue 10), in the same run:
//
// 1. Requests per second through the proxy's HTTP/1.1 session with cost accounting off (the
//    session alone, as for any L7 port) and on (each request's bodies read by a CostObserver, its
//    price computed and recorded into CostMetrics, as the agent does), for an OpenAI-style chat
//    request (a 1 KiB JSON body) answered with JSON and with a 32-event server-sent stream
//    (chunked). In user space alone (no sockets, one thread): the ratio is the harshest one (the
//    kernel's share of a real request, which accounting does not change, is left out).
// 2. The time to scrape an agent's /metrics over HTTP (prometheus-cpp's exposer, as in the agent)
//    holding 10,000 series of the request, connection and cost families, against an exposer
//    with none, in the same run.
//
//   ./build/shunt-bench-cost --requests=100000 --rounds=5 --series=10000 --scrapes=50
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "agent/cost/cost_observer.h"
#include "agent/metrics/cost_metrics.h"
#include "agent/metrics/request_metrics.h"
#include "agent/proxy/http1_session.h"
#include "prometheus/collectable.h"
#include "prometheus/exposer.h"

ABSL_FLAG(int, requests, 100000, "Requests per measurement.");
ABSL_FLAG(int, rounds, 5, "Interleaved rounds (median reported).");
ABSL_FLAG(int, series, 10000,
          "Series (sample lines: each histogram bucket is one) the scraped agent holds.");
ABSL_FLAG(int, scrapes, 50, "Scrapes per exposer (median and max reported).");

namespace {

using Clock = std::chrono::steady_clock;
using shunt::agent::ExchangeRecord;
using shunt::agent::Http1Options;
using shunt::agent::Http1Session;
using shunt::agent::L7Request;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "cost bench: %s\n", what.c_str());
  std::exit(1);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::shared_ptr<const shunt::agent::cost::CostPolicy> Policy() {
  shunt::v1::ApiCostPolicy p;
  p.set_namespace_("ai");
  p.set_name("prices");
  p.set_service("llm");
  p.set_currency("USD");
  auto* r = p.add_routes();
  r->set_name("chat");
  r->set_method("POST");
  r->set_path_prefix("/v1/chat/completions");
  r->set_per_request("0.0001");
  auto* m = p.add_models();
  m->set_model("gpt-4o");
  m->set_per_million_input("2.50");
  m->set_per_million_cached_input("1.25");
  m->set_per_million_output("10");
  auto c = shunt::agent::cost::CostPolicy::Compile(p);
  if (!c.ok()) Die(std::string(c.status().message()));
  return std::make_shared<const shunt::agent::cost::CostPolicy>(std::move(*c));
}

std::string Request() {
  std::string body = R"({"model":"gpt-4o","stream":false,"messages":[{"role":"user","content":")" +
                     std::string(900, 'q') + R"("}]})";
  return absl::StrCat("POST /v1/chat/completions HTTP/1.1\r\nHost: llm.ai\r\n"
                      "Content-Type: application/json\r\nContent-Length: ",
                      body.size(), "\r\n\r\n", body);
}

std::string JsonResponse() {
  const std::string body =
      R"({"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06",)"
      R"("choices":[{"index":0,"message":{"role":"assistant","content":")" +
      std::string(1200, 'a') +
      R"("},"finish_reason":"stop"}],"usage":{"prompt_tokens":240,"completion_tokens":300,)"
      R"("total_tokens":540,"prompt_tokens_details":{"cached_tokens":128}}})";
  return absl::StrCat("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ",
                      body.size(), "\r\n\r\n", body);
}

std::string SseResponse() {
  std::string out = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n";
  auto chunk = [&](const std::string& event) {
    absl::StrAppend(&out, absl::Hex(event.size()), "\r\n", event, "\r\n");
  };
  for (int i = 0; i < 31; ++i) {
    chunk(R"(data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o",)"
          R"("choices":[{"index":0,"delta":{"content":"token )" +
          std::to_string(i) + R"( "}}],"usage":null})" "\n\n");
  }
  chunk(R"(data: {"id":"c","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":240,)"
        R"("completion_tokens":31,"prompt_tokens_details":{"cached_tokens":128}}})"
        "\n\ndata: [DONE]\n\n");
  out += "0\r\n\r\n";
  return out;
}

// Seconds for `requests` exchanges through one session; `accounting`: priced and recorded.
double Run(int requests, const std::string& request, const std::string& response,
           bool accounting, shunt::agent::metrics::CostMetrics* costs, uint64_t* priced) {
  auto policy = Policy();
  uint64_t recorded = 0;
  Http1Session session(
      Http1Options{}, [](const L7Request&) { return shunt::agent::L7Verdict{}; },
      [&](const ExchangeRecord& r) {
        ++recorded;
        auto* o = dynamic_cast<shunt::agent::cost::CostObserver*>(r.observer.get());
        if (!o) return;
        const auto charge = o->Finish(r);
        shunt::agent::metrics::CostKey k{.source_namespace = "default",
                                         .source_workload = "web",
                                         .source_pod = "web-1",
                                         .service_namespace = "ai",
                                         .service_name = "llm",
                                         .route = charge.route,
                                         .model = charge.model,
                                         .currency = "USD"};
        costs->Record(k, charge);
        // And the GenAI histograms, as the agent records every LLM call.
        costs->RecordGenAi(
            {.source_namespace = "default", .source_workload = "web", .service_namespace = "ai",
             .service_name = "llm", .model = charge.model,
             .operation = shunt::agent::metrics::GenAiOperation(r.request.path)},
            shunt::agent::metrics::GenAiCallOf(charge, r.start, r.end, o->first_event()));
        if (charge.result == shunt::agent::cost::CostResult::kPriced) ++*priced;
      });
  if (accounting) {
    session.observe = [policy](const L7Request&) -> std::unique_ptr<shunt::agent::BodyObserver> {
      return std::make_unique<shunt::agent::cost::CostObserver>(
          policy, std::pair<std::string, std::string>{"ai", "llm"});
    };
  }
  std::string wire;
  const auto t0 = Clock::now();
  for (int i = 0; i < requests; ++i) {
    if (session.FromClient(request) != request.size()) Die("FromClient took less");
    session.to_server.clear();
    if (session.FromServer(response) != response.size()) Die("FromServer took less");
    if (session.to_client.size() < 100) Die("no response");
    session.to_client.clear();
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  if (recorded != static_cast<uint64_t>(requests)) Die("exchanges not recorded");
  return secs;
}

// The families an agent exports for `series` label sets (requests, connections, cost).
class Families : public prometheus::Collectable {
 public:
  explicit Families(int series) : requests_(series, true), connections_(series, true),
                                  costs_(series) {
    for (int i = 0; i < series; ++i) {
      const std::string w = absl::StrCat("client-", i % 500);
      const std::string pod = absl::StrCat(w, "-", i / 500);
      if (i % 3 == 0) {
        shunt::agent::metrics::RequestKey k{.source_namespace = "default", .source_workload = w,
                                            .destination_namespace = "shop",
                                            .destination_workload = "api",
                                            .destination_pod = absl::StrCat("api-", i % 7),
                                            .service_namespace = "shop", .service_name = "api",
                                            .grpc = false, .response_code = 200 + i % 5,
                                            .grpc_status = -1};
        ExchangeRecord r;
        r.start = absl::Now();
        r.end = r.start + absl::Milliseconds(i % 40);
        requests_.Record(k, r);
      } else if (i % 3 == 1) {
        shunt::agent::metrics::ConnectionKey k{.source_namespace = "default",
                                               .source_workload = w,
                                               .destination_namespace = "shop",
                                               .destination_workload = "api",
                                               .destination_pod = pod,
                                               .service_namespace = "shop",
                                               .service_name = "api"};
        connections_.For(k)->opened.fetch_add(1);
      } else {
        shunt::agent::metrics::CostKey k{.source_namespace = "default", .source_workload = w,
                                         .source_pod = pod, .service_namespace = "ai",
                                         .service_name = "llm", .route = "chat",
                                         .model = "gpt-4o", .currency = "USD"};
        shunt::agent::cost::Charge c{.nano = 1234, .route = "chat", .model = "gpt-4o"};
        costs_.Record(k, c);
      }
    }
  }
  std::vector<prometheus::MetricFamily> Collect() const override {
    auto out = requests_.Collect();
    for (auto& f : connections_.Collect()) out.push_back(std::move(f));
    for (auto& f : costs_.Collect()) out.push_back(std::move(f));
    return out;
  }

 private:
  shunt::agent::metrics::RequestMetrics requests_;
  shunt::agent::metrics::ConnectionMetrics connections_;
  shunt::agent::metrics::CostMetrics costs_;
};

// One scrape over HTTP: milliseconds to the whole page; its size and sample lines.
double Scrape(uint16_t port, size_t* bytes, size_t* samples) {
  const auto t0 = Clock::now();
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) Die("connect to the exposer");
  const std::string get = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  if (write(fd, get.data(), get.size()) != static_cast<ssize_t>(get.size())) Die("write");
  std::string page;
  char buf[1 << 16];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) page.append(buf, static_cast<size_t>(n));
  close(fd);
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  if (page.rfind("HTTP/1.1 200", 0) != 0) Die("the scrape was not a 200");
  *bytes = page.size();
  *samples = 0;
  for (size_t at = page.find("\r\n\r\n"); at != std::string::npos; at = page.find('\n', at + 1)) {
    if (at + 1 < page.size() && page[at + 1] != '#' && page[at + 1] != '\n') ++*samples;
  }
  return ms;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int requests = absl::GetFlag(FLAGS_requests), rounds = absl::GetFlag(FLAGS_rounds);
  std::printf("API cost accounting, HTTP/1.1 session in user space, one thread, %d requests x %d "
              "rounds (median, interleaved)\n",
              requests, rounds);
  std::printf("%-28s %12s %12s %8s %14s\n", "response", "off req/s", "on req/s", "on/off",
              "ns per request");
  const std::string request = Request();
  for (const auto& [name, response] :
       std::vector<std::pair<std::string, std::string>>{{"JSON (1.5 KiB, usage)", JsonResponse()},
                                                        {"SSE (32 events, chunked)",
                                                         SseResponse()}}) {
    std::vector<double> off, on;
    shunt::agent::metrics::CostMetrics costs(100);
    uint64_t priced = 0;
    for (int r = 0; r < rounds; ++r) {
      off.push_back(Run(requests, request, response, false, &costs, &priced));
      on.push_back(Run(requests, request, response, true, &costs, &priced));
    }
    if (priced != static_cast<uint64_t>(requests) * rounds) Die("requests not priced: " + name);
    const double off_rps = requests / Median(off), on_rps = requests / Median(on);
    std::printf("%-28s %12.0f %12.0f %7.2fx %14.0f   (target >= 0.95x)\n", name.c_str(), off_rps,
                on_rps, on_rps / off_rps, (Median(on) - Median(off)) * 1e9 / requests);
  }

  const int series = absl::GetFlag(FLAGS_series), scrapes = absl::GetFlag(FLAGS_scrapes);
  auto empty = std::make_shared<Families>(0);
  // Label sets for `series` series (sample lines: a histogram's buckets are series each):
  // calibrated on what the families export.
  auto count = [](const Families& f) {
    size_t n = 0;
    for (const auto& fam : f.Collect()) {
      for (const auto& m : fam.metric) n += fam.type == prometheus::MetricType::Histogram
                                                ? m.histogram.bucket.size() + 2
                                                : 1;
    }
    return n;
  };
  int sets = std::max(1, series / 15);
  for (int i = 0; i < 3; ++i) {
    const size_t got = count(Families(sets));
    sets = std::max(1, static_cast<int>(static_cast<double>(sets) * series / std::max<size_t>(got, 1)));
  }
  auto full = std::make_shared<Families>(sets);
  std::printf("\nscrape of /metrics over HTTP (prometheus-cpp exposer), %d scrapes each; %d label "
              "sets of the request (Istio's too), connection and cost families\n",
              scrapes, sets);
  std::printf("%-22s %10s %10s %10s %12s\n", "agent holding", "p50 ms", "max ms", "samples",
              "bytes");
  double full_p50 = 0;
  for (const auto& [label, families] :
       std::vector<std::pair<std::string, std::shared_ptr<Families>>>{
           {"no series", empty}, {absl::StrCat("~", series, " series"), full}}) {
    prometheus::Exposer exposer("127.0.0.1:0");
    exposer.RegisterCollectable(families);
    const auto ports = exposer.GetListeningPorts();
    if (ports.empty()) Die("no exposer port");
    std::vector<double> ms;
    size_t bytes = 0, samples = 0;
    for (int i = 0; i < scrapes; ++i) ms.push_back(Scrape(static_cast<uint16_t>(ports[0]), &bytes, &samples));
    const double p50 = Median(ms), max = *std::max_element(ms.begin(), ms.end());
    if (families == full) full_p50 = p50;
    std::printf("%-22s %10.2f %10.2f %10zu %12zu\n", label.c_str(), p50, max, samples, bytes);
  }
  std::printf("target: a scrape of %d series under 50 ms: p50 %.2f ms: %s\n", series, full_p50,
              full_p50 < 50 ? "met" : "not met");
  return 0;
}
