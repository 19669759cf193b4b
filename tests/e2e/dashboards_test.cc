// The Grafana dashboards we ship (deploy/grafana/*.json), against a real Prometheus server
// (Debian's) scraping both agents and the controller of a 2-node test bed, after traffic of
// every kind the dashboards show went through it: HTTP read at L7 (a 403 of an L7 rule and a 500
// among them), priced API calls (priced, unpriced, usage missing, a stream its client left), a
// transfer the in-node fast path splices. Every panel's every query runs with its template
// variables filled in twice: with "All", and with the first value each variable's own query
// (label_values) finds; none may fail or come back empty. The controller's /metrics passes
// promtool too.
#include <gtest/gtest.h>

#include <unistd.h>

#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/files.h"
#include <nlohmann/json.hpp>
#include "tests/e2e/e2e_util.h"
#include "tests/test_util.h"
#include "tests/testbed/testbed.h"

namespace shunt::e2e {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using testbed::Pod;

constexpr char kServers[] = R"PY(
import http.server, json, sys, time, threading
class Api(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        code = 500 if self.path == "/fail" else 200
        body = b"ok"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class Llm(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        usage = {"prompt_tokens": 100, "completion_tokens": 20,
                 "prompt_tokens_details": {"cached_tokens": 40}}
        if req.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            events = [{"choices": [{"delta": {"content": "x" * 500}}], "usage": None}] * 100
            for i, d in enumerate(events + [{"choices": [], "usage": usage}]):
                if i == 1: time.sleep(0.5)
                e = ("data: " + json.dumps(dict(d, model=req["model"])) + "\n\n").encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(e), e))
            self.wfile.write(b"0\r\n\r\n")
            return
        doc = {"model": req["model"], "choices": []}
        if not req.get("nousage"): doc["usage"] = usage
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
for port, h in ((8081, Api), (8090, Llm)):
    s = http.server.ThreadingHTTPServer(("", port), h)
    threading.Thread(target=s.serve_forever, daemon=True).start()
open(sys.argv[1], "w").close()
threading.Event().wait()
)PY";

json Manifests(const testbed::Testbed& bed) {
  json items = json::array();
  items.push_back({{"apiVersion", "v1"}, {"kind", "Namespace"},
                   {"metadata", {{"name", "default"}, {"labels", {{"shunt.dev/mesh", "enabled"}}}}}});
  for (const auto& node : bed.nodes()) {
    for (const auto& pod : node.pods) {
      json labels = {{"app", pod.name}};
      if (node.index == 1 && pod.index == 0) labels = {{"app", "api"}};
      json meta = {{"namespace", "default"}, {"name", pod.name}, {"uid", pod.uid},
                   {"labels", labels}};
      if (pod.index == 2) meta["annotations"] = {{"shunt.dev/mesh", "disabled"}};
      items.push_back({{"apiVersion", "v1"}, {"kind", "Pod"}, {"metadata", meta},
                       {"spec", {{"nodeName", node.name}, {"serviceAccountName", "default"}}},
                       {"status", {{"phase", "Running"}, {"podIP", pod.ipv4},
                                   {"podIPs", {{{"ip", pod.ipv4}}, {{"ip", pod.ipv6}}}}}}});
    }
  }
  const Pod& api = bed.pod(1, 0);
  for (const auto& [name, port] : std::vector<std::pair<std::string, int>>{{"api", 8081},
                                                                            {"llm", 8090}}) {
    items.push_back({{"apiVersion", "v1"}, {"kind", "Service"},
                     {"metadata", {{"namespace", "default"}, {"name", name}}},
                     {"spec", {{"selector", {{"app", "api"}}},
                               {"ports", {{{"name", "http"}, {"port", 80}, {"targetPort", port}}}}}}});
    items.push_back({{"apiVersion", "discovery.k8s.io/v1"}, {"kind", "EndpointSlice"},
                     {"metadata", {{"namespace", "default"}, {"name", name + "-1"},
                                   {"labels", {{"kubernetes.io/service-name", name}}}}},
                     {"addressType", "IPv4"},
                     {"ports", {{{"name", "http"}, {"port", port}}}},
                     {"endpoints", {{{"addresses", {api.ipv4}}, {"nodeName", bed.node(1).name},
                                     {"targetRef", {{"kind", "Pod"}, {"uid", api.uid}}}}}}});
  }
  items.push_back(json::parse(R"({"apiVersion": "policy.shunt.dev/v1alpha1",
      "kind": "ApiCostPolicy", "metadata": {"namespace": "default", "name": "llm-prices"},
      "spec": {"service": "llm", "currency": "USD",
               "routes": [{"name": "chat", "method": "POST", "pathPrefix": "/v1/chat/completions",
                           "perRequest": "0.0001"}],
               "models": [{"model": "gpt-4o", "perMillionInput": "2.50",
                           "perMillionCachedInput": "1.25", "perMillionOutput": "10"}]}})"));
  return {{"apiVersion", "v1"}, {"kind", "List"}, {"items", items}};
}

// Applied once the agents run (an agent is not ready while a policy it cannot enforce as
// written, an L7 rule before the capture has the port, is in force).
json L7Policy() {
  return json::parse(R"({"apiVersion": "policy.shunt.dev/v1alpha1",
      "kind": "AccessPolicy", "metadata": {"namespace": "default", "name": "no-admin"},
      "spec": {"action": "DENY", "target": {"matchLabels": {"app": "api"}},
               "from": [{"namespaces": ["default"]}], "ports": [{"from": 8081}],
               "l7": [{"paths": ["/admin*"]}]}})");
}

// Grafana's label_values(<selector>, <label>) as PromQL: the values of <label> it finds.
std::vector<std::string> LabelValues(const PrometheusServer& prom, const std::string& query,
                                     std::string* error) {
  static const std::regex kLabelValues(R"(^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$)");
  std::smatch m;
  if (!std::regex_match(query, m, kLabelValues)) {
    *error = "not label_values(selector, label): " + query;
    return {};
  }
  auto r = prom.Query(absl::StrCat("group by (", m[2].str(), ") (", m[1].str(), ")"));
  if (!r.ok()) {
    *error = std::string(r.status().message());
    return {};
  }
  std::vector<std::string> values;
  for (const auto& row : *r) values.push_back(row["metric"].value(m[2].str(), ""));
  std::sort(values.begin(), values.end());
  return values;
}

std::string Fill(std::string expr, const std::map<std::string, std::string>& vars) {
  // Grafana's own: what a 1 s scrape interval and the default hour make of them here.
  expr = absl::StrReplaceAll(expr, {{"$__rate_interval", "30s"}, {"$__range", "5m"}});
  for (const auto& [name, value] : vars) expr = absl::StrReplaceAll(expr, {{"$" + name, value}});
  return expr;
}

std::string RegexEscape(const std::string& s) {
  return std::regex_replace(s, std::regex(R"([.^$|()\[\]{}*+?\\])"), R"(\\$&)");
}

TEST(DashboardsTest, EveryPanelsQueryFindsTheTrafficInARealPrometheus) {
  if (access("/usr/bin/python3", X_OK) != 0) GTEST_FAIL() << "python3 is needed (scripts/setup.sh)";
  testbed::Options opts;
  opts.nodes = 2;
  opts.pods_per_node = 3;
  auto created = testbed::Testbed::Create(opts);
  ASSERT_TRUE(created.ok()) << created.status();
  testbed::Testbed& bed = **created;
  struct Cleanup {
    testbed::Testbed& bed;
    std::vector<std::unique_ptr<AgentProcess>>& agents;
    ~Cleanup() {
      for (size_t i = 0; i < agents.size(); ++i) {
        agents[i]->Kill();
        UninstallAgent(bed, bed.node(i)).IgnoreError();
      }
      bed.Teardown();
    }
  };
  std::vector<std::unique_ptr<AgentProcess>> agents;
  Cleanup cleanup{bed, agents};
  const std::string dir = bed.work_dir() + "/manifests";
  ASSERT_TRUE(MkdirAll(dir).ok());
  ASSERT_TRUE(WriteFileAtomic(dir + "/cluster.json", Manifests(bed).dump()).ok());
  auto controller = bed.SpawnOnNode(
      bed.node(0), {SHUNT_CONTROLLER_BIN, "--manifests=" + dir, "--plaintext",
                    "--listen=0.0.0.0:15010", "--metrics-addr=0.0.0.0:15014",
                    "--admin-addr=127.0.0.1:15015", "--manifests-poll-ms=100"});
  ASSERT_TRUE(controller.ok()) << controller.status();
  for (const auto& node : bed.nodes()) {
    agents.push_back(std::make_unique<AgentProcess>(
        bed, node, "",
        std::vector<std::string>{absl::StrCat("--controller=", bed.node(0).ipv4, ":15010"),
                                 "--controller-plaintext", "--capture", "--resync-ms=100",
                                 absl::StrCat("--metrics-addr=0.0.0.0:", kMetricsPort)}));
    ASSERT_TRUE(agents.back()->Start().ok()) << agents.back()->Stderr();
  }
  ASSERT_TRUE(WriteFileAtomic(dir + "/l7.json", L7Policy().dump()).ok());
  auto prom = PrometheusServer::Start(
      bed, bed.node(0),
      {absl::StrCat("127.0.0.1:", kMetricsPort), absl::StrCat(bed.node(1).ipv4, ":", kMetricsPort),
       "127.0.0.1:15014"});
  ASSERT_TRUE(prom.ok()) << prom.status();
  ASSERT_TRUE((*prom)->WaitForFreshScrape(30s).ok()) << (*prom)->Stderr();

  const Pod& front = bed.pod(0, 0);
  const Pod& mate = bed.pod(0, 1);
  const Pod& plain = bed.pod(0, 2);
  const Pod& api = bed.pod(1, 0);
  const std::string ready = bed.work_dir() + "/servers";
  auto servers = bed.Spawn(api, {"/usr/bin/python3", "-c", kServers, ready});
  ASSERT_TRUE(servers.ok()) << servers.status();
  // (Python starts slowly under the second kernel's emulated CPUs: more than WaitForFile's 10 s.)
  ASSERT_TRUE(shunt::test::Eventually([&] { return access(ready.c_str(), F_OK) == 0; }, 90s, 100ms))
      << (*servers)->Stderr();

  // HTTP read at L7 where it arrives: once node 1's agent has the L7 rule, /admin is a 403.
  const std::string base = "http://" + api.ipv4 + ":8081";
  std::string out;
  ASSERT_TRUE(shunt::test::Eventually(
      [&] {
        auto r = bed.Run(front, {"/usr/bin/curl", "-s", "-w", "%{http_code} ", "-o", "/dev/null",
                                 base + "/hello", "-o", "/dev/null", base + "/admin", "-o",
                                 "/dev/null", base + "/fail"},
                         20s);
        out = r.ok() ? r->out : r.status().ToString();
        return out == "200 403 500 ";
      },
      20s, 200ms))
      << out;
  // Priced calls: priced (JSON and a stream), unpriced, usage missing, a stream its client left.
  const std::string chat = "http://" + api.ipv4 + ":8090/v1/chat/completions";
  auto post = [&](const Pod& from, const std::string& body) {
    auto r = bed.Run(from, {"/usr/bin/curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                            "Content-Type: application/json", "-d", body, chat},
                     20s);
    return r.ok() ? r->out : r.status().ToString();
  };
  for (const char* body :
       {R"({"model":"gpt-4o","messages":[]})", R"({"model":"gpt-4o","stream":true})",
        R"({"model":"mystery","messages":[]})", R"({"model":"gpt-4o","nousage":true})"}) {
    EXPECT_EQ(post(front, body), "200") << body;
    EXPECT_EQ(post(plain, body), "200") << body;
  }
  auto left = bed.Run(front, {"/usr/bin/curl", "-s", "-o", "/dev/null", "--max-time", "0.2", "-H",
                              "Content-Type: application/json", "-d",
                              R"({"model":"gpt-4o","stream":true})", chat},
                      20s);
  ASSERT_TRUE(left.ok());
  // The in-node fast path: two meshed pods of node 0.
  auto sink = StartTestpeerServer(bed, mate, {"--port=9000", "--mode=verify"});
  ASSERT_TRUE(sink.ok()) << sink.status();
  for (int i = 0; i < 3; ++i) {
    auto v = RunTestpeer(bed, front, {"verify", "--to=" + mate.ipv4 + ":9000", "--bytes=4M",
                                      absl::StrCat("--seed=", i + 1)});
    ASSERT_TRUE(v.ok()) << v.status();
  }
  // Two more scrapes of everything, then a rate over 30 s has points on both sides.
  std::this_thread::sleep_for(3s);
  ASSERT_TRUE((*prom)->WaitForFreshScrape(10s).ok());

  auto page = HttpGetInNetns(bed.node(0).netns, "127.0.0.1", 15014, "/metrics");
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_EQ(MetricsProblems(page->body), "") << "the controller's /metrics, as promtool reads it";

  // The traffic really happened, and was counted: the panels below are not passing on zeros
  // (counters exported at 0, and the panels' "absent means zero" fallbacks, are never empty).
  for (const char* q : {"sum(shunt_requests_total{response_code=\"403\"})",
                        "sum(shunt_requests_total{response_code=\"500\"})",
                        "sum(shunt_policy_denied_requests_total)",
                        "sum(shunt_api_cost_total)",
                        "sum(shunt_api_requests_total{result=\"unpriced\"})",
                        "sum(shunt_api_requests_total{result=\"usage_missing\"})",
                        "sum(shunt_relay_usage_drains_total{result=\"complete\"})",
                        "sum(gen_ai_server_time_to_first_token_seconds_count)",
                        "sum(shunt_sockmap_redirected_bytes_total)",
                        "sum(shunt_tcp_connections_opened_total)",
                        "sum(shunt_connections_opened_total{reporter=\"source\"})",
                        "sum(shunt_connection_received_bytes_total{reporter=\"destination\"})",
                        "sum(shunt_controller_acks_total)"}) {
    // Counted by now, or within a few scrapes (the kernel's connection events are read ten
    // times a second; a loaded machine scrapes late).
    auto r = (*prom)->Query(std::string(q) + " > 0");
    for (int i = 0; i < 20 && r.ok() && r->empty(); ++i) {
      std::this_thread::sleep_for(500ms);
      r = (*prom)->Query(std::string(q) + " > 0");
    }
    ASSERT_TRUE(r.ok()) << q << ": " << r.status();
    EXPECT_EQ(r->size(), 1u) << q << ": none counted";
  }
  size_t queries = 0;
  for (const char* name : {"mesh-overview", "api-cost", "agent-health"}) {
    auto text = ReadFileToString(std::string(SHUNT_SOURCE_DIR) + "/deploy/grafana/" + name + ".json");
    ASSERT_TRUE(text.ok()) << name;
    const json dash = json::parse(*text);
    // Variables: "All" first; then each its first value, in order (later queries see earlier
    // choices).
    std::vector<std::map<std::string, std::string>> fillings(2);
    for (const auto& v : dash["templating"]["list"]) {
      if (v["type"] != "query") continue;
      const std::string var = v["name"];
      fillings[0][var] = v.value("allValue", ".*");
      std::string error;
      const std::string q = Fill(v["query"]["query"].get<std::string>(), fillings[1]);
      const auto values = LabelValues(**prom, q, &error);
      ASSERT_TRUE(error.empty()) << name << " variable " << var << ": " << error;
      ASSERT_FALSE(values.empty()) << name << " variable " << var << " finds no value: " << q;
      fillings[1][var] = RegexEscape(values.front());
    }
    for (const auto& vars : fillings) {
      for (const auto& panel : dash["panels"]) {
        if (panel["type"] == "row") continue;
        for (const auto& target : panel["targets"]) {
          const std::string expr = Fill(target["expr"], vars);
          ++queries;
          auto r = (*prom)->Query(expr);
          EXPECT_TRUE(r.ok()) << name << " / " << panel["title"] << ": " << expr << ": "
                              << r.status();
          if (r.ok()) {
            EXPECT_FALSE(r->empty()) << name << " / " << panel["title"] << ": " << expr
                                     << " is empty";
          }
        }
      }
    }
  }
  EXPECT_GE(queries, 120u) << "3 dashboards, 60 queries, each with both fillings";
}

}  // namespace
}  // namespace shunt::e2e
