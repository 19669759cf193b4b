// Connect-time load balancing and access policy end to end: a real shunt-agent in a node of the
// test bed with a policy file holding workloads, services, routes and access policies; real
// cgroup connect4/6 and getpeername4/6 programs on the node's pod cgroups; real TCP between pods.
#include <gtest/gtest.h>
#include <stdio.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testbed/testbed.h"

namespace shunt::e2e {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using testbed::Pod;
using testbed::ProcessPtr;
using testbed::Testbed;

constexpr char kVip4[] = "198.18.255.10";  // never routed: the test bed has no 198.18.255.0/24
constexpr char kVip6[] = "fd5a:ff::10";
constexpr char kVip4Other[] = "198.18.255.11";

// Pods: 0 client "front" (app=front, sa front), 1 backend v1, 2 backend v2, 3 client "other",
// 4 unmeshed.
class SockLbTest : public ::testing::TestWithParam<testbed::CgroupDriver> {
 protected:
  virtual std::vector<std::string> AgentFlags() const { return {}; }

  void SetUp() override {
    testbed::Options opts;
    opts.nodes = 1;
    opts.pods_per_node = 5;
    opts.drivers = {GetParam()};
    auto bed = Testbed::Create(opts);
    ASSERT_TRUE(bed.ok()) << bed.status();
    bed_ = std::move(*bed);
    policy_ = bed_->work_dir() + "/policy.json";
    ASSERT_TRUE(WritePolicy({}, {}, {}));
    agent_ = std::make_unique<AgentProcess>(*bed_, bed_->node(0), policy_, AgentFlags());
    ASSERT_TRUE(agent_->Start().ok()) << agent_->Stderr();
    for (int i : {1, 2}) {
      auto s = StartTestpeerServer(*bed_, P(i),
                                   {"--port=8080", "--bind=::", "--mode=ident",
                                    absl::StrCat("--ident=", i == 1 ? "v1" : "v2")});
      ASSERT_TRUE(s.ok()) << s.status();
      servers_.push_back(std::move(*s));
    }
  }

  void TearDown() override {
    servers_.clear();
    if (agent_) agent_->Kill();
    if (bed_) {
      auto out = UninstallAgent(*bed_, bed_->node(0));
      EXPECT_TRUE(out.ok() && out->exit_code == 0) << (out.ok() ? out->err : "");
      bed_->Teardown();
    }
  }

  const Pod& P(int i) const { return bed_->pod(0, i); }

  json Workloads() const {
    json ws = json::array();
    const char* labels[][2] = {
        {"app", "front"}, {"version", "v1"}, {"version", "v2"}, {"app", "other"}, {"app", "front"}};
    for (int i = 0; i < 5; ++i) {
      json l = {{labels[i][0], labels[i][1]}};
      if (i == 1 || i == 2) l["app"] = "api";
      ws.push_back({{"uid", P(i).uid},
                    {"namespace", P(i).k8s_namespace},
                    {"name", P(i).name},
                    {"node", bed_->node(0).name},
                    {"ips", {P(i).ipv4, P(i).ipv6}},
                    {"meshed", i != 4},
                    {"serviceAccount", i == 0 ? "front" : "default"},
                    {"labels", l}});
    }
    for (const json& w : extra_workloads_) ws.push_back(w);
    return ws;
  }

  json ApiService(const std::string& name, std::vector<std::string> vips) const {
    json eps = json::array();
    for (int i : {1, 2}) {
      eps.push_back({{"ips", {P(i).ipv4, P(i).ipv6}},
                     {"workloadUid", P(i).uid},
                     {"ready", true},
                     {"ports", {{{"name", "http"}, {"port", 8080}}}}});
    }
    return {{"namespace", "default"},
            {"name", name},
            {"vips", vips},
            {"ports", {{{"name", "http"}, {"port", 80}, {"targetPort", 8080}}}},
            {"endpoints", eps}};
  }

  // Writes the policy file atomically (the agent polls it).
  bool WritePolicy(json services, json routes, json policies) {
    json bundle = {{"workloads", Workloads()},
                   {"services", services.is_null() ? json::array() : services},
                   {"trafficRoutes", routes.is_null() ? json::array() : routes},
                   {"accessPolicies", policies.is_null() ? json::array() : policies}};
    const std::string tmp = policy_ + ".tmp";
    {
      std::ofstream f(tmp);
      f << bundle.dump(2) << "\n";
      if (!f) return false;
    }
    return rename(tmp.c_str(), policy_.c_str()) == 0;
  }

  // Waits until the agent reports `n` entries in socklb map `map`.
  void AwaitEntries(const std::string& map, double n) {
    double got = -1;
    auto deadline = std::chrono::steady_clock::now() + 15s;
    while (std::chrono::steady_clock::now() < deadline) {
      auto s = agent_->Scrape();
      if (s.ok()) {
        got = SumSamples(*s, "shunt_socklb_map_entries", {{"map", map}});
        if (got == n) return;
      }
      std::this_thread::sleep_for(100ms);
    }
    FAIL() << "map " << map << " has " << got << " entries, want " << n << "\n" << agent_->Stderr();
  }

  json Probe(const Pod& from, const std::string& to, int conns, int timeout_s = 10) {
    auto r = RunTestpeer(*bed_, from,
                         {"probe", "--to=" + to, absl::StrCat("--conns=", conns),
                          absl::StrCat("--timeout=", timeout_s)});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : json::object();
  }

  double Metric(const std::string& name, const std::map<std::string, std::string>& labels) {
    auto s = agent_->Scrape();
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? SumSamples(*s, name, labels) : -1;
  }

  static json Selector(json labels) { return {{"matchLabels", labels}}; }

  std::unique_ptr<Testbed> bed_;
  std::vector<json> extra_workloads_;  // pods of node 0 without cgroups (yet)
  std::string policy_;
  std::unique_ptr<AgentProcess> agent_;
  std::vector<ProcessPtr> servers_;
};

uint64_t Count(const json& r, const std::string& field, const std::string& key) {
  if (!r.contains(field) || !r[field].contains(key)) return 0;
  return r[field][key].get<uint64_t>();
}

TEST_P(SockLbTest, DenyPolicyFailsConnectWithEpermUntilRemoved) {
  const std::string to = P(1).ipv4 + ":8080";
  json deny = {{"namespace", "default"},
               {"name", "deny-front"},
               {"action", "DENY"},
               {"target", Selector({{"app", "api"}})},
               {"from", {{{"pods", Selector({{"app", "front"}})}}}},
               {"ports", {{{"from", 8000}, {"to", 8999}}}}};
  ASSERT_TRUE(WritePolicy({}, {}, {deny}));
  AwaitEntries("policies", 1);

  json r = Probe(P(0), to, 10);
  EXPECT_EQ(Count(r, "errors", "EPERM"), 10u) << r.dump();
  EXPECT_EQ(r.value("connected", -1), 0) << r.dump();
  EXPECT_EQ(
      Metric("shunt_access_denied_connections_total",
             {{"source_pod", P(0).name}, {"policy", "default/deny-front"}, {"reason", "deny"}}),
      10);
  // Over IPv6 too, and another source is not affected.
  r = Probe(P(0), "[" + P(1).ipv6 + "]:8080", 3);
  EXPECT_EQ(Count(r, "errors", "EPERM"), 3u) << r.dump();
  r = Probe(P(3), to, 3);
  EXPECT_EQ(r.value("connected", -1), 3) << r.dump();
  EXPECT_EQ(Count(r, "idents", "v1"), 3u) << r.dump();

  // Removing the policy restores access, and its series go with it (not left as "unknown").
  ASSERT_TRUE(WritePolicy({}, {}, {}));
  AwaitEntries("policies", 0);
  r = Probe(P(0), to, 5);
  EXPECT_EQ(r.value("connected", -1), 5) << r.dump();
  EXPECT_EQ(Count(r, "idents", "v1"), 5u) << r.dump();
  EXPECT_EQ(Metric("shunt_access_denied_connections_total", {}), 0);

  // The next policy gets the freed policy slot: it counts its own denials only.
  deny["name"] = "deny-front-again";
  ASSERT_TRUE(WritePolicy({}, {}, {deny}));
  AwaitEntries("policies", 1);
  r = Probe(P(0), to, 4);
  EXPECT_EQ(Count(r, "errors", "EPERM"), 4u) << r.dump();
  EXPECT_EQ(Metric("shunt_access_denied_connections_total",
                   {{"source_pod", P(0).name}, {"policy", "default/deny-front-again"}}),
            4);
  EXPECT_EQ(Metric("shunt_access_denied_connections_total", {}), 4);
}

TEST_P(SockLbTest, AllowPolicyLetsOnlySelectedSourcesIn) {
  json allow = {{"namespace", "default"},
                {"name", "allow-front"},
                {"action", "ALLOW"},
                {"target", Selector({{"version", "v1"}})},
                {"from", {{{"serviceAccounts", {"front"}}}}}};
  ASSERT_TRUE(WritePolicy({}, {}, {allow}));
  AwaitEntries("policies", 1);
  const std::string to = P(1).ipv4 + ":8080";
  json r = Probe(P(0), to, 5);
  EXPECT_EQ(r.value("connected", -1), 5) << r.dump();
  r = Probe(P(3), to, 5);
  EXPECT_EQ(Count(r, "errors", "EPERM"), 5u) << r.dump();
  EXPECT_EQ(Metric("shunt_access_denied_connections_total",
                   {{"source_pod", P(3).name}, {"reason", "not_allowed"}}),
            5);
  // v2 is selected by no ALLOW policy: open to everyone.
  r = Probe(P(3), P(2).ipv4 + ":8080", 5);
  EXPECT_EQ(r.value("connected", -1), 5) << r.dump();
  EXPECT_EQ(Count(r, "idents", "v2"), 5u) << r.dump();
}

TEST_P(SockLbTest, WeightedSplitOverTwoThousandConnectionsAndGetpeernameShowsTheVip) {
  json route = {{"namespace", "default"},
                {"name", "api-split"},
                {"service", "api"},
                {"rules",
                 {{{"backends",
                    {{{"subset", Selector({{"version", "v1"}})}, {"weight", 80}},
                     {{"subset", Selector({{"version", "v2"}})}, {"weight", 20}}}}}}}};
  ASSERT_TRUE(WritePolicy({ApiService("api", {kVip4, kVip6})}, {route}, {}));
  AwaitEntries("services", 2);
  AwaitEntries("slots", 10);  // 4 + 1 per VIP

  constexpr int kConns = 2000;
  const std::string vip = absl::StrCat(kVip4, ":80");
  json r = Probe(P(0), vip, kConns);
  ASSERT_EQ(r.value("connected", -1), kConns) << r.dump();
  const double v1 = Count(r, "idents", "v1"), v2 = Count(r, "idents", "v2");
  EXPECT_EQ(v1 + v2, kConns) << r.dump();
  // Binomial(n, 0.8): 5 standard deviations either side (a false failure ~ 1 in 1.7 million).
  const double mean = kConns * 0.8, sigma = std::sqrt(kConns * 0.8 * 0.2);
  EXPECT_NEAR(v1, mean, 5 * sigma) << r.dump();
  EXPECT_EQ(Count(r, "peers", vip), static_cast<uint64_t>(kConns)) << r.dump();
  EXPECT_EQ(Metric("shunt_service_connections_total",
                   {{"source_pod", P(0).name}, {"destination_service_name", "api"}}),
            kConns);

  // IPv6 VIP: only v1 has... both pods have IPv6 addresses here: the split holds, the VIP shows.
  const std::string vip6 = absl::StrCat("[", kVip6, "]:80");
  r = Probe(P(0), vip6, 50);
  EXPECT_EQ(r.value("connected", -1), 50) << r.dump();
  EXPECT_EQ(Count(r, "peers", vip6), 50u) << r.dump();
}

// The kernel's connection metrics (docs/metrics.md) name the Service whose address the client
// connected to, not merely one that has the backend's port: two Services with the same pods.
TEST_P(SockLbTest, ConnectionMetricsNameTheServiceTheClientConnectedTo) {
  ASSERT_TRUE(WritePolicy({ApiService("api", {kVip4}), ApiService("api-b", {kVip4Other})}, {}, {}));
  AwaitEntries("services", 2);
  constexpr int kConns = 20;
  json r = Probe(P(0), absl::StrCat(kVip4Other, ":80"), kConns);
  ASSERT_EQ(r.value("connected", -1), kConns) << r.dump();
  const std::map<std::string, std::string> to_b = {
      {"reporter", "source"}, {"source_pod", P(0).name}, {"destination_service_name", "api-b"}};
  double closed = 0;
  for (int i = 0; i < 100 && closed < kConns; ++i) {
    closed = Metric("shunt_connections_closed_total", to_b);
    if (closed < kConns) std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(closed, kConns);
  EXPECT_EQ(Metric("shunt_connections_opened_total", to_b), kConns);
  EXPECT_EQ(Metric("shunt_connections_opened_total",
                   {{"reporter", "source"}, {"destination_service_name", "api"}}),
            0);
}

TEST_P(SockLbTest, PolicyAppliesToTheBackendBehindAVip) {
  json deny = {{"namespace", "default"},
               {"name", "deny-v2"},
               {"action", "DENY"},
               {"target", Selector({{"version", "v2"}})},
               {"from", json::array()}};
  json route = {
      {"namespace", "default"},
      {"name", "all-v2"},
      {"service", "api"},
      {"rules", {{{"backends", {{{"subset", Selector({{"version", "v2"}})}, {"weight", 1}}}}}}}};
  ASSERT_TRUE(WritePolicy({ApiService("api", {kVip4})}, {route}, {deny}));
  AwaitEntries("policies", 1);
  AwaitEntries("services", 1);
  json r = Probe(P(0), absl::StrCat(kVip4, ":80"), 4);
  EXPECT_EQ(Count(r, "errors", "EPERM"), 4u) << r.dump();
}

TEST_P(SockLbTest, UnmeshedPodIsUntouched) {
  json deny = {{"namespace", "default"},
               {"name", "deny-all"},
               {"action", "DENY"},
               {"target", Selector({{"app", "api"}})},
               {"from", json::array()}};
  ASSERT_TRUE(WritePolicy({ApiService("api", {kVip4})}, {}, {deny}));
  AwaitEntries("policies", 1);
  AwaitEntries("services", 1);
  // Pod 4 is labelled like pod 0 but unmeshed: no policy at its connect(), no VIP rewrite.
  json r = Probe(P(4), P(1).ipv4 + ":8080", 3);
  EXPECT_EQ(r.value("connected", -1), 3) << r.dump();
  r = Probe(P(4), absl::StrCat(kVip4, ":80"), 1, 3);
  EXPECT_EQ(r.value("connected", -1), 0) << r.dump();  // the test bed routes no VIP
  EXPECT_EQ(Count(r, "errors", "EPERM"), 0u) << r.dump();
  r = Probe(P(0), P(1).ipv4 + ":8080", 3);
  EXPECT_EQ(Count(r, "errors", "EPERM"), 3u) << r.dump();
}

// What a Prometheus server gets from the agent after traffic to a Service with two ports (each
// port its own service id in the kernel) and a denied connect: promtool finds nothing to say, and
// no series is there twice (promtool 2.42 does not look for that).
TEST_P(SockLbTest, MetricsPassPromtoolAndNoSeriesIsThereTwice) {
  json svc = ApiService("api", {kVip4, kVip6});
  svc["ports"] = {{{"name", "http"}, {"port", 80}, {"targetPort", 8080}},
                  {{"name", "alt"}, {"port", 81}, {"targetPort", 8080}}};
  for (auto& ep : svc["endpoints"]) {
    ep["ports"] = {{{"name", "http"}, {"port", 8080}}, {{"name", "alt"}, {"port", 8080}}};
  }
  json deny = {{"namespace", "default"},
               {"name", "deny-other"},
               {"action", "DENY"},
               {"target", Selector({{"app", "api"}})},
               {"from", {{{"pods", Selector({{"app", "other"}})}}}}};
  ASSERT_TRUE(WritePolicy({svc}, {}, {deny}));
  AwaitEntries("services", 4);  // 2 VIPs x 2 ports
  for (const char* to : {"198.18.255.10:80", "198.18.255.10:81", "[fd5a:ff::10]:80"}) {
    EXPECT_EQ(Probe(P(0), to, 5).value("connected", -1), 5) << to;
  }
  EXPECT_EQ(Count(Probe(P(3), "198.18.255.10:81", 2), "errors", "EPERM"), 2u);

  auto text = agent_->Get("/metrics", kMetricsPort);
  ASSERT_TRUE(text.ok()) << text.status();
  ASSERT_EQ(text->code, 200);
  EXPECT_EQ(MetricsProblems(text->body), "");
  // The two ports of one Service are one series per source: 15 connections.
  EXPECT_EQ(Metric("shunt_service_connections_total",
                   {{"destination_service_name", "api"}, {"source_pod", P(0).name}}),
            15);
}

// Pods that policy knows before kubelet makes their cgroups (the agent's rescan is made far too
// rare to matter: 10 minutes): each one's first connect(), a few milliseconds after its cgroup
// appears, from Python's socket module.
class SockLbFreshPodTest : public SockLbTest {
 protected:
  std::vector<std::string> AgentFlags() const override { return {"--resync-ms=600000"}; }

  // A pod of node 0 (labelled app=fresh) known to policy, with no cgroup yet.
  std::string AddFreshWorkload(int i) {
    const std::string uid = Testbed::NewPodUid();
    extra_workloads_.push_back({{"uid", uid},
                                {"namespace", "default"},
                                {"name", absl::StrCat("fresh-", i)},
                                {"node", bed_->node(0).name},
                                {"ips", json::array()},
                                {"meshed", true},
                                {"labels", {{"app", "fresh"}}}});
    return uid;
  }

  // kubelet starts the pod: its cgroups appear and its process connects at once (in pod 0's
  // network namespace; the verdict is the cgroup's). What connect() said: "ok" or an errno name.
  std::string StartAndConnect(const std::string& uid, const std::string& ip) {
    auto paths = Testbed::PodCgroupsFor(bed_->node(0), uid);
    std::error_code ec;
    std::filesystem::create_directories(paths.container, ec);
    if (ec) return "mkdir: " + ec.message();
    const std::string code = absl::StrCat(
        "import errno, socket\n"
        "s = socket.socket()\n"
        "try:\n"
        "    s.connect(('", ip, "', 8080)); print('ok')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode.get(e.errno, str(e.errno)))\n");
    auto p = bed_->SpawnInCgroup(P(0), paths.container, {"python3", "-c", code});
    if (!p.ok()) return p.status().ToString();
    auto st = (*p)->Wait(20s);
    std::string out = (*p)->Stdout();
    while (!out.empty() && out.back() == '\n') out.pop_back();
    if (!st.ok()) return "timeout";
    return out.empty() ? "no output: " + (*p)->Stderr() : out;
  }

  // `n` pods known to policy and denied by DenyFresh, with no cgroup yet; their pending entries
  // are in the maps when this returns.
  std::vector<std::string> KnownFreshPods(int n) {
    std::vector<std::string> uids;
    for (int i = 0; i < n; ++i) uids.push_back(AddFreshWorkload(i));
    EXPECT_TRUE(WritePolicy({}, {}, {DenyFresh()}));
    AwaitEntries("policies", 1);
    AwaitEntries("policy_pending_sources", n);
    return uids;
  }

  json DenyFresh() const {
    return {{"namespace", "default"},
            {"name", "deny-fresh"},
            {"action", "DENY"},
            {"target", Selector({{"app", "api"}})},
            {"from", {{{"pods", Selector({{"app", "fresh"}})}}}}};
  }
};

// Issue 8 item 1: before, a new pod was classified only when the agent rescanned the cgroups, and
// its first connects got through (18 of 20 with a 1 s rescan; 20 of 20 here).
TEST_P(SockLbFreshPodTest, PodsKnownToPolicyAreDeniedFromTheirFirstConnect) {
  constexpr int kPods = 20;
  std::vector<std::string> uids = KnownFreshPods(kPods);
  ASSERT_FALSE(HasFatalFailure());
  int denied = 0;
  std::string seen;
  for (const std::string& uid : uids) {
    const std::string r = StartAndConnect(uid, P(1).ipv4);
    denied += r == "EPERM";
    seen += r + " ";
  }
  EXPECT_EQ(denied, kPods) << seen;
  EXPECT_EQ(Metric("shunt_pod_cgroups_created_total", {{"result", "resolved"}}), kPods);
  EXPECT_EQ(Metric("shunt_access_denied_connections_total", {{"policy", "default/deny-fresh"}}),
            kPods);
  // Pods the policy does not select are not affected, and a pod cgroup of a pod the agent does
  // not know is counted as such.
  EXPECT_EQ(StartAndConnect(Testbed::NewPodUid(), P(1).ipv4), "ok");
  EXPECT_EQ(Metric("shunt_pod_cgroups_created_total", {{"result", "unknown"}}), 1);
}

// The same while no agent runs, and while one starts: the tracepoint's link and the pending maps
// are pinned.
TEST_P(SockLbFreshPodTest, PodsStartedWhileTheAgentRestartsAreDeniedFromTheirFirstConnect) {
  constexpr int kPods = 20;
  std::vector<std::string> uids = KnownFreshPods(kPods);
  ASSERT_FALSE(HasFatalFailure());
  agent_->Kill();
  std::string seen;
  int denied = 0;
  for (int i = 0; i < kPods / 2; ++i) {
    const std::string r = StartAndConnect(uids[i], P(1).ipv4);
    denied += r == "EPERM";
    seen += r + " ";
  }
  EXPECT_EQ(denied, kPods / 2) << "no agent running: " << seen;
  agent_ = std::make_unique<AgentProcess>(*bed_, bed_->node(0), policy_, AgentFlags());
  int denied_during = 0;
  std::string seen_during;
  std::thread starts([&] {
    for (int i = kPods / 2; i < kPods; ++i) {
      const std::string r = StartAndConnect(uids[i], P(1).ipv4);
      denied_during += r == "EPERM";
      seen_during += r + " ";
    }
  });
  absl::Status started = agent_->Start();
  starts.join();
  ASSERT_TRUE(started.ok()) << agent_->Stderr();
  EXPECT_EQ(denied_during, kPods / 2) << "agent starting: " << seen_during;
  // The restarted agent adopted the pods (their pending ids): the denials keep their pod names.
  AwaitEntries("policies", 1);
  EXPECT_EQ(Metric("shunt_access_denied_connections_total",
                   {{"source_pod", "fresh-0"}, {"policy", "default/deny-fresh"}}),
            1);
}

class SockLbFullMapTest : public SockLbTest {
 protected:
  std::vector<std::string> AgentFlags() const override { return {"--lb-services-map-size=1"}; }
};

TEST_P(SockLbFullMapTest, FullServiceMapFallsBackAndIsCounted) {
  ASSERT_TRUE(WritePolicy({ApiService("api", {kVip4}), ApiService("api2", {kVip4Other})}, {}, {}));
  AwaitEntries("services", 1);
  EXPECT_EQ(Metric("shunt_socklb_map_overflow_entries", {{"map", "services"}}), 1);
  EXPECT_EQ(Metric("shunt_socklb_map_capacity_entries", {{"map", "services"}}), 1);
  // The service that fits is balanced; the other one takes the normal path: its VIP is not
  // rewritten (the test bed routes no VIP, so that connect fails, but never with EPERM).
  json r = Probe(P(0), absl::StrCat(kVip4, ":80"), 10);
  EXPECT_EQ(r.value("connected", -1), 10) << r.dump();
  r = Probe(P(0), absl::StrCat(kVip4Other, ":80"), 1, 3);
  EXPECT_EQ(r.value("connected", -1), 0) << r.dump();
  EXPECT_EQ(Count(r, "errors", "EPERM"), 0u) << r.dump();
  // Direct pod IPs keep working.
  r = Probe(P(0), P(2).ipv4 + ":8080", 10);
  EXPECT_EQ(r.value("connected", -1), 10) << r.dump();
  EXPECT_EQ(Count(r, "idents", "v2"), 10u) << r.dump();
}

TEST_P(SockLbTest, AgentRestartKeepsOneAttachmentAndKeepsBalancing) {
  ASSERT_TRUE(WritePolicy({ApiService("api", {kVip4})}, {}, {}));
  AwaitEntries("services", 1);
  json r = Probe(P(0), absl::StrCat(kVip4, ":80"), 10);
  EXPECT_EQ(r.value("connected", -1), 10) << r.dump();
  agent_->Kill();
  agent_ = std::make_unique<AgentProcess>(*bed_, bed_->node(0), policy_, AgentFlags());
  ASSERT_TRUE(agent_->Start().ok()) << agent_->Stderr();
  r = Probe(P(0), absl::StrCat(kVip4, ":80"), 20);
  EXPECT_EQ(r.value("connected", -1), 20) << r.dump();
  // The counters live in the pinned map and keep their service across the restart.
  EXPECT_EQ(Metric("shunt_service_connections_total",
                   {{"source_pod", P(0).name}, {"destination_service_name", "api"}}),
            30);
  auto cg =
      bed_->RunOnNode(bed_->node(0), {"bpftool", "cgroup", "show", bed_->node(0).cgroup_root}, 10s);
  ASSERT_TRUE(cg.ok());
  size_t n = 0;
  for (size_t at = 0; (at = cg->out.find("shunt_connect4", at)) != std::string::npos; ++at) ++n;
  EXPECT_EQ(n, 1u) << cg->out;
}

std::string DriverName(const ::testing::TestParamInfo<testbed::CgroupDriver>& info) {
  return info.param == testbed::CgroupDriver::kSystemd ? "systemd" : "cgroupfs";
}

INSTANTIATE_TEST_SUITE_P(Drivers, SockLbTest,
                         ::testing::Values(testbed::CgroupDriver::kSystemd,
                                           testbed::CgroupDriver::kCgroupfs),
                         DriverName);
INSTANTIATE_TEST_SUITE_P(Drivers, SockLbFreshPodTest,
                         ::testing::Values(testbed::CgroupDriver::kSystemd,
                                           testbed::CgroupDriver::kCgroupfs),
                         DriverName);
INSTANTIATE_TEST_SUITE_P(Drivers, SockLbFullMapTest,
                         ::testing::Values(testbed::CgroupDriver::kSystemd), DriverName);

}  // namespace
}  // namespace shunt::e2e
