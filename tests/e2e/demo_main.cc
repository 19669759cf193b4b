// shunt-demo: README's first command. A simulated 2-node cluster on this machine, driven the way a
// real one is: shunt-controller serves a directory of Kubernetes manifests (what `kubectl apply`
// would give it), shunt-agent runs on each node, and traffic shows what the kernel did.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/files.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testbed/testbed.h"

namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using shunt::e2e::AgentProcess;
using shunt::e2e::SumSamples;
using shunt::testbed::Pod;
using shunt::testbed::Testbed;

constexpr char kVip[] = "198.18.255.10";  // Service "api"; the test bed has no 198.18.255.0/24

void Say(const std::string& s) {
  std::printf("%s\n", s.c_str());
  std::fflush(stdout);
}

struct Demo {
  Testbed& bed;
  std::string dir;  // the manifests directory the controller serves
  // Servers on the last CPU, clients on CPU 0: both paths get the same placement.
  std::vector<std::string> server_cpu = {"taskset", "-c",
                                         std::to_string(std::thread::hardware_concurrency() - 1)};
  std::vector<std::string> client_cpu = {"taskset", "-c", "0"};

  shunt::testbed::ProcessPtr Server(const Pod& pod, std::vector<std::string> args) {
    auto p = shunt::e2e::StartTestpeerServer(bed, pod, std::move(args), server_cpu);
    return p.ok() ? std::move(*p) : nullptr;
  }

  json Client(const Pod& pod, std::vector<std::string> args) {
    auto r = shunt::e2e::RunTestpeer(bed, pod, std::move(args), std::chrono::seconds(120),
                                     client_cpu);
    if (!r.ok()) return {{"error", std::string(r.status().message())}};
    return *r;
  }

  void Apply(const std::string& file, const json& doc) {
    shunt::WriteFileAtomic(dir + "/" + file, doc.dump(2)).IgnoreError();
    Say("  applied " + file);
  }
  void Delete(const std::string& file) {
    unlink((dir + "/" + file).c_str());
    Say("  deleted " + file);
  }
};

// Roles: node 0 pod 0 "front" (client), pod 1 "api" v1; node 1 pod 0 "api" v2. Pods 2 and 3 of
// each node opt out of the mesh (annotation), to compare with the plain path.
json ClusterManifests(const Testbed& bed) {
  json items = json::array();
  items.push_back({{"apiVersion", "v1"},
                   {"kind", "Namespace"},
                   {"metadata", {{"name", "default"}, {"labels", {{"shunt.dev/mesh", "enabled"}}}}}});
  for (const auto& node : bed.nodes()) {
    for (const auto& pod : node.pods) {
      json labels = {{"app", "other"}};
      if (node.index == 0 && pod.index == 0) labels = {{"app", "front"}};
      if (node.index == 0 && pod.index == 1) labels = {{"app", "api"}, {"version", "v1"}};
      if (node.index == 1 && pod.index == 0) labels = {{"app", "api"}, {"version", "v2"}};
      json meta = {{"namespace", "default"}, {"name", pod.name}, {"uid", pod.uid}, {"labels", labels}};
      if (pod.index >= 2) meta["annotations"] = {{"shunt.dev/mesh", "disabled"}};
      items.push_back({{"apiVersion", "v1"},
                       {"kind", "Pod"},
                       {"metadata", meta},
                       {"spec", {{"nodeName", node.name}, {"serviceAccountName", "default"}}},
                       {"status", {{"phase", "Running"}, {"podIP", pod.ipv4},
                                   {"podIPs", {{{"ip", pod.ipv4}}, {{"ip", pod.ipv6}}}}}}});
    }
  }
  items.push_back({{"apiVersion", "v1"},
                   {"kind", "Service"},
                   {"metadata", {{"namespace", "default"}, {"name", "api"}}},
                   {"spec", {{"clusterIP", kVip}, {"selector", {{"app", "api"}}},
                             {"ports", {{{"name", "http"}, {"port", 80}, {"targetPort", 8080}}}}}}});
  json eps = json::array();
  for (const Pod* p : {&bed.pod(0, 1), &bed.pod(1, 0)}) {
    eps.push_back({{"addresses", {p->ipv4}},
                   {"nodeName", bed.node(p->node_index).name},
                   {"targetRef", {{"kind", "Pod"}, {"uid", p->uid}}}});
  }
  items.push_back({{"apiVersion", "discovery.k8s.io/v1"},
                   {"kind", "EndpointSlice"},
                   {"metadata", {{"namespace", "default"}, {"name", "api-1"},
                                 {"labels", {{"kubernetes.io/service-name", "api"}}}}},
                   {"addressType", "IPv4"},
                   {"ports", {{{"name", "http"}, {"port", 8080}}}},
                   {"endpoints", eps}});
  return {{"apiVersion", "v1"}, {"kind", "List"}, {"items", items}};
}

bool WaitFor(AgentProcess& agent, const std::string& metric, const std::map<std::string, std::string>& labels,
             double value) {
  for (int i = 0; i < 200; ++i) {
    auto m = agent.Scrape();
    if (m.ok() && SumSamples(*m, metric, labels) == value) return true;
    std::this_thread::sleep_for(50ms);
  }
  return false;
}

int RunDemo() {
  Testbed::InstallSignalTeardown();
  shunt::testbed::Options opts;
  opts.nodes = 2;
  opts.pods_per_node = 4;
  Say("== shunt demo: a simulated 2-node cluster on this machine ==");
  auto created = Testbed::Create(opts);
  if (!created.ok()) {
    std::fprintf(stderr, "cannot create the test bed: %s\n",
                 std::string(created.status().message()).c_str());
    return 1;
  }
  Testbed& bed = **created;
  for (const auto& node : bed.nodes()) {
    Say(absl::StrFormat("node %s  (netns %s, cgroup driver %s, cgroup root %s)", node.name,
                        node.netns,
                        node.driver == shunt::testbed::CgroupDriver::kSystemd ? "systemd"
                                                                               : "cgroupfs",
                        node.cgroup_root));
    for (const auto& pod : node.pods) {
      Say(absl::StrFormat("  pod %-8s %-14s %-14s %s", pod.name, pod.ipv4, pod.ipv6,
                          pod.index < 2 ? "meshed" : "not meshed (annotation)"));
    }
  }
  Demo demo{bed, bed.work_dir() + "/manifests"};
  shunt::MkdirAll(demo.dir).IgnoreError();
  demo.Apply("cluster.json", ClusterManifests(bed));

  auto controller = bed.SpawnOnNode(
      bed.node(0), {SHUNT_CONTROLLER_BIN, "--manifests=" + demo.dir, "--plaintext",
                    "--listen=0.0.0.0:15010", "--metrics-addr=127.0.0.1:15014",
                    "--admin-addr=127.0.0.1:15015", "--manifests-poll-ms=100"});
  if (!controller.ok()) return 1;
  Say(absl::StrCat("shunt-controller serving ", demo.dir, " on ", bed.node(0).ipv4, ":15010"));
  std::vector<std::unique_ptr<AgentProcess>> agents;
  for (const auto& node : bed.nodes()) {
    agents.push_back(std::make_unique<AgentProcess>(
        bed, node, "",
        std::vector<std::string>{absl::StrCat("--controller=", bed.node(0).ipv4, ":15010"),
                                 "--controller-plaintext", "--capture"}));
    if (absl::Status s = agents.back()->Start(); !s.ok()) {
      std::fprintf(stderr, "agent on %s failed: %s\n", node.name.c_str(),
                   std::string(s.message()).c_str());
      return 1;
    }
    Say("shunt-agent ready and in sync on " + node.name);
  }

  const Pod& front = bed.pod(0, 0);
  const Pod& api1 = bed.pod(0, 1);
  const Pod& c = bed.pod(0, 2);
  const Pod& d = bed.pod(0, 3);
  const Pod& api2 = bed.pod(1, 0);

  Say("\n-- 1. same node, meshed -> meshed: 32 MiB, checksummed --");
  auto srv = demo.Server(api1, {"--port=9090", "--mode=verify"});
  auto before = bed.PodLinkStats(front);
  auto r = demo.Client(front, {"verify", "--to=" + api1.ipv4 + ":9090", "--bytes=32M", "--seed=1"});
  auto after = bed.PodLinkStats(front);
  Say("result: " + r.dump());
  if (before.ok() && after.ok()) {
    Say(absl::StrFormat("bytes on %s's veth during the transfer: tx %d (payload 33554432): the "
                        "payload went socket to socket (the server's first read came through "
                        "the stack; shunt splices a socket only once it has seen how it is "
                        "read: docs/fastpath.md)",
                        front.name, after->tx_bytes - before->tx_bytes));
  }

  Say("\n-- 2. other node (" + api2.name + "): TPROXY in its namespace, relayed by " +
      bed.node(1).name + "'s agent as the client --");
  auto srv2 = demo.Server(api2, {"--port=9090", "--mode=verify"});
  // A real Prometheus server scraping that agent (Debian's, unpacked by scripts/setup.sh).
  auto prom = shunt::e2e::PrometheusServer::Start(
      bed, bed.node(1), {"127.0.0.1:" + std::to_string(shunt::e2e::kMetricsPort)});
  if (!prom.ok()) Say("(no Prometheus server: " + std::string(prom.status().message()) + ")");
  Say("16 MiB checksummed: " + demo.Client(front, {"verify", "--to=" + api2.ipv4 + ":9090",
                                                  "--bytes=16M", "--seed=2"})
                                   .dump());
  // An ordinary HTTP server (Python's) that answers with the address it sees.
  auto http = bed.Spawn(api2, {"/usr/bin/python3", "-c", R"PY(
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        body = ("%s: hello, %s" % (self.path, self.client_address[0])).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("", 8081), H).serve_forever()
)PY"});
  const std::string base = "http://" + api2.ipv4 + ":8081";
  auto curl = [&](const Pod& from, const std::string& path) {
    auto r = bed.Run(from, {"/usr/bin/curl", "-sS", "-w", "[%{http_code}]", base + path}, 20s);
    if (!r.ok()) return std::string(r.status().message());
    return r->exit_code == 0 ? r->out : absl::StrCat("curl failed (", r->exit_code, "): ", r->err);
  };
  std::string hello;
  for (int i = 0; i < 50 && hello.find("[200]") == std::string::npos; ++i) {
    hello = curl(front, "/hello");
    if (hello.find("[200]") == std::string::npos) std::this_thread::sleep_for(100ms);
  }
  Say("curl from " + front.name + " (" + front.ipv4 + "): " + hello +
      "  <- the server saw the client's own address");
  Say("  an AccessPolicy: front may not call /admin* on api's port 8081 (L7, decided per request "
      "by the proxy); pods labelled app=other may not reach api at all");
  demo.Apply("deny-cross.json",
             {{"apiVersion", "v1"}, {"kind", "List"},
              {"items",
               {{{"apiVersion", "policy.shunt.dev/v1alpha1"}, {"kind", "AccessPolicy"},
                 {"metadata", {{"namespace", "default"}, {"name", "no-admin"}}},
                 {"spec", {{"action", "DENY"}, {"target", {{"matchLabels", {{"app", "api"}}}}},
                           {"from", {{{"pods", {{"matchLabels", {{"app", "front"}}}}}}}},
                           {"ports", {{{"from", 8081}}}},
                           {"l7", {{{"paths", {"/admin*"}}}}}}}},
                {{"apiVersion", "policy.shunt.dev/v1alpha1"}, {"kind", "AccessPolicy"},
                 {"metadata", {{"namespace", "default"}, {"name", "no-others"}}},
                 {"spec", {{"action", "DENY"}, {"target", {{"matchLabels", {{"app", "api"}}}}},
                           {"from", {{{"pods", {{"matchLabels", {{"app", "other"}}}}}}}}}}}}}});
  std::string admin;
  for (int i = 0; i < 50 && admin.find("[403]") == std::string::npos; ++i) {
    admin = curl(front, "/admin/users");
    if (admin.find("[403]") == std::string::npos) std::this_thread::sleep_for(100ms);
  }
  std::string plain_out;
  for (int i = 0; i < 50; ++i) {  // until the policy is in force on node 1 too
    plain_out = curl(c, "/hello");
    if (plain_out.find("failed") != std::string::npos) break;
    std::this_thread::sleep_for(100ms);
  }
  Say("curl " + front.name + " /hello: " + curl(front, "/hello"));
  Say("curl " + front.name + " /admin/users: " + admin);
  Say("curl from " + c.name + " (unmeshed, app=other, node 0: no connect() check there): " +
      plain_out + "  <- reset where it arrived");
  if (auto counted = agents[1]->Scrape(); counted.ok()) {
    for (const auto& sample : *counted) {
      if (sample.name != "shunt_policy_denied_requests_total" &&
          sample.name != "shunt_arrival_denied_connections_total") {
        continue;
      }
      std::string labels;
      for (const auto& [k, v] : sample.labels) absl::StrAppend(&labels, labels.empty() ? "" : ",", k, "=", v);
      Say(absl::StrFormat("  counted on %s: %s{%s} %.0f", bed.node(1).name, sample.name, labels,
                          sample.value));
    }
  }
  if (prom.ok() && (*prom)->WaitForFreshScrape(10s).ok()) {
    const std::string query =
        "sum by (source_workload, destination_workload, response_code) (shunt_requests_total)";
    Say("  Prometheus (scraping " + bed.node(1).name + "'s agent every second): " + query);
    if (auto q = (*prom)->Query(query); q.ok()) {
      for (const auto& row : *q) {
        const auto& l = row["metric"];
        Say(absl::StrFormat("    %s -> %s  %s  %s requests", l.value("source_workload", ""),
                            l.value("destination_workload", ""), l.value("response_code", ""),
                            row["value"][1].get<std::string>()));
      }
    } else {
      Say("    query failed: " + std::string(q.status().message()));
    }
  }
  demo.Delete("deny-cross.json");

  Say("\n-- 2b. per-pod API cost: an OpenAI-compatible service on " + api2.name +
      " priced by an ApiCostPolicy; the payer is the calling pod, known by the mesh --");
  auto llm = bed.Spawn(api2, {"/usr/bin/python3", "-c", R"PY(
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        usage = {"prompt_tokens": 1200, "completion_tokens": 350,
                 "prompt_tokens_details": {"cached_tokens": 1000}}
        if req.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for d in [{"choices": [{"delta": {"content": "Hello"}}], "usage": None},
                      {"choices": [], "usage": usage}]:
                e = ("data: " + json.dumps(dict(d, model=req["model"])) + "\n\n").encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(e), e))
            self.wfile.write(b"0\r\n\r\n")
            return
        body = json.dumps({"model": req["model"], "choices": [{"message": {"content": "Hi"}}],
                           "usage": usage}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("", 8090), H).serve_forever()
)PY"});
  demo.Apply("llm.json",
             {{"apiVersion", "v1"}, {"kind", "List"},
              {"items",
               {{{"apiVersion", "v1"}, {"kind", "Service"},
                 {"metadata", {{"namespace", "default"}, {"name", "llm"}}},
                 {"spec", {{"selector", {{"app", "api"}, {"version", "v2"}}},
                           {"ports", {{{"name", "http"}, {"port", 80}, {"targetPort", 8090}}}}}}},
                {{"apiVersion", "discovery.k8s.io/v1"}, {"kind", "EndpointSlice"},
                 {"metadata", {{"namespace", "default"}, {"name", "llm-1"},
                               {"labels", {{"kubernetes.io/service-name", "llm"}}}}},
                 {"addressType", "IPv4"},
                 {"ports", {{{"name", "http"}, {"port", 8090}}}},
                 {"endpoints", {{{"addresses", {api2.ipv4}},
                                 {"nodeName", bed.node(1).name},
                                 {"targetRef", {{"kind", "Pod"}, {"uid", api2.uid}}}}}}},
                {{"apiVersion", "policy.shunt.dev/v1alpha1"}, {"kind", "ApiCostPolicy"},
                 {"metadata", {{"namespace", "default"}, {"name", "llm-prices"}}},
                 {"spec", {{"service", "llm"}, {"currency", "USD"},
                           {"routes", {{{"name", "chat"}, {"method", "POST"},
                                        {"pathPrefix", "/v1/chat/completions"},
                                        {"perRequest", "0.0001"}}}},
                           {"models", {{{"model", "gpt-4o"}, {"perMillionInput", "2.50"},
                                        {"perMillionCachedInput", "1.25"},
                                        {"perMillionOutput", "10"}}}}}}}}}});
  const std::string chat = "http://" + api2.ipv4 + ":8090/v1/chat/completions";
  auto ask = [&](const Pod& from, bool stream) {
    const std::string body = absl::StrCat(R"({"model":"gpt-4o","stream":)",
                                          stream ? "true" : "false", R"(,"messages":[]})");
    auto r = bed.Run(from, {"/usr/bin/curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                            "-H", "Content-Type: application/json", "-d", body, chat},
                     20s);
    return r.ok() ? r->out : std::string(r.status().message());
  };
  auto charged = [&](const Pod& from) {
    auto m = agents[1]->Scrape();
    return m.ok() ? SumSamples(*m, "shunt_api_cost_total", {{"source_pod", from.name}}) : -1.0;
  };
  for (int i = 0; i < 100 && charged(front) <= 0; ++i) {  // until node 1's agent prices the port
    ask(front, false);
    std::this_thread::sleep_for(100ms);
  }
  const double front_before = charged(front), c_before = charged(c);
  std::string codes;
  for (int i = 0; i < 3; ++i) codes += ask(front, i == 2) + " ";
  codes += ask(c, false);
  if (!llm.ok()) Say("  (the service did not start: " + std::string(llm.status().message()) + ")");
  Say("  HTTP status of the four calls: " + codes);
  Say("3 chat calls from " + front.name + " (one streamed) and 1 from " + c.name +
      " (unmeshed), each reporting 1200 prompt tokens (1000 of them cached) and 350 completion "
      "tokens:");
  Say(absl::StrFormat("  expected per call: 0.0001 (route) + 200 x 2.50/M + 1000 x 1.25/M + "
                      "350 x 10/M = 0.00535 USD: %s 0.016050, %s 0.005350", front.name, c.name));
  Say(absl::StrFormat("  charged on %s: %s %.6f USD, %s %.6f USD", bed.node(1).name, front.name,
                      charged(front) - front_before, c.name, charged(c) - c_before));
  if (prom.ok() && (*prom)->WaitForFreshScrape(10s).ok()) {
    const std::string query = "sum by (source_pod, model) (shunt_api_cost_total)";
    Say("  Prometheus (every call: " + front.name + "'s first, made while the policy reached " +
        bed.node(1).name + ", too): " + query);
    if (auto q = (*prom)->Query(query); q.ok()) {
      for (const auto& row : *q) {
        const auto& l = row["metric"];
        Say(absl::StrFormat("    %-10s %-8s %s USD", l.value("source_pod", ""),
                            l.value("model", ""), row["value"][1].get<std::string>()));
      }
    }
  }
  llm = absl::UnavailableError("stopped");
  demo.Delete("llm.json");
  prom = absl::UnavailableError("stopped");  // (the server stops here)

  Say("\n-- 3. throughput, 3 s each, client on CPU 0, server on the last CPU: plain (" + c.name +
      " -> " + d.name + ") vs shunt (" + front.name + " -> " + api1.name + ") --");
  auto sink_plain = demo.Server(d, {"--port=9000", "--mode=sink"});
  auto sink_shunt = demo.Server(api1, {"--port=9000", "--mode=sink"});
  // A stream never pauses for the switch to the redirect: the first connection to a server runs
  // on the plain path while shunt learns that its reads are safe to splice; later ones are spliced
  // from their first byte.
  demo.Client(front, {"bulk", "--to=" + api1.ipv4 + ":9000", "--seconds=0.2"});
  auto plain = demo.Client(c, {"bulk", "--to=" + d.ipv4 + ":9000", "--seconds=3"});
  auto fast = demo.Client(front, {"bulk", "--to=" + api1.ipv4 + ":9000", "--seconds=3"});
  double pg = plain.value("gbit_per_s", 0.0), fg = fast.value("gbit_per_s", 0.0);
  Say(absl::StrFormat("plain %.2f Gbit/s, shunt %.2f Gbit/s, ratio %.2fx", pg, fg,
                      pg > 0 ? fg / pg : 0));

  Say(absl::StrCat("\n-- 4. Service api (", kVip, ":80): a TrafficRoute sends 80% to v1, 20% to v2 --"));
  auto id1 = demo.Server(api1, {"--port=8080", "--mode=ident", "--ident=v1"});
  auto id2 = demo.Server(api2, {"--port=8080", "--mode=ident", "--ident=v2"});
  demo.Apply("route.json",
             {{"apiVersion", "policy.shunt.dev/v1alpha1"}, {"kind", "TrafficRoute"},
              {"metadata", {{"namespace", "default"}, {"name", "api-split"}}},
              {"spec", {{"service", "api"},
                        {"rules", {{{"backends",
                                     {{{"subset", {{"matchLabels", {{"version", "v1"}}}}}, {"weight", 80}},
                                      {{"subset", {{"matchLabels", {{"version", "v2"}}}}}, {"weight", 20}}}}}}}}}});
  WaitFor(*agents[0], "shunt_socklb_map_entries", {{"map", "slots"}}, 5);
  auto split = demo.Client(front, {"probe", absl::StrCat("--to=", kVip, ":80"), "--conns=500"});
  Say("500 connections to the VIP: " + split.value("idents", json::object()).dump() +
      "; the application saw as peer: " + split.value("peers", json::object()).dump());

  Say("\n-- 5. an AccessPolicy denies front -> api: connect() fails with EPERM --");
  demo.Apply("deny.json",
             {{"apiVersion", "policy.shunt.dev/v1alpha1"}, {"kind", "AccessPolicy"},
              {"metadata", {{"namespace", "default"}, {"name", "deny-front"}}},
              {"spec", {{"action", "DENY"}, {"target", {{"matchLabels", {{"app", "api"}}}}},
                        {"from", {{{"pods", {{"matchLabels", {{"app", "front"}}}}}}}}}}});
  WaitFor(*agents[0], "shunt_socklb_map_entries", {{"map", "policies"}}, 1);
  auto denied = demo.Client(front, {"probe", absl::StrCat("--to=", kVip, ":80"), "--conns=5"});
  Say("5 connections: " + denied.value("errors", json::object()).dump());
  if (auto counted = agents[0]->Scrape(); counted.ok()) {
    for (const auto& s : *counted) {
      if (s.name != "shunt_access_denied_connections_total") continue;
      std::string labels;
      for (const auto& [k, v] : s.labels) {
        if (k == "source_pod" || k == "policy" || k == "reason") {
          absl::StrAppend(&labels, labels.empty() ? "" : ",", k, "=", v);
        }
      }
      Say(absl::StrFormat("  counted: %s{%s} %.0f", s.name, labels, s.value));
    }
  }
  demo.Delete("deny.json");
  WaitFor(*agents[0], "shunt_socklb_map_entries", {{"map", "policies"}}, 0);
  auto allowed = demo.Client(front, {"probe", absl::StrCat("--to=", kVip, ":80"), "--conns=5"});
  Say(absl::StrCat("after the delete, connected: ", allowed.value("connected", 0), " of 5"));

  Say("\n-- 6. the counters of the agent on " + bed.node(0).name + " (/metrics) --");
  auto samples = agents[0]->Scrape();
  if (samples.ok()) {
    for (const auto& s : *samples) {
      if (s.name != "shunt_sockmap_redirected_bytes_total" &&
          s.name != "shunt_service_connections_total" &&
          s.name != "shunt_access_denied_connections_total") {
        continue;
      }
      std::string labels;
      for (const auto& [k, v] : s.labels) {
        if (k.find("namespace") != std::string::npos || k.find("workload") != std::string::npos) {
          continue;
        }
        absl::StrAppend(&labels, labels.empty() ? "" : ",", k, "=", v);
      }
      Say(absl::StrFormat("  %-40s {%s} %.0f", s.name, labels, s.value));
    }
    // Every connection of the node's meshed pods, from the kernel: each one counted where it
    // arrived (reporter=destination), spliced or not, bytes client to server.
    Say("  the kernel's L4 metrics, at the servers' end (docs/metrics.md):");
    for (const auto& s : *samples) {
      if ((s.name != "shunt_connections_opened_total" &&
           s.name != "shunt_connection_received_bytes_total") ||
          s.value <= 0 || s.labels.count("reporter") == 0 ||
          s.labels.at("reporter") != "destination") {
        continue;
      }
      std::string labels;
      for (const char* k : {"source_pod", "destination_pod", "destination_service_name"}) {
        auto it = s.labels.find(k);
        if (it != s.labels.end()) absl::StrAppend(&labels, labels.empty() ? "" : ",", k, "=", it->second);
      }
      Say(absl::StrFormat("  %-40s {%s} %.0f", s.name, labels, s.value));
    }
  }
  Say("\n-- 7. uninstall: every program, link, pin and map removed --");
  for (size_t i = 0; i < agents.size(); ++i) {
    agents[i]->Stop().IgnoreError();
    auto out = shunt::e2e::UninstallAgent(bed, bed.node(i));
    Say(absl::StrCat(bed.node(i).name, ": ",
                     out.ok() && out->exit_code == 0 ? "uninstalled" : "uninstall FAILED"));
  }
  (*controller)->Stop(SIGTERM, std::chrono::seconds(5)).IgnoreError();
  bed.Teardown();
  Say("test bed removed. Done.");
  return 0;
}

}  // namespace

int main() { return RunDemo(); }
